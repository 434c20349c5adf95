"""Renders docs/models.md, the catalogue guide, from the catalogue, so the two cannot drift apart:
python -m waker.cli.model_docs [config/models.toml] > docs/models.md   (scripts/gen-models-doc)
"""

from __future__ import annotations

import sys

from waker.config.schema import Config, ModelConfig, ModelStatus, load_config

# The quick picker's headings, in waker.config.fields.PICKS order.
PICK_TITLES = {
    "chat": "Best default chat / general assistant",
    "reasoning": "Heavy reasoning (maths, logic, planning)",
    "coding": "Coding",
    "opencode": "OpenCode (agent in the terminal)",
    "vision": "Vision (screenshots, diagrams)",
    "ocr": "OCR (image to text)",
    "european": "European languages",
    "utility": "Small utility model (titles, tags)",
}


def _features(model: ModelConfig) -> str:
    return ", ".join(
        name
        for name, on in (
            ("tools", model.tools),
            ("vision", model.vision),
            ("exclusive", model.exclusive),
            ("keep warm", model.keep_warm),
        )
        if on
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row(model: ModelConfig) -> str:
    path = model.weights.repo if model.weights else ""
    cells = [
        f"[`{model.id}`](#{model.id.replace('.', '')})",
        model.status,
        f"`{path}`" if path else "",
        f"`{model.image}`",
        f"{model.gpu_memory:g}" if model.gpu_memory else "",
        f"{model.context_length:,}" if model.context_length else "",
        _features(model),
    ]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _table(models: tuple[ModelConfig, ...]) -> str:
    header = (
        "| id | status | Hugging Face model | image | gpu_memory | context | features |\n|---|---|---|---|---|---|---|"
    )
    return "\n".join([header, *(_row(m) for m in models)])


def _picker(config: Config) -> str:
    lines = []
    everything = (*config.models, *config.disabled)
    for pick, title in PICK_TITLES.items():
        chosen = [m for m in everything if pick in m.picks]
        if not chosen:
            continue
        lines.append(f"**{title}**")
        for m in chosen:
            status = "" if m.status is ModelStatus.VALIDATED else f" ({m.status})"
            lines.append(f"- `{m.id}`{status}: {m.best_for}")
        lines.append("")
    return "\n".join(lines).rstrip()


def _source(model: ModelConfig) -> str:
    if model.source is None:
        return "this project (not from the original stack)"
    s = model.source
    return f"[{s.file} at {s.commit}]({s.repo}/blob/{s.commit}/{s.file})"


def _details(model: ModelConfig) -> str:
    lines = [f"### {model.id}", "", f"- **Status:** {model.status}"]
    for label, text in (("Best for", model.best_for), ("Trade-offs", model.tradeoffs)):
        if text:
            lines.append(f"- **{label}:** {text}")
    lines.extend(f"- **Known issue:** {issue}" for issue in model.known_issues)
    if model.notes:
        lines.append(f"- **Notes:** {model.notes}")
    if model.fixups:
        lines.append(f"- **Fix-ups:** {', '.join(f'`{f.value}`' for f in model.fixups)}")
    if model.weights:
        quant = f" (`{model.weights.quant}`)" if model.weights.quant else ""
        lines.append(
            f"- **Weights:** `{model.weights.repo}`{quant}, into `{model.weights.cache}`: "
            f"`waker pull {model.id}` fetches them ahead"
        )
    lines.append(f"- **Recipe:** {_source(model)}; image `{model.image}`")
    return "\n".join(lines)


def render(config: Config) -> str:
    served = "\n\n".join(_details(m) for m in config.models)
    disabled = "\n\n".join(_details(m) for m in config.disabled)
    return f"""# Models

Generated from `config/models.toml` by `scripts/gen-models-doc`; do not edit by hand (a test checks
that the two agree). Send requests with `"model": "<id>"` (or an alias), or to `/v1/<id>/...`.

- **validated**: served, and validated on a DGX Spark by the original stack (release 0.9.0);
- **experimental**: served, with the caveats below;
- **disabled**: declared for the record, not served (a request names the reason); change `status`
  once the problem is solved.

Every GPU model comes from a recipe of the original stack (its **Recipe** line links the compose file).
`waker/...` images are built by `scripts/build-images` with exactly these tags; the others are pulled
from their registry. `gpu_memory` is the fraction of the GPU the model takes (vLLM's
`--gpu-memory-utilization`): models run together while the sum fits `[scheduler] gpu_capacity` (0.94,
as measured on a Spark), so the utility model runs beside any one main model, and two main models never
run together ([scheduling.md](scheduling.md)).

**Fix-ups** are rewrites nginx makes to a model's requests so that ordinary clients are not refused:
a `max_tokens` over the context is dropped (`max_tokens`), tool parameters are removed for a model
without tool calling (`strip_tools`), system and repeated turns are folded for templates that demand
strict alternation (`alternate_roles`), streams always report usage (`include_usage`), and
`reasoning_effort` switches a Qwen3 template's thinking (`thinking`). Each model lists its own,
declared where the original stack's request validator applied them; a response says what was changed
in its `X-Waker-Fixups` header. Details: [configuration.md](configuration.md#request-fix-ups).

## Fetching weights ahead

A model's first start needs its weights: tens of GB for the large ones. `waker pull ID...` fetches
them ahead, on the machine whose disk holds the cache, with the same library the engines use
(`huggingface_hub`), into the cache the model's engine reads (its **Weights** line; on the host through
the model's `volumes`, `data/huggingface` for vLLM), in that cache's layout, so that the engine then
starts offline. The catalogue's vLLM models also run with `--download-dir /models`, where vLLM looks
for its weights when it runs online: the pull lays the same files out there too, as hard links (no
second copy; on another filesystem it says so). It prints the size before it starts and checks the
disk can hold it (plus 1 GiB), shows a progress bar, fetches only the files the engine loads (the
safetensors its index names, not a repository's `.bin` copies or `original/` checkpoint; llama.cpp's
one GGUF of the `:quant` tag), and fetches nothing a second time: a pull cut short (even by `kill
-9`) starts again from the files that are not whole, and removes the partial ones left untouched for
10 minutes. Run it on the host (in a compose deployment too: the waker's container
does not mount `data/`), as a user who may write the cache. A gated repository needs a token (accept
its licence on the hub first): `[waker] hf_token` or `hf_token_file`, else `HF_TOKEN`; `HF_ENDPOINT`
names a mirror. Whether a model's weights are fetched ahead and from which repository is its
`weights` ([configuration.md](configuration.md#model)).

## Quick picker

{_picker(config)}

## Served ({len(config.models)})

{_table(config.models)}

## Disabled ({len(config.disabled)})

{_table(config.disabled)}

## Served models in detail

{served}

## Disabled models in detail

{disabled}
"""


if __name__ == "__main__":
    sys.stdout.write(render(load_config(sys.argv[1] if len(sys.argv) > 1 else None)))
