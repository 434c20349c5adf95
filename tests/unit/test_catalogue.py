"""The shipped catalogue against what a DGX Spark owner can run: every enabled model's image is one that
scripts/build-images builds (with that exact tag) or one a registry serves as is; every entry says where
its recipe comes from; the statuses and the GPU budget are the original stack's."""

import re
import subprocess
from pathlib import Path

import pytest

from waker.config.schema import PullPolicy, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_config(ROOT / "config" / "models.toml")
# An image reference whose first component names a registry host is pulled from there (Docker's rule:
# a component with a "." or ":", or "localhost").
REGISTRY_HOST = re.compile(r"^(localhost|[^/]*[.:][^/]*)/")
# Models the original validated (release 0.9.0's models.json); all other served models are experimental.
VALIDATED = {"gpt-oss-20b", "gpt-oss-120b", "glm-4.7-flash-awq", "qwen3.5-0.8b"}
ORIGINAL_REPO = "https://github.com/jdaln/dgx-spark-inference-stack"


def built_images() -> set[str]:
    listed = subprocess.run(
        [str(ROOT / "scripts" / "build-images"), "--list"], capture_output=True, text=True, check=True
    )
    return set(listed.stdout.split())


def test_every_enabled_model_names_an_image_that_is_built_here_or_pullable():
    built = built_images()
    unprovided = [
        f"{m.id}: {m.image}" for m in CONFIG.models if m.image not in built and not REGISTRY_HOST.match(m.image)
    ]
    assert not unprovided, (
        "these images are neither built by scripts/build-images (--list) nor on a registry:\n" + "\n".join(unprovided)
    )
    # An image built here is on no registry: a pull would only fail, slowly, before naming the script.
    pulled_in_vain = [m.id for m in CONFIG.models if m.image in built and m.pull is not PullPolicy.NEVER]
    assert not pulled_in_vain, f'set pull = "never" for the models on images built here: {pulled_in_vain}'
    never_pulled = [m.id for m in CONFIG.models if REGISTRY_HOST.match(m.image) and m.pull is PullPolicy.NEVER]
    assert not never_pulled, f"these registry images would never be pulled: {never_pulled}"


@pytest.mark.parametrize(
    "image, provided",
    [
        ("waker/vllm-gb10:v11", True),
        ("waker/vllm-gb10:20261130", False),
        ("avarok/vllm-dgx-spark:v11", False),
        ("nvcr.io/nvidia/vllm:25.10-py3", True),
        ("docker.io/scitrera/dgx-spark-sglang:0.5.9-t5", True),
        ("localhost:5000/x:1", True),
    ],
)
def test_the_provenance_rule_tells_built_pullable_and_neither(image, provided):
    assert (image in built_images() or bool(REGISTRY_HOST.match(image))) is provided


def test_every_gpu_model_says_where_its_recipe_comes_from():
    for model in (*CONFIG.models, *CONFIG.disabled):
        if model.gpus:
            assert model.source is not None and model.source.repo == ORIGINAL_REPO, model.id
            assert model.source.commit in ("86b747b", "a686d89"), model.id
            assert model.source.file.startswith("compose/models-"), model.id
        assert "UNCONFIRMED" not in " ".join(model.command), model.id


def test_statuses_claim_no_more_than_the_original_validated():
    assert {m.id for m in CONFIG.models if m.status == "validated"} == VALIDATED
    assert all(m.notes for m in CONFIG.disabled)


def test_the_utility_sits_beside_every_main_model_in_the_measured_budget():
    assert CONFIG.scheduler.gpu_capacity == 0.94
    utility = [m for m in CONFIG.models if m.keep_warm]
    assert [m.id for m in utility] == ["qwen3.5-0.8b"]
    mains = [m for m in CONFIG.models if m.gpu_memory and not m.keep_warm]
    assert not any(m.exclusive for m in CONFIG.models)
    for model in mains:
        assert model.gpu_memory + utility[0].gpu_memory <= CONFIG.scheduler.gpu_capacity, model.id
    assert CONFIG.model("gpt-oss-120b").gpu_memory == 0.8


def test_gpt_oss_keeps_the_mxfp4_tuning_its_image_exists_for():
    for model_id in ("gpt-oss-20b", "gpt-oss-120b"):
        command = " ".join(CONFIG.model(model_id).command)
        for flag in (
            "--mxfp4-backend CUTLASS",
            "--mxfp4-layers moe,qkv,o,lm_head",
            "--max-num-seqs 2",
            "--max-num-batched-tokens 8192",
            "--enable-prefix-caching",
            "--quantization mxfp4",
        ):
            assert flag in command, (model_id, flag)
        # catalogue-check.md F6: the seed never had a MoE switch active (its name was misspelled), and
        # the one the fork reads names an SM100-only backend; --mxfp4-backend CUTLASS decides.
        assert not any(name.startswith("VLLM_USE_FLASHINFER_MOE_MXFP4") for name, _ in CONFIG.model(model_id).env)


def test_a_reasoning_parser_plugin_is_given_a_file():
    for model in (*CONFIG.models, *CONFIG.disabled):
        if "--reasoning-parser-plugin" in model.command:
            assert model.command[model.command.index("--reasoning-parser-plugin") + 1].endswith(".py"), model.id


# What the original pins by digest (a686d89: compose/models-*.yml, avarok/Dockerfile:23), catalogue-check.md F8.
ORIGINAL_DIGESTS = {
    "nvcr.io/nvidia/vllm:25.10-py3": "sha256:9063047cace3b0ec2db8f02727c5e5e4d582a7fd9375cbc5a086fef243ad4074",
    "docker.io/scitrera/dgx-spark-sglang:0.5.9-t5": (
        "sha256:a055011be7feb2e43ad8dbc365e3903f869c63b992864691f7edf83015bb941d"
    ),
    "nvidia/cuda:13.0.2-cudnn-devel-ubuntu24.04": (
        "sha256:5e9d0c68200eb01201617eb0d29a26d9a472104a2b8240de40dab58101ec948f"
    ),
}


def test_images_the_original_pins_by_digest_are_pinned_by_the_same_digest():
    """A tag can be moved to other bytes; the original pins these, so a model here runs what it ran."""
    images = [m.image for m in (*CONFIG.models, *CONFIG.disabled)]
    bases = [
        line.split("=", 1)[1]
        for dockerfile in (ROOT / "custom-docker-containers").glob("*/Dockerfile")
        for line in dockerfile.read_text().splitlines()
        if line.startswith("ARG BASE_IMAGE=")
    ]
    for reference in (*images, *bases):
        name = reference.split("@", 1)[0]
        if name in ORIGINAL_DIGESTS:
            assert reference == f"{name}@{ORIGINAL_DIGESTS[name]}", reference
    assert {ref.split("@", 1)[0] for ref in (*images, *bases)} >= set(ORIGINAL_DIGESTS)
