"""Request fix-ups in the config: per model `fixups`, the rewrites nginx applies to the model's request
bodies (nginx/route.js), read and checked at the boundary like every other field (docs/configuration.md,
"Request fix-ups"). Each answers one known refusal or mishandling by vLLM or a model's chat template.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol

from waker.config import fields


class Fixup(StrEnum):
    """A rewrite nginx applies to a model's requests (nginx/route.js), each for one known refusal or
    mishandling by the engine or the model's chat template. The order here is the order they apply."""

    MAX_TOKENS = "max_tokens"  # a max_tokens over the context is dropped: the engine uses what is left
    STRIP_TOOLS = "strip_tools"  # tool parameters dropped for a model served without tool calling
    FORCE_TOOLS = "force_tools"  # tool_choice "auto" (or none) becomes "required" until a tool has answered
    TOOL_HINTS = "tool_hints"  # the original's Llama instruction: raw JSON arguments, no calls for greetings
    ALTERNATE_ROLES = "alternate_roles"  # system folded into the first user turn, same-role turns merged
    INCLUDE_USAGE = "include_usage"  # streams always end with a usage chunk
    THINKING = "thinking"  # reasoning_effort becomes the chat template's enable_thinking switch
    THINKING_OFF = "thinking_off"  # thinking off unless the request switches it on itself


def fixups(value: Any) -> tuple[Fixup, ...]:
    """A list of fix-up names, kept in the order they apply (the enum's), each once."""
    names = fields.list_of(fields.choice(*(f.value for f in Fixup)))(value)
    return tuple(f for f in Fixup if f.value in names)


def max_model_len(command: tuple[str, ...]) -> int | None:
    """The context vLLM enforces: `--max-model-len N` or `--max-model-len=N` in its command, when N is
    a plain number of tokens."""
    text = fields.option(command, "--max-model-len")
    return int(text) if text is not None and text.isdigit() and int(text) > 0 else None


class FixupSubject(Protocol):
    """What the fix-ups need to know of a model (a ModelConfig, which this layer cannot import)."""

    @property
    def fixups(self) -> tuple[Fixup, ...]: ...
    @property
    def command(self) -> tuple[str, ...]: ...
    @property
    def context_length(self) -> int | None: ...
    @property
    def tools(self) -> bool: ...


def model_context(model: FixupSubject) -> int | None:
    """What a max_tokens is checked against: --max-model-len (what vLLM enforces), else context_length."""
    return max_model_len(model.command) or model.context_length


def fixup_problems(model: FixupSubject) -> list[str]:
    """What a model's declared fix-ups need from the rest of its config."""
    problems = []
    if Fixup.MAX_TOKENS in model.fixups:
        given = max_model_len(model.command)
        if not model_context(model):
            problems.append(
                '"max_tokens" needs the model\'s context: add "--max-model-len", "N" to its command '
                "or context_length = N"
            )
        elif given and model.context_length and given != model.context_length:
            problems.append(
                f'"max_tokens" needs one context, but --max-model-len is {given} and context_length '
                f"{model.context_length}: make them equal"
            )
    if Fixup.STRIP_TOOLS in model.fixups and model.tools:
        problems.append(
            '"strip_tools" removes tool calling from every request, so the model cannot also '
            "declare tools = true: drop one of them"
        )
    if Fixup.TOOL_HINTS in model.fixups and Fixup.STRIP_TOOLS in model.fixups:
        problems.append('"tool_hints" rewrites the tools that "strip_tools" removes: drop one of them')
    if Fixup.FORCE_TOOLS in model.fixups and not model.tools:
        problems.append(
            '"force_tools" asks the model for tool calls, which vLLM makes only with a tool parser: '
            'serve it with "--enable-auto-tool-choice", "--tool-call-parser", "<parser>" and set tools = true'
        )
    return problems
