"""Makes vLLM 50cd5674b build against CUDA 13.0, as the original stack's vllm-node-tf5 image does
before building that commit (jdaln/dgx-spark-inference-stack a686d89,
custom-docker-containers/vllm-node-tf5/patch_cache_kernels.py, Apache-2.0).

CUDA 13.0's cuda.h maps cuMemcpyBatchAsync to cuMemcpyBatchAsync_v2, which has no failIdx argument:
the commit's 9-argument call in csrc/cache_kernels.cu does not compile against it
(tests/unit/test_images.py compiles both forms against the real header). The stable-libtorch
extension is left out of the build and its import made optional, as the original does for this
commit (whether that extension builds against this image's torch is not known here).

    python3 patch-cuda13.py <vllm checkout>

Each edit changes the first place its text is, as the original's do; a checkout without the text
(another commit) fails the build here, naming the edit, instead of building something unpatched.
"""

from __future__ import annotations

import sys
from pathlib import Path

BATCH_CALL = """  CUmemcpyAttributes attr = {};
  attr.srcAccessOrder = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM;
  size_t attrs_idx = 0;
  size_t fail_idx = 0;
  CUresult result = cuMemcpyBatchAsync(
      reinterpret_cast<CUdeviceptr*>(const_cast<int64_t*>(dst_data)),
      reinterpret_cast<CUdeviceptr*>(const_cast<int64_t*>(src_data)),
      reinterpret_cast<size_t*>(const_cast<int64_t*>(size_data)),
      static_cast<size_t>(n), &attr, &attrs_idx, 1, &fail_idx,
      static_cast<CUstream>(stream));
  TORCH_CHECK(result == CUDA_SUCCESS, "cuMemcpyBatchAsync failed at index ",
              fail_idx, " with error ", result);"""
BATCH_CALL_V2 = """  CUmemcpyAttributes attr = {};
  attr.srcAccessOrder = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM;
  size_t attrs_idx = 0;
  CUresult result = cuMemcpyBatchAsync(
      reinterpret_cast<CUdeviceptr*>(const_cast<int64_t*>(dst_data)),
      reinterpret_cast<CUdeviceptr*>(const_cast<int64_t*>(src_data)),
      reinterpret_cast<size_t*>(const_cast<int64_t*>(size_data)),
      static_cast<size_t>(n), &attr, &attrs_idx, 1,
      static_cast<CUstream>(stream));
  TORCH_CHECK(result == CUDA_SUCCESS, "cuMemcpyBatchAsync failed with error ",
              result);"""
STABLE_EXTENSION = """if _build_custom_ops():
    ext_modules.append(CMakeExtension(name="vllm._C"))
    # also _is_hip() once https://github.com/vllm-project/vllm/issues/35163 is
    # fixed
    if _is_cuda():
        ext_modules.append(CMakeExtension(name="vllm._C_stable_libtorch"))
"""
WITHOUT_STABLE_EXTENSION = """if _build_custom_ops():
    ext_modules.append(CMakeExtension(name="vllm._C"))
"""
STABLE_IMPORT = """# import custom ops, trigger op registration
import vllm._C  # noqa
import vllm._C_stable_libtorch  # noqa
import vllm.envs as envs
"""
OPTIONAL_STABLE_IMPORT = """# import custom ops, trigger op registration
import vllm._C  # noqa
try:
    import vllm._C_stable_libtorch  # noqa
except ImportError:
    pass
import vllm.envs as envs
"""
EDITS = (
    ("csrc/cache_kernels.cu", BATCH_CALL, BATCH_CALL_V2, "the 9-argument cuMemcpyBatchAsync call"),
    ("setup.py", STABLE_EXTENSION, WITHOUT_STABLE_EXTENSION, "the _C_stable_libtorch extension"),
    ("vllm/platforms/cuda.py", STABLE_IMPORT, OPTIONAL_STABLE_IMPORT, "the _C_stable_libtorch import"),
)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: patch-cuda13.py <vllm checkout>", file=sys.stderr)
        return 2
    root = Path(argv[1])
    for name, old, new, what in EDITS:
        path = root / name
        text = path.read_text() if path.exists() else ""
        if old not in text:
            print(f"patch-cuda13.py: {what} is not in {path}: another vLLM commit?", file=sys.stderr)
            return 1
        path.write_text(text.replace(old, new, 1))
        print(f"patched {name}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
