"""Narrows the CUDA arch lists of vLLM's FP4 and scaled_mm kernels to SM10.x, as the original stack does.

Built for SM12.x, those kernels failed at run time on GB10 (DGX Spark); without them vLLM falls back
to kernels that work there. Only the two variables of jdaln/dgx-spark-inference-stack's
custom-docker-containers/avarok/vllm_cmakelists.patch (86b747b and a686d89) are touched: every FP4_ARCHS
and SCALED_MM_ARCHS list that holds SM10.x and later archs keeps only its SM10.x ones ("10.0f;11.0f;12.0f"
-> "10.0f"), at each place it occurs, as the original's MXFP4 recipe does with `sed .../g` (the patch
itself names line numbers of one vLLM version); lists of SM9.0 or SM12.x alone stay as they are. Fails
loudly when nothing matches, so that a vLLM whose CMakeLists.txt changed cannot slip through unpatched.
"""

import re
import sys
from pathlib import Path

KERNELS = ("FP4_ARCHS", "SCALED_MM_ARCHS")
INTERSECTION = re.compile(r"(cuda_archs_loose_intersection\((" + "|".join(KERNELS) + r')\s+")([^"]*)(")')


def narrow(arch_list: str) -> str:
    return ";".join(arch for arch in arch_list.split(";") if arch.startswith("10."))


def main(path: str) -> int:
    text = Path(path).read_text(encoding="utf-8")
    changed = 0

    def rewrite(match: re.Match) -> str:
        nonlocal changed
        narrowed = narrow(match.group(3))
        if narrowed and narrowed != match.group(3):
            changed += 1
            return match.group(1) + narrowed + match.group(4)
        return match.group(0)

    text = INTERSECTION.sub(rewrite, text)
    if not changed:
        print(f"{path}: no arch list of {', '.join(KERNELS)} with SM10.x and others found", file=sys.stderr)
        return 1
    Path(path).write_text(text, encoding="utf-8")
    print(f"{path}: {changed} arch list(s) narrowed to SM10.x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
