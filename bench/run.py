"""Runs the benchmarks and writes docs/performance.md:  python -m bench.run [--quick] [--litellm PATH]

--quick runs every scenario briefly (CI proves they still run); the figures in docs/ come from a
full run. Each scenario starts its own stack (real nginx, waker, Docker, the fake vLLM image; the
real-* scenarios the real vLLM image).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

from bench import (
    fixups,
    footprint,
    hot_path,
    latency,
    loading_feedback,
    memory_guard,
    real_engine,
    sleep_swap,
    streaming,
)
from bench.common import Section

SCENARIOS = {
    "hot": lambda a: hot_path.run(a.quick, a.litellm),
    "stream": lambda a: streaming.run(a.quick),
    "cold": lambda a: latency.cold_start(a.quick),
    "swap": lambda a: latency.swap(a.quick),
    "burst": lambda a: latency.burst(a.quick),
    "sleep": lambda a: sleep_swap.run(a.quick),
    "idle": lambda a: footprint.idle_cost(a.quick),
    "scale": lambda a: footprint.scale(a.quick),
    "fixups": lambda a: fixups.run(a.quick),
    "feedback": lambda a: loading_feedback.run(a.quick),
    "guard": lambda a: memory_guard.run(a.quick),
    "real-cold": lambda a: real_engine.cold_start(a.quick),
    "real-swap": lambda a: real_engine.swap(a.quick),
}


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = (
        int(
            next(
                line.split()[1]
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")
            )
        )
        // 1024
        // 1024
    )
    return f"{os.cpu_count()} cores ({cpu}), {memory} GiB, {platform.system()} {platform.release()}"


def report(sections: list[Section], args: argparse.Namespace, seconds: float) -> str:
    command = "python -m bench.run" + (" --quick" if args.quick else "") + (" --litellm PATH" if args.litellm else "")
    lines = [
        f"- machine: {machine()}",
        f"- date: {datetime.date.today().isoformat()}",
        f"- command: `{command}` ({seconds:.0f} s)",
        "",
    ]
    for section in sections:
        lines += [f"### {section.title}", "", "| metric | value | target | |", "|---|---|---|---|"]
        for row in section.rows:
            mark = "" if row.ok is None else ("pass" if row.ok else "**MISS**")
            lines.append(f"| {row.metric} | {row.value} | {row.target} | {mark} |")
        lines += [""] + [f"- {note}" for note in section.notes] + ([""] if section.notes else [])
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs, to prove the benchmarks work")
    parser.add_argument("--litellm", help="path to LiteLLM's `litellm` command, to measure its proxy too")
    parser.add_argument("--only", nargs="*", choices=list(SCENARIOS), help="run only these scenarios")
    parser.add_argument(
        "--out",
        type=Path,
        help="write the results (markdown) into this file, between its results markers (docs/performance.md)",
    )
    args = parser.parse_args()
    began = time.monotonic()
    sections = []
    for name in args.only or SCENARIOS:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        sections.append(SCENARIOS[name](args))
    text = report(sections, args, time.monotonic() - began)
    print(text)
    if args.out:
        write_results(args.out, text)
    return 0


def write_results(path: Path, text: str) -> None:
    """Replaces what stands between the results markers, keeping the analysis around them."""
    start, end = "<!-- results: written by python -m bench.run --out -->", "<!-- /results -->"
    old = path.read_text() if path.exists() else f"{start}\n{end}\n"
    if start not in old or end not in old:
        old = f"{old.rstrip()}\n\n{start}\n{end}\n"
    head, rest = old.split(start, 1)
    path.write_text(f"{head}{start}\n{text}\n{rest[rest.index(end) :]}")


if __name__ == "__main__":
    sys.exit(main())
