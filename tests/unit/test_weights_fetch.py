"""Weights fetched with the real huggingface_hub from a hub on loopback (tests/local_hub.py): the
files the engine loads and no others, in the cache layout it reads, each once; what a gated,
missing or too large repository says."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import namedtuple

import pytest

from tests.local_hub import HubRepo, LocalHub
from waker.config.weights import Engine, Weights
from waker.errors import WeightsError
from waker.hub import fetch
from waker.hub.fetch import Hub

MIB = 1024**2


def shard(i: int, size: int = 3 * MIB) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * (size // 32)


VLLM_REPO = {
    "config.json": b'{"model_type": "llama"}',
    "tokenizer.json": b"{}",
    "model-00001-of-00002.safetensors": shard(1),
    "model-00002-of-00002.safetensors": shard(2, 12 * MIB),  # over huggingface_hub's 10 MiB chunk
    "model.safetensors.index.json": json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    ).encode(),
    "consolidated.safetensors": shard(3),  # Mistral's single file: not in the index, not loaded
    "pytorch_model.bin": shard(4),  # the same weights again, older format
    "original/consolidated.00.pth": shard(5),  # the upstream checkpoint
}
LOADED = sorted(
    ["config.json", "tokenizer.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    + ["model.safetensors.index.json"]
)


@pytest.fixture
def hub():
    with LocalHub(
        {"org/model": HubRepo(dict(VLLM_REPO)), "org/gated": HubRepo({"a.json": b"{}"}, gated=True)}
    ).serving() as served:
        yield served


def weights(tmp_path, repo: str = "org/model", **kwargs) -> Weights:
    return Weights(repo, engine=kwargs.pop("engine", Engine.VLLM), host_cache=str(tmp_path / "hub"), **kwargs)


def test_the_files_the_engine_loads_are_fetched_once_into_its_cache_layout(hub, tmp_path):
    wanted = weights(tmp_path)
    source = Hub(hub.url)
    plan = source.plan(wanted)
    assert sorted(f.path for f in plan.files) == LOADED
    index = len(VLLM_REPO["model.safetensors.index.json"])  # read to choose the shards: there already
    assert (
        plan.bytes_total == sum(len(VLLM_REPO[p]) for p in LOADED) and plan.bytes_to_fetch == plan.bytes_total - index
    )
    seen: list[int] = []
    snapshot = source.fetch(plan, seen.append)

    commit = hub.repos["org/model"].commit
    repo_dir = tmp_path / "hub" / "models--org--model"
    assert snapshot == repo_dir / "snapshots" / commit
    assert (repo_dir / "refs" / "main").read_text() == commit  # what an offline engine resolves
    for path in LOADED:
        assert (snapshot / path).read_bytes() == VLLM_REPO[path], path
        assert (snapshot / path).is_symlink()  # into blobs/, as the engines' own downloads lay it out
    assert not (snapshot / "pytorch_model.bin").exists() and not (snapshot / "original").exists()
    assert sum(seen) == plan.bytes_to_fetch
    assert all(hub.gets(path) == 1 for path in LOADED)
    assert not [p for p in os.listdir(repo_dir / "blobs") if p.endswith(".incomplete")]

    again = source.plan(wanted)
    assert again.to_fetch == () and again.bytes_to_fetch == 0
    source.fetch(again)
    assert all(hub.gets(path) == 1 for path in LOADED)  # nothing fetched twice


def test_given_patterns_choose_the_files(hub, tmp_path):
    plan = Hub(hub.url).plan(weights(tmp_path, include=("*.json",)))
    assert sorted(f.path for f in plan.files) == ["config.json", "model.safetensors.index.json", "tokenizer.json"]


def test_a_gated_repository_says_what_to_do_and_its_token_opens_it(hub, tmp_path):
    with pytest.raises(WeightsError) as refused:
        Hub(hub.url).plan(weights(tmp_path, "org/gated"))
    assert (refused.value.status, refused.value.code) == (503, "weights_unauthorized")
    assert "org/gated is gated: accept its licence" in refused.value.message and "HF_TOKEN" in refused.value.message
    plan = Hub(hub.url, token="hf_test_token").plan(weights(tmp_path, "org/gated"))
    assert [f.path for f in plan.files] == ["a.json"]


def test_a_missing_repository_or_revision_is_named(hub, tmp_path):
    with pytest.raises(WeightsError, match="org/absent is not on the hub, or is private") as refused:
        Hub(hub.url).plan(weights(tmp_path, "org/absent"))
    assert refused.value.code == "weights_not_found"
    with pytest.raises(WeightsError, match="org/model has no revision 'v9'"):
        Hub(hub.url).plan(weights(tmp_path, revision="v9"))


def test_a_hub_that_does_not_answer_is_said_to_be_unreachable(tmp_path):
    with pytest.raises(WeightsError, match="cannot fetch org/model from the hub: .*check the network") as refused:
        Hub("http://127.0.0.1:9").plan(weights(tmp_path))
    assert refused.value.code == "weights_unavailable"


def test_a_disk_too_small_is_refused_before_any_byte(hub, tmp_path, monkeypatch):
    plan = Hub(hub.url).plan(weights(tmp_path))
    gets = len([r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]])
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(fetch.shutil, "disk_usage", lambda path: Usage(10 * 1024**3, 0, 1024**3 + MIB))
    with pytest.raises(WeightsError) as refused:
        Hub(hub.url).fetch(plan)
    assert (refused.value.status, refused.value.code) == (503, "insufficient_disk")
    assert (
        "org/model needs 0.0 GiB more in" in refused.value.message
        and "whose disk has 1.0 GiB free" in refused.value.message
    )
    assert len([r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]]) == gets  # nothing more fetched


def test_a_gguf_repository_gives_the_file_of_its_quant_tag(tmp_path):
    files = {
        "gemma-Q4_K_M.gguf": b"q4" * 100,
        "gemma-Q8_0.gguf": b"q8" * 100,
        "mmproj-gemma-f16.gguf": b"mm" * 10,
        "README.md": b"#",
    }
    with LocalHub({"org/g-GGUF": HubRepo(files)}).serving() as hub:
        source = Hub(hub.url)
        tagged = source.plan(weights(tmp_path, "org/g-GGUF", engine=Engine.LLAMA_CPP, quant="Q8_0"))
        assert [f.path for f in tagged.files] == ["gemma-Q8_0.gguf", "mmproj-gemma-f16.gguf"]
        untagged = source.plan(weights(tmp_path, "org/g-GGUF", engine=Engine.LLAMA_CPP))
        assert untagged.files[0].path == "gemma-Q4_K_M.gguf"  # llama-server's own default
        with pytest.raises(WeightsError, match="has no a GGUF for the tag 'IQ2_XS'"):
            source.plan(weights(tmp_path, "org/g-GGUF", engine=Engine.LLAMA_CPP, quant="IQ2_XS"))


def test_a_revision_with_slashes_gets_its_ref(tmp_path):
    with LocalHub({"org/model": HubRepo({"config.json": b"{}"})}).serving() as hub:
        source = Hub(hub.url)
        plan = source.plan(weights(tmp_path))
        branched = fetch.Plan(weights(tmp_path, revision="release/v1"), plan.commit, plan.files, plan.to_fetch)
        source.fetch(branched)
    ref = tmp_path / "hub" / "models--org--model" / "refs" / "release" / "v1"
    assert ref.read_text() == plan.commit


def test_a_cache_it_may_not_write_is_named_not_blamed_on_the_network(hub, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "hub").mkdir()
    (locked / "hub").chmod(0o500)
    try:
        wanted = Weights("org/model", engine=Engine.VLLM, host_cache=str(locked / "hub"), include=("*.json",))
        if os.geteuid() == 0:  # root writes anywhere: a file where the repository's directory goes instead
            (locked / "hub").chmod(0o700)
            (locked / "hub" / "models--org--model").write_text("in the way")
        with pytest.raises(WeightsError) as refused:
            source = Hub(hub.url)
            source.fetch(source.plan(wanted))
        assert refused.value.code == "weights_unwritable"
        assert "run waker pull as a user who may write it" in refused.value.message
    finally:
        (locked / "hub").chmod(0o700)


def test_the_first_failed_file_ends_the_fetch_at_once(hub, tmp_path):
    hub.stall.add("model-00002-of-00002.safetensors")  # held half-way until released
    source = Hub(hub.url)
    plan = source.plan(weights(tmp_path))
    del hub.repos["org/model"].files["config.json"]  # gone from the hub since the plan
    with pytest.raises(WeightsError, match="cannot fetch org/model from the hub"):
        source.fetch(plan)  # it returns while the stalled file is still held: it did not wait for it
    hub.release()


def test_partial_files_a_killed_fetch_left_are_removed_and_a_live_ones_kept(hub, tmp_path):
    blobs = tmp_path / "hub" / "models--org--model" / "blobs"
    blobs.mkdir(parents=True)
    left, live = blobs / "abc.1a2b3c4d.incomplete", blobs / "def.5e6f7a8b.incomplete"
    left.write_bytes(b"x" * MIB)
    live.write_bytes(b"y" * 10)
    an_hour_ago = time.time() - 3600
    os.utime(left, (an_hour_ago, an_hour_ago))  # untouched since a kill -9 an hour ago
    plan = Hub(hub.url).plan(weights(tmp_path))
    assert plan.reclaimed == MIB and not left.exists() and live.exists()
