"""`waker pull ID...`: a model's weights fetched ahead of its first start, into the cache its engine
reads, with a progress bar (tqdm, which huggingface_hub brings). Runs on the machine whose disk holds
the cache (the host deployment's, or the models' host); the hub and the token are huggingface_hub's
own settings (`HF_ENDPOINT`, `HF_TOKEN`), the token `[waker] hf_token` (or `hf_token_file`) when set."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from waker.config.schema import Config, ModelConfig
from waker.core.memory import gib
from waker.errors import WeightsError


def add_command(sub: Any) -> None:
    pull = sub.add_parser("pull", help="fetch models' weights ahead of their first start")
    pull.add_argument("models", nargs="*", metavar="ID", help="the models (ids or aliases)")
    pull.add_argument("--all", action="store_true", help="every model served (tens or hundreds of GB)")


def run(config: Config, args: argparse.Namespace) -> int:
    if not args.models and not args.all:
        print("waker pull: name the models to fetch (waker pull ID...), or --all", file=sys.stderr)
        return 2
    unknown = [name for name in args.models if _model(config, name) is None]
    if unknown:
        known = ", ".join(m.id for m in config.models)
        print(
            f"waker pull: no model {', '.join(map(repr, unknown))} in the config; the models: {known}", file=sys.stderr
        )
        return 2
    models = list(config.models) if args.all else [m for name in args.models if (m := _model(config, name))]
    failed = 0
    for model in dict.fromkeys(models):
        try:
            _pull(model, config.waker.hf_token or None)
        except WeightsError as exc:
            print(f"waker pull: {model.id}: {exc.message}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _model(config: Config, name: str) -> ModelConfig | None:
    return next((m for m in config.models if name in m.names), None)


def _pull(model: ModelConfig, token: str | None) -> None:
    from huggingface_hub.utils import tqdm

    from waker.hub.fetch import Hub

    weights = model.weights
    if weights is None:
        print(f"{model.id}: no weights to fetch (its command names no repository, or weights = false)")
        return
    if not weights.host_cache:
        print(f"{model.id}: its engine reads {weights.cache}, which is in no volume: it fetches its own weights")
        return
    hub = Hub(os.environ.get("HF_ENDPOINT"), token)  # the endpoint read now, not at huggingface_hub's import
    plan = hub.plan(weights)
    if plan.reclaimed:
        print(f"{model.id}: removed {gib(plan.reclaimed)} of partial files an earlier pull left")
    print(
        f"{model.id}: {weights.repo} at {weights.branch} ({plan.commit[:12]}): {len(plan.files)} file(s), "
        f"{gib(plan.bytes_total)}; {gib(plan.bytes_to_fetch)} to fetch into {weights.host_cache}"
    )
    with tqdm(total=plan.bytes_to_fetch, unit="B", unit_scale=True, unit_divisor=1024, desc=model.id) as bar:
        snapshot = hub.fetch(plan, bar.update)
    print(f"{model.id}: complete in {snapshot}")
    if weights.download_dir_host and weights.download_dir_host != weights.host_cache:
        unlinked = hub.link_download_dir(plan)
        if unlinked is None:
            print(f"{model.id}: linked into {weights.download_dir_host} too (vLLM's --download-dir)")
        else:
            print(
                f"{model.id}: {unlinked}; vLLM reads its weights there when it runs online: give it "
                'HF_HUB_OFFLINE = "1" in its env, or let the files be linked there'
            )
