"""Renders docs/models.md from the catalogue, so the two cannot drift apart:
    python -m waker.model_docs [config/models.toml] > docs/models.md   (scripts/gen-models-doc)
"""

from __future__ import annotations

import sys

from waker.config import Config, ModelConfig, load_config


def _hf_path(model: ModelConfig) -> str:
    """The model a vLLM command serves: the argument after `serve`."""
    args = list(model.command)
    path = args[args.index("serve") + 1] if "serve" in args[:-1] else ""
    return f"`{path}`" if path and path != "UNCONFIRMED" else "unconfirmed"


def _row(model: ModelConfig) -> str:
    flags = [f for f, on in (("tools", model.tools), ("vision", model.vision), ("exclusive", model.exclusive),
                             ("keep warm", model.keep_warm)) if on]
    context = f"{model.context_length:,}" if model.context_length else ""
    cells = [f"`{model.id}`", model.status, _hf_path(model), f"`{model.image}`", f"{model.gpu_memory:g}", context,
             ", ".join(flags), model.notes]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def render(config: Config) -> str:
    header = ("| id | status | Hugging Face model | image | gpu_memory | context | features | notes |\n"
              "|---|---|---|---|---|---|---|---|")
    served = "\n".join(_row(m) for m in config.models)
    disabled = "\n".join(_row(m) for m in config.disabled)
    return f"""# Models

Generated from `config/models.toml` by `scripts/gen-models-doc`; do not edit by hand (a test checks
that the two agree). Send requests with `"model": "<id>"` (or an alias), or to `/v1/<id>/...`.

- **validated**: served and known to work on the DGX Spark in the original stack's experience;
- **experimental**: served, with the caveats in its notes;
- **disabled**: declared for the record, not served (a request names the reason); change `status`
  once the problem is solved.

`gpu_memory` is the fraction of the GPU the model takes (vLLM's `--gpu-memory-utilization`): models
run together while the sum fits, so one main model runs beside the utility model, and two main models
together only where they add up to at most 1.0 (about 0.94 was measured to fit).

## Served ({len(config.models)})

{header}
{served}

## Disabled ({len(config.disabled)})

{header}
{disabled}
"""


if __name__ == "__main__":
    sys.stdout.write(render(load_config(sys.argv[1] if len(sys.argv) > 1 else None)))
