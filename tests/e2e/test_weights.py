"""Weights fetched ahead (issue 24), held to the real thing: `waker pull` fetches a model's repository
from a hub on loopback (tests/local_hub.py, serving the tiny Llama the real vLLM image carries, under
a repository id) into the cache the model's container mounts, and the REAL vLLM then starts from it
offline (its image sets HF_HUB_OFFLINE=1) and answers through the gateway. A second pull fetches
nothing; a pull killed half-way resumes with every file right; a gated repository and a disk too
small say so before any byte."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from tests.e2e.stack import REAL_IMAGE, REPO, docker, real_model
from tests.eventually import eventually
from tests.local_hub import HubRepo, LocalHub

pytestmark = pytest.mark.e2e

REPO_ID = "test-org/tiny-llama"


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """The tiny Llama's files, copied out of the real vLLM image (no hub has them)."""
    target = tmp_path_factory.mktemp("repo")
    container = docker("create", REAL_IMAGE).strip()
    try:
        docker("cp", f"{container}:/models/tiny-llama/.", str(target))
    finally:
        docker("rm", "-f", container)
    return target


@pytest.fixture
def hub(tiny_llama):
    repos = {REPO_ID: HubRepo.from_dir(tiny_llama), "test-org/gated": HubRepo.from_dir(tiny_llama, gated=True)}
    with LocalHub(repos).serving() as served:
        yield served


def pulled_model(cache: Path, repo: str = REPO_ID) -> dict:
    model = real_model("tiny", weights=repo)
    model["entrypoint"] = ["vllm", "serve"]  # the image's own: named, so that the command names the repository
    model["env"] |= {"HF_HOME": "/root/.cache/huggingface"}
    model["volumes"] = [f"{cache}:/root/.cache/huggingface"]
    return model


def pull(stack_or_config: Path, hub: LocalHub, *models: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "waker.cli.main", "pull", *models, "--config", str(stack_or_config)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )


async def test_pulled_weights_let_the_real_vllm_start_offline_and_a_second_pull_fetches_nothing(
    make_stack, hub, tmp_path
):
    cache = tmp_path / "hf"
    stack = make_stack([pulled_model(cache)], scheduler={"start_timeout": "300s"})
    pulled = pull(stack.config_path, hub, "tiny")
    assert pulled.returncode == 0, pulled.stderr
    repo = hub.repos[REPO_ID]
    assert f"tiny: {REPO_ID} at main ({repo.commit[:12]}): {len(repo.files)} file(s)" in pulled.stdout
    snapshot = cache / "hub" / "models--test-org--tiny-llama" / "snapshots" / repo.commit
    assert f"tiny: complete in {snapshot}" in pulled.stdout
    assert (cache / "hub" / "models--test-org--tiny-llama" / "refs" / "main").read_text() == repo.commit
    assert all(hub.gets(path) == 1 for path in repo.files)

    again = pull(stack.config_path, hub, "tiny")
    assert again.returncode == 0 and "0.0 GiB to fetch" in again.stdout, again.stdout + again.stderr
    assert all(hub.gets(path) == 1 for path in repo.files)  # nothing fetched twice

    client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="unused", timeout=300, max_retries=0)
    reply = await client.completions.create(model="tiny", prompt="hello", max_tokens=2)
    await client.close()
    # The repository id is nowhere but in that cache, and the image starts vLLM offline: it loaded it.
    assert reply.model == "tiny" and reply.choices[0].text


def test_a_gated_repository_and_a_small_disk_are_refused_saying_what_to_do(hub, tmp_path):
    config = tmp_path / "models.toml"
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    try:
        models = [("gated", tmp_path / "hf", "test-org/gated"), ("tight", small, REPO_ID)]
        config.write_text(
            "".join(
                f'[[model]]\nid = "{name}"\nimage = "{REAL_IMAGE}"\nentrypoint = ["vllm", "serve"]\n'
                f'command = ["{repo}"]\nvolumes = ["{cache}:/root/.cache/huggingface"]\n'
                for name, cache, repo in models
            )
        )
        refused = pull(config, hub, "gated", "tight")
        assert refused.returncode == 1
        assert "waker pull: gated: test-org/gated is gated: accept its licence" in refused.stderr
        assert "waker pull: tight: test-org/tiny-llama needs" in refused.stderr
        assert f"more in {small}/hub, whose disk has 0.0 GiB free" in refused.stderr
        assert [r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]] == []  # not a byte
        assert not any(small.rglob("*.incomplete")) and not list((small / "hub").rglob("blobs/*"))
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_a_pull_killed_mid_download_resumes_with_every_file_right(hub, tmp_path):
    cache = tmp_path / "hf"
    config = tmp_path / "models.toml"
    config.write_text(
        f'[[model]]\nid = "tiny"\nimage = "{REAL_IMAGE}"\nentrypoint = ["vllm", "serve"]\n'
        f'command = ["{REPO_ID}"]\nvolumes = ["{cache}:/root/.cache/huggingface"]\n'
    )
    repo = hub.repos[REPO_ID]
    held = max(repo.files, key=lambda path: len(repo.files[path]))  # the weights: held half-way
    hub.stall.add(held)
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    pulling = subprocess.Popen(
        [sys.executable, "-m", "waker.cli.main", "pull", "tiny", "--config", str(config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    snapshot = cache / "hub" / "models--test-org--tiny-llama" / "snapshots" / repo.commit
    others = [path for path in repo.files if path != held]
    try:
        eventually(lambda: all((snapshot / path).exists() for path in others), 60, "the other files fetched")
        eventually(lambda: list(snapshot.parent.parent.glob("blobs/*.incomplete")), 30, "the weights half-way")
    finally:
        pulling.kill()  # kill -9: no chance to clean up
        pulling.wait()
    assert not (snapshot / held).exists() and not (snapshot.parent.parent / "refs" / "main").exists()
    hub.stall.clear()
    hub.release()

    resumed = pull(config, hub, "tiny")
    assert resumed.returncode == 0, resumed.stderr
    for path, data in repo.files.items():
        assert hashlib.sha256((snapshot / path).read_bytes()).digest() == hashlib.sha256(data).digest(), path
    assert all(hub.gets(path) == 1 for path in others)  # what was whole was not fetched again
    assert hub.gets(held) == 2
