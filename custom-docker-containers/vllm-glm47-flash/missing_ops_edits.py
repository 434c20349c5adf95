"""The guards the original stack's vllm-node-tf5 image adds to vLLM 50cd5674b for GLM-4.7 Flash
(jdaln/dgx-spark-inference-stack a686d89, custom-docker-containers/vllm-node-tf5/Dockerfile:47-123,
Apache-2.0): CUTLASS and per-token-group FP8 kernels that this GB10 build does not compile are asked
about, or called, as if they were there. Each guard answers "not supported" when the op is missing.
The two guards of that list in vLLM's compilation passes (matcher_utils.py, rms_quant_fusion.py) are
made by mods/fix-glm-4.7-flash-AWQ/run.sh, as in the original's GLM image. Paths are from the
installed vllm package.

    python3 source_edits.py vllm-glm47-flash/missing_ops_edits.py <vllm package directory>
"""

W8A8 = "model_executor/layers/quantization/utils/w8a8_utils.py"
FP8 = "model_executor/layers/quantization/utils/fp8_utils.py"


def _guarded_return(op: str) -> tuple[str, str]:
    call = f"    return ops.{op}(capability)\n"
    return call, f"    if not hasattr(torch.ops._C, '{op}'):\n        return False\n\n" + call


EDITS = (
    (W8A8, *_guarded_return("cutlass_scaled_mm_supports_fp8"), "the FP8 scaled-mm support check"),
    (W8A8, *_guarded_return("cutlass_scaled_mm_supports_block_fp8"), "the block FP8 scaled-mm support check"),
    (W8A8, *_guarded_return("cutlass_group_gemm_supported"), "the grouped GEMM support check"),
    (
        FP8,
        "    if current_platform.is_cuda() and x.is_contiguous():\n",
        "    if current_platform.is_cuda() and x.is_contiguous()"
        " and hasattr(torch.ops._C, 'per_token_group_fp8_quant'):\n",
        "the per-token-group FP8 quantisation call",
    ),
)
