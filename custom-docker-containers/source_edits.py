"""Applies a list of source edits to a tree at build time: the patches the original stack makes to
vLLM, kept as data (an edits file defines EDITS: (path, old text, new text, what it is) tuples).

    python3 source_edits.py <edits file> <root>

Each edit changes the first place its text is, as the original's replace_once does; a tree without
the text (another vLLM commit) fails the build here, naming the edit, instead of building something
unpatched.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: source_edits.py <edits file> <root>", file=sys.stderr)
        return 2
    edits = runpy.run_path(argv[1])["EDITS"]
    root = Path(argv[2])
    for name, old, new, what in edits:
        path = root / name
        text = path.read_text() if path.exists() else ""
        if old not in text:
            print(f"source_edits.py: {what} is not in {path}: another vLLM commit?", file=sys.stderr)
            return 1
        path.write_text(text.replace(old, new, 1))
        print(f"edited {name}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
