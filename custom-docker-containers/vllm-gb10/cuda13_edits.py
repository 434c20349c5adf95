"""The edits that make vLLM 50cd5674b build against CUDA 13.0, as the original stack's vllm-node-tf5
image makes them before building that commit (jdaln/dgx-spark-inference-stack a686d89,
custom-docker-containers/vllm-node-tf5/patch_cache_kernels.py, Apache-2.0). Paths are from the root
of a vLLM checkout.

CUDA 13.0's cuda.h maps cuMemcpyBatchAsync to cuMemcpyBatchAsync_v2, which has no failIdx argument:
the commit's 9-argument call in csrc/cache_kernels.cu does not compile against it
(tests/unit/test_images.py compiles both forms against the real header). The stable-libtorch
extension is left out of the build and its import made optional, as the original does for this
commit (whether that extension builds against this image's torch is not known here).

    python3 source_edits.py vllm-gb10/cuda13_edits.py <vllm checkout>
"""

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
