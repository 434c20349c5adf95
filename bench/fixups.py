"""10. Request fix-ups: what a model that declares them pays on the hot path, against one that does not,
in one stack and interleaved rounds. Both are body-routed fake models; the baseline gets the body the
fix-ups would have produced, so the difference is njs parsing, changing and re-serialising it."""

from __future__ import annotations

from bench.common import Row, Section, admin, fake_model, median, start_stack, wrk

FIXUPS = ["max_tokens", "strip_tools", "alternate_roles", "include_usage", "thinking"]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{i}",
            "description": "does one thing " * 20,
            "parameters": {"type": "object", "properties": {"path": {"type": "string", "description": "a file"}}},
        },
    }
    for i in range(20)
]


def bodies(model: str, size: int) -> tuple[dict, dict]:
    """(what a client sends, what the fix-ups make of it): about `size` characters of conversation."""
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": "word " * (size // 5 // 7)} for i in range(7)]
    sent = {
        "model": model,
        "messages": [{"role": "system", "content": "be brief"}, *turns],
        "max_tokens": 10**7,
        "tools": TOOLS,
    }
    folded = {**turns[0], "content": "[System Instruction]\nbe brief\n\n" + turns[0]["content"]}
    return sent, {"model": model, "messages": [folded, *turns[1:]]}


def run(quick: bool) -> Section:
    seconds, rounds = (2, 1) if quick else (8, 3)
    fast = ["--tokens-per-second", "1000000", "--max-model-len", "1000000"]
    stack = start_stack(
        [
            fake_model("plain", load_delay=0.1, extra=fast),
            fake_model("fixed", load_delay=0.1, extra=fast, fixups=FIXUPS),
        ]
    )
    section = Section(
        "10. Request fix-ups: body-routed chat requests, a model with every fix-up against one "
        "without (wrk, 16 connections)"
    )
    try:
        for model in ("plain", "fixed"):
            admin(stack, "POST", f"/admin/models/{model}/start")
        url = f"{stack.url}/v1/chat/completions"
        small = {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 1}
        sent, fixed = bodies("fixed", 30_000)
        targets = {
            "a. no fix-ups, small request": {**small, "model": "plain"},
            "b. fix-ups declared, none applies, small request": {**small, "model": "fixed"},
            "c. no fix-ups, 30 kB request": {**fixed, "model": "plain"},
            "d. fix-ups declared, none applies, 30 kB request": fixed,
            "e. fix-ups rewrite a 30 kB request (+9 kB of tools)": sent,
        }
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for body in targets.values():  # warm-up
            wrk(url, body, 1)
        for _ in range(rounds):  # interleaved: the machine's noise hits every target alike
            for name, body in targets.items():
                samples[name].append(wrk(url, body, seconds))
        result = {name: {k: median([s[k] for s in runs]) for k in ("rps", "p50")} for name, runs in samples.items()}
        for name, r in result.items():
            section.rows.append(Row(name, f"{r['rps']:.0f} req/s, p50 {r['p50']:.2f} ms"))
        names = list(targets)
        for fixed_name, base in ((names[1], names[0]), (names[3], names[2]), (names[4], names[2])):
            ratio = result[fixed_name]["rps"] / result[base]["rps"]
            added = result[fixed_name]["p50"] - result[base]["p50"]
            section.rows.append(Row(f"({fixed_name[0]}) throughput / ({base[0]})", f"{ratio:.2f}"))
            section.rows.append(Row(f"({fixed_name[0]}) p50 added over ({base[0]})", f"{added:+.2f} ms"))
        section.notes.append(
            "(e) sends a system message, 7 turns, 20 tools and a max_tokens over the context; its "
            "baseline (c) is the body the fix-ups make of it, sent to the model without them."
        )
    finally:
        stack.stop()
    return section
