"""Narrows the CUDA arch lists of vLLM's FP4, scaled_mm and blockwise grouped-MM kernels to SM10.x.

Built for SM12.x, those kernels failed at run time on GB10 (DGX Spark); without them vLLM falls back
to kernels that work there. Fails loudly when nothing matches, so that a vLLM version whose
CMakeLists.txt changed cannot slip through unpatched.
"""

import re
import sys

KERNELS = ("FP4_ARCHS", "SCALED_MM_ARCHS", "SCALED_MM_3X_ARCHS", "CUTLASS_MOE_DATA_ARCHS")
INTERSECTION = re.compile(r'(cuda_archs_loose_intersection\((' + "|".join(KERNELS) + r')\s+")([^"]*)(")')


def narrow(arch_list: str) -> str:
    return ";".join(arch for arch in arch_list.split(";") if arch.startswith("10."))


def main(path: str) -> int:
    text = open(path, encoding="utf-8").read()
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
    open(path, "w", encoding="utf-8").write(text)
    print(f"{path}: {changed} arch list(s) narrowed to SM10.x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
