"""The fake vLLM beside the real one (vLLM 0.32.0, CPU build, a tiny model): the same checks, run on
both engines in containers, and a table of what each did. Whatever the rest of the suite learns
from the fake holds for vLLM only as far as this table agrees.

Engines start once per module and config (the real one takes 20-90 s here); at most one real engine
runs at a time. The checks are in tests/e2e/fidelity_checks.py.
"""

from __future__ import annotations

import asyncio
import re
import subprocess

import pytest

from tests.e2e.engine_probe import Engine, start_engine
from tests.e2e.fidelity_checks import CHECKS, SIGTERM_OUTCOMES, agree, sigterm_mid_stream
from tests.e2e.stack import REAL_IMAGE

pytestmark = pytest.mark.e2e

KINDS = ("fake", "real")
OBSERVED: dict[tuple[str, str], dict[str, str]] = {}  # (check, kind) -> rows, shared with the table


class EnginePool:
    """Engines by (kind, config), started when first asked for. A real engine is removed before
    another real one starts: the machine runs other real engines too."""

    def __init__(self) -> None:
        self.engines: dict[tuple[str, str], Engine] = {}

    def get(self, kind: str, config: str) -> Engine:
        engine = self.engines.get((kind, config))
        if engine is not None and engine.state()[0]:
            return engine
        if engine is not None:  # a SIGTERM check ended it
            engine.remove()
        if kind == "real":
            for key in [key for key in self.engines if key[0] == "real"]:
                self.engines.pop(key).remove()
        self.engines[(kind, config)] = asyncio.run(start_engine(kind, config))
        return self.engines[(kind, config)]

    def close(self) -> None:
        for engine in self.engines.values():
            engine.remove()


@pytest.fixture(scope="module")
def engines():
    if subprocess.run(["docker", "image", "inspect", REAL_IMAGE], check=False, capture_output=True).returncode != 0:
        pytest.fail(f"image {REAL_IMAGE} is missing: run scripts/build-test-images", pytrace=False)
    pool = EnginePool()
    yield pool
    pool.close()


def observe(engines: EnginePool, check: str, kind: str) -> dict[str, str]:
    if (check, kind) not in OBSERVED:
        config, run = CHECKS[check]
        engine = engines.get(kind, config)
        try:
            OBSERVED[(check, kind)] = asyncio.run(run(engine))
        except AssertionError as failure:
            raise AssertionError(f"{failure}\n--- {engine.container} log ---\n{engine.logs()}") from failure
    return OBSERVED[(check, kind)]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@pytest.mark.parametrize(
    ("check", "kind"),
    [(check, kind) for check in CHECKS for kind in KINDS],
    ids=[f"{slug(check)}-{kind}" for check in CHECKS for kind in KINDS],
)
def test_engine_behaves_like_vllm(engines, check, kind):
    for row, seen in observe(engines, check, kind).items():
        print(f"{row}: {seen}")


def test_fidelity_table(engines, capsys):
    """Every row of every check, fake beside real; the run fails on any row where they differ."""
    verdicts = []
    for check in CHECKS:
        fake, real = observe(engines, check, "fake"), observe(engines, check, "real")
        for row in [*fake, *(row for row in real if row not in fake)]:
            name, seen_fake, seen_real = f"{check}: {row}", fake.get(row, "(none)"), real.get(row, "(none)")
            verdicts.append((name, seen_fake, seen_real, agree(name, seen_fake, seen_real)))
    width = max(len(name) for name, *_ in verdicts)
    lines = [f"{'check':<{width}} | fake | real ('same': equal to fake)"]
    for name, fake, real, why in verdicts:
        note = "" if why == "equal" else f"   <-- agree: {why}" if why else "   <-- DIFFERS"
        lines.append(f"{name:<{width}} | {fake} | {'same' if real == fake else real}{note}")
    with capsys.disabled():
        print("\n\nThe fake vLLM beside vLLM 0.32.0 (CPU build)\n" + "\n".join(lines))
    assert [name for name, *_, why in verdicts if why is None] == []


@pytest.mark.parametrize(
    ("mode", "outcome"),
    [("abort", "abort chunk, [DONE]"), ("error", "error chunk, [DONE]"), ("hang", "hangs until the client leaves")],
)
def test_the_fake_plays_each_sigterm_outcome_of_vllm(mode, outcome):
    """vLLM's SIGTERM outcome is a race (fidelity_checks.SIGTERM_OUTCOMES); the fake plays each on demand."""
    assert outcome in SIGTERM_OUTCOMES
    engine = asyncio.run(start_engine("fake", "plain", ["--on-sigterm", mode]))
    try:
        seen = asyncio.run(sigterm_mid_stream(engine))
    finally:
        engine.remove()
    assert seen == {"stream": outcome, "exit code": "0", "exit after the stream ended or its client left": "within 3 s"}
