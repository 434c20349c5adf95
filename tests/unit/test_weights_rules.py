"""Which files of a repository an engine loads (`core.weights`, pure)."""

from __future__ import annotations

from waker.config.weights import Engine
from waker.core.weights import RepoFile, chosen, missing, needs_index


def listing(*paths: str) -> list[RepoFile]:
    return [RepoFile(p, 10, f"blob-{p}") for p in paths]


def paths(files) -> list[str]:
    return [f.path for f in files]


def test_vllm_takes_the_safetensors_and_every_other_file_but_not_the_older_copies():
    files = listing(
        "config.json", "model.safetensors", "pytorch_model.bin", "w.pt", "original/params.json", "tok.model"
    )
    assert paths(chosen(Engine.VLLM, (), "", files)) == ["config.json", "model.safetensors", "tok.model"]
    assert not needs_index(Engine.VLLM, (), files)


def test_without_safetensors_the_bin_files_are_the_weights():
    files = listing("config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin")
    assert paths(chosen(Engine.SGLANG, (), "", files)) == paths(files)


def test_the_index_names_the_shards_loaded():
    files = listing("consolidated.safetensors", "m-1.safetensors", "m-2.safetensors", "model.safetensors.index.json")
    assert needs_index(Engine.VLLM, (), files) and not needs_index(Engine.VLLM, ("*",), files)
    weight_map = frozenset({"m-1.safetensors", "m-2.safetensors"})
    assert paths(chosen(Engine.VLLM, (), "", files, weight_map)) == [
        "m-1.safetensors",
        "m-2.safetensors",
        "model.safetensors.index.json",
    ]


def test_given_patterns_or_an_unknown_engine():
    files = listing("a.json", "b.safetensors", "sub/c.json")
    assert paths(chosen(Engine.VLLM, ("*.json",), "", files)) == ["a.json", "sub/c.json"]
    assert paths(chosen(Engine.OTHER, (), "", files)) == paths(files)


def test_a_split_gguf_comes_with_all_its_shards_and_one_projector():
    files = listing(
        "Q4_K_M/m-Q4_K_M-00001-of-00002.gguf",
        "Q4_K_M/m-Q4_K_M-00002-of-00002.gguf",
        "m-Q8_0.gguf",
        "mmproj-m-f16.gguf",
        "mmproj-m-bf16.gguf",
        "imatrix-Q8_0.gguf",
    )
    assert paths(chosen(Engine.LLAMA_CPP, (), "Q4_K_M", files)) == [
        "Q4_K_M/m-Q4_K_M-00001-of-00002.gguf",
        "Q4_K_M/m-Q4_K_M-00002-of-00002.gguf",
        "mmproj-m-bf16.gguf",
    ]
    assert paths(chosen(Engine.LLAMA_CPP, (), "q8_0", files))[0] == "m-Q8_0.gguf"  # as llama-server: any case
    assert paths(chosen(Engine.LLAMA_CPP, (), "", listing("x-F16.gguf"))) == ["x-F16.gguf"]  # the first, untagged
    assert chosen(Engine.LLAMA_CPP, (), "IQ1_S", files) == ()


def test_what_the_cache_holds_whole_is_not_fetched_again():
    files = listing("a", "b")
    assert paths(missing(files, ["blob-a", "blob-c"])) == ["b"]
