"""Per model `weights` (issue 24): the repository read from the engine's command or given, and the
cache the engine reads, in its container and on the host."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tests.unit.test_config import run_cli, write
from waker.config.schema import load_config
from waker.config.weights import Engine, Weights, cache_in_container, derived, on_host
from waker.errors import ConfigError


@pytest.mark.parametrize(
    ("entrypoint", "command", "expected"),
    [
        (["vllm"], ["serve", "Qwen/Qwen3-8B", "--port", "8000"], ("Qwen/Qwen3-8B", "", "", Engine.VLLM)),
        (None, ["serve", "openai/gpt-oss-20b", "--revision", "v2"], ("openai/gpt-oss-20b", "v2", "", Engine.VLLM)),
        (["vllm", "serve"], ["--model=org/m", "--port", "1"], ("org/m", "", "", Engine.VLLM)),
        (["vllm", "serve"], ["org/in-the-image", "--port", "1"], ("org/in-the-image", "", "", Engine.VLLM)),
        (
            ["python3", "-m", "sglang.launch_server"],
            ["--model-path", "Qwen/Qwen3.5-0.8B", "--revision=abc"],
            ("Qwen/Qwen3.5-0.8B", "abc", "", Engine.SGLANG),
        ),
        (
            ["/app/llama-server"],
            ["-hf", "ggml-org/gemma-3-270m-it-GGUF:Q8_0", "--port", "8080"],
            ("ggml-org/gemma-3-270m-it-GGUF", "", "Q8_0", Engine.LLAMA_CPP),
        ),
        (["/app/llama-server"], ["--hf-repo", "org/x-GGUF"], ("org/x-GGUF", "", "", Engine.LLAMA_CPP)),
    ],
)
def test_the_repository_is_read_from_the_engines_command(entrypoint, command, expected):
    weights = derived(tuple(entrypoint) if entrypoint else None, tuple(command))
    assert (weights.repo, weights.revision, weights.quant, weights.engine) == expected and weights.derived


@pytest.mark.parametrize(
    ("entrypoint", "command"),
    [
        (["vllm"], ["serve", "/models/tiny-llama"]),  # a local path
        (["vllm"], ["serve", "./weights"]),
        (["vllm"], ["serve", "--port", "8000"]),  # no model named
        (None, ["python", "server.py", "--model", "org/m"]),  # an engine the waker does not know
        (["python3", "-m", "sglang.launch_server"], ["--model-path", "/data/m"]),
    ],
)
def test_a_local_path_or_an_unknown_engine_names_no_repository(entrypoint, command):
    assert derived(tuple(entrypoint) if entrypoint else None, tuple(command)) is None


def test_the_cache_is_where_the_engine_reads_it():
    assert cache_in_container(Engine.VLLM, {}) == "/root/.cache/huggingface/hub"
    assert cache_in_container(Engine.VLLM, {"HF_HOME": "/hf/"}) == "/hf/hub"
    assert cache_in_container(Engine.SGLANG, {"HF_HOME": "/hf", "HF_HUB_CACHE": "/models"}) == "/models"
    assert cache_in_container(Engine.VLLM, {"HUGGINGFACE_HUB_CACHE": "/old"}) == "/old"
    assert cache_in_container(Engine.LLAMA_CPP, {"LLAMA_CACHE": "/l", "HF_HUB_CACHE": "/h"}) == "/l"
    assert cache_in_container(Engine.VLLM, {"LLAMA_CACHE": "/l"}) == "/root/.cache/huggingface/hub"


def test_the_host_side_is_the_deepest_bind_mount_holding_the_cache():
    volumes = ("/srv/root:/root", "/srv/hf:/root/.cache/huggingface", "models:/models", "/srv/m:/models/m")
    assert on_host("/root/.cache/huggingface/hub", volumes) == "/srv/hf/hub"
    assert on_host("/root/.cache/huggingface", volumes) == "/srv/hf"
    assert on_host("/root/.cache/other", volumes) == "/srv/root/.cache/other"
    assert on_host("/models", volumes) == ""  # a named volume: not a host directory the waker writes
    assert on_host("/models/m/hub", volumes) == "/srv/m/hub"
    assert on_host("/rootless", volumes) == ""  # a prefix of the name is not a parent directory


MODEL = """
[[model]]
id = "m"
image = "vllm/vllm-openai:v0.32.0"
command = ["serve", "Qwen/Qwen3-8B"]
env = {{ HF_HOME = "/root/.cache/huggingface" }}
volumes = ["./hf:/root/.cache/huggingface"]
{extra}
"""


def test_a_model_gets_its_weights_from_its_command_located_on_the_host(tmp_path):
    config = load_config(write(tmp_path, MODEL.format(extra="")))
    (model,) = config.models
    assert model.weights == Weights(
        "Qwen/Qwen3-8B",
        engine=Engine.VLLM,
        derived=True,
        cache="/root/.cache/huggingface/hub",
        host_cache=f"{tmp_path.resolve()}/hf/hub",
    )


def test_weights_given_or_switched_off(tmp_path):
    given = 'weights = { repo = "org/other", revision = "v1", include = ["*.json", "*.safetensors"] }'
    (model,) = load_config(write(tmp_path, MODEL.format(extra=given))).models
    assert (model.weights.repo, model.weights.revision, model.weights.include) == (
        "org/other",
        "v1",
        ("*.json", "*.safetensors"),
    )
    assert not model.weights.derived and model.weights.host_cache == f"{tmp_path.resolve()}/hf/hub"
    (off,) = load_config(write(tmp_path, MODEL.format(extra="weights = false"))).models
    assert off.weights is None


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("weights = true", "field 'weights': expected false (the engine fetches its own) or a table"),
        ('weights = { revision = "v1" }', '"repo" is required'),
        ('weights = { repo = "just-a-name" }', "is not a Hugging Face repository id"),
        ('weights = { repo = "a/b", branch = "x" }', "unknown key(s) branch; the keys are include, repo, revision"),
        ('weights = { repo = "a/b", include = "*.json" }', "field 'weights': include: expected an array"),
    ],
)
def test_bad_weights_say_what_is_wrong(tmp_path, extra, problem):
    with pytest.raises(ConfigError) as refused:
        load_config(write(tmp_path, MODEL.format(extra=extra)))
    assert problem in str(refused.value)


def test_given_weights_whose_cache_is_in_no_volume_are_refused(tmp_path):
    text = MODEL.replace('volumes = ["./hf:/root/.cache/huggingface"]', "").format(extra='weights = { repo = "a/b" }')
    with pytest.raises(ConfigError) as refused:
        load_config(write(tmp_path, text))
    assert "reads its weights from /root/.cache/huggingface/hub, which is in no volume" in str(refused.value)
    assert '"../data/huggingface:/root/.cache/huggingface"' in str(refused.value)


@pytest.mark.parametrize(
    "extra", ["", "weights = false", 'weights = { repo = "org/other", revision = "v1", include = ["*.json"] }']
)
def test_the_resolved_config_keeps_the_weights(tmp_path, extra):
    original = load_config(write(tmp_path, MODEL.format(extra=extra)))
    result = run_cli("check", "--resolved", "--config", str(original.path))
    assert result.returncode == 0, result.stderr
    again = tmp_path / "again" / "models.toml"
    again.parent.mkdir()
    again.write_text(result.stdout.replace("./hf", str(tmp_path / "hf")))
    assert load_config(again).models[0].weights == original.models[0].weights
    assert ("weights" in tomllib.loads(result.stdout)["model"][0]) == bool(extra)


def test_every_catalogue_model_fetched_ahead_has_its_cache_on_the_host():
    catalogue = load_config(Path(__file__).parents[2] / "config" / "models.toml")
    for model in (*catalogue.models, *catalogue.disabled):
        assert model.weights is not None and model.weights.host_cache, model.id
        if model.weights.engine is Engine.VLLM:  # online, vLLM reads them in its --download-dir
            assert model.weights.download_dir_host.endswith("/data/models"), model.id
