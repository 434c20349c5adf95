"""`waker pull`: what it says of each model named, with the real huggingface_hub and a hub on
loopback (tests/e2e/test_weights.py runs it as a command and starts the real vLLM from the cache)."""

from __future__ import annotations

import errno

from tests.local_hub import HubRepo, LocalHub
from tests.unit.test_config import run_cli, write
from waker.hub import fetch

CONFIG = """
[[model]]
id = "tiny"
aliases = ["small"]
image = "vllm:1"
command = ["serve", "org/tiny", "--download-dir", "/models"]
volumes = ["./hf:/root/.cache/huggingface", "./models:/models"]

[[model]]
id = "own"
image = "vllm:1"
command = ["serve", "org/own"]
weights = false

[[model]]
id = "inside"
image = "vllm:1"
command = ["serve", "org/inside"]
"""


def test_pull_fetches_the_named_models_and_says_what_it_did(tmp_path, monkeypatch):
    path = write(tmp_path, CONFIG)
    files = {"config.json": b"{}", "model.safetensors": b"w" * 4096}
    with LocalHub({"org/tiny": HubRepo(files)}).serving() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        result = run_cli("pull", "small", "own", "inside", "--config", str(path))
        commit = hub.repos["org/tiny"].commit
    assert result.returncode == 0, result.stderr
    cache = tmp_path.resolve() / "hf" / "hub"
    models = tmp_path.resolve() / "models"
    assert result.stdout.splitlines()[:3] == [
        f"tiny: org/tiny at main ({commit[:12]}): 2 file(s), 0.0 GiB; 0.0 GiB to fetch into {cache}",
        f"tiny: complete in {cache}/models--org--tiny/snapshots/{commit}",
        f"tiny: linked into {models} too (vLLM's --download-dir)",
    ]
    # Where vLLM online reads its weights: the same blobs (hard links), in the same layout.
    for root in (cache, models):
        linked = root / "models--org--tiny" / "snapshots" / commit / "model.safetensors"
        assert linked.read_bytes() == files["model.safetensors"] and linked.is_symlink()
        assert (root / "models--org--tiny" / "refs" / "main").read_text() == commit
    assert (cache / "models--org--tiny" / "snapshots" / commit / "model.safetensors").stat().st_ino == (
        models / "models--org--tiny" / "snapshots" / commit / "model.safetensors"
    ).stat().st_ino
    assert "own: no weights to fetch (its command names no repository, or weights = false)" in result.stdout
    assert (
        "inside: its engine reads /root/.cache/huggingface/hub, which is in no volume: it fetches its own weights"
        in result.stdout
    )
    assert (cache / "models--org--tiny" / "snapshots" / commit / "model.safetensors").read_bytes() == files[
        "model.safetensors"
    ]


def test_pull_says_which_models_and_what_failed(tmp_path, monkeypatch):
    path = write(tmp_path, CONFIG)
    nothing = run_cli("pull", "--config", str(path))
    assert nothing.returncode == 2 and "name the models to fetch (waker pull ID...), or --all" in nothing.stderr
    unknown = run_cli("pull", "tiny", "huge", "--config", str(path))
    assert unknown.returncode == 2 and "no model 'huge' in the config; the models: tiny, own, inside" in unknown.stderr
    with LocalHub({}).serving() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        missing = run_cli("pull", "--all", "--config", str(path))
    assert missing.returncode == 1
    assert "waker pull: tiny: org/tiny is not on the hub, or is private" in missing.stderr


def test_a_gated_repository_is_fetched_with_the_token_of_the_file_the_config_names(tmp_path, monkeypatch):
    (tmp_path / "hf_token").write_text("hf_test_token\n")
    path = write(tmp_path, '[waker]\nhf_token_file = "hf_token"\n' + CONFIG)
    files = {"config.json": b"{}"}
    with LocalHub({"org/tiny": HubRepo(files, gated=True)}).serving() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        result = run_cli("pull", "tiny", "--config", str(path))
    assert result.returncode == 0, result.stderr
    resolved = run_cli("check", "--resolved", "--config", str(path)).stdout
    assert "hf_test_token" not in resolved and "hf_token" not in resolved


def test_a_download_dir_on_another_filesystem_is_said_with_what_to_do(tmp_path, monkeypatch):
    path = write(tmp_path, CONFIG)

    def across(source, target):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(fetch.os, "link", across)
    with LocalHub({"org/tiny": HubRepo({"model.safetensors": b"w"})}).serving() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        result = run_cli("pull", "tiny", "--config", str(path))
    assert result.returncode == 0
    assert (
        f"tiny: cannot link the files into {tmp_path.resolve()}/models: it is on another filesystem; "
        'vLLM reads its weights there when it runs online: give it HF_HUB_OFFLINE = "1" in its env'
    ) in result.stdout
