"""The containers the socket proxy lets the waker create: exactly those the config gives its models.

A filter over what the waker sends can be got wrong (Docker's JSON decoder matches keys whatever
their case and keeps the last of two; a new HostConfig field is one more hole). So the proxy does not
filter: it reads the same config as the waker, computes the container the config gives the model the
request names, and sends Docker that container, serialised by the proxy itself. A request that asks
for anything else, by a single byte, is refused. What a waker can create is thus what the operator
wrote in models.toml, and nothing it sends can shape a container.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlencode

from waker.config.schema import Config, ModelConfig
from waker.docker.spec import LABEL_MODEL, LABEL_RAY_NODE, container_name, container_spec, placed
from waker.errors import ProxyRefused


def strict_json(body: bytes, what: str) -> Any:
    """The body as JSON, read strictly: UTF-8, no repeated key in any object, no NaN or Infinity."""

    def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ProxyRefused(f"{what}: a key appears twice in one object")
        return dict(pairs)

    def no_constant(name: str) -> Any:
        raise ProxyRefused(f"{what}: {name} is not JSON")

    try:
        return json.loads(body.decode("utf-8"), object_pairs_hook=no_repeats, parse_constant=no_constant)
    except (UnicodeDecodeError, ValueError):
        raise ProxyRefused(f"{what}: the body is not JSON") from None


def allowed_specs(config: Config, model: ModelConfig) -> list[dict[str, Any]]:
    """The create bodies the config allows for the model: its container as the waker places it on each
    host the config names (the address only changes where the port is published)."""
    waker = config.waker
    addresses = dict.fromkeys(["127.0.0.1", *(host.address for host in config.placement_hosts)])
    return [
        container_spec(placed(model, waker.network, address), waker.name, waker.network, waker.egress_network)
        for address in addresses
    ]


def checked_create(config: Config, query: str, body: bytes) -> tuple[str, bytes]:
    """(query, body) to send Docker for a container-create call the config allows; ProxyRefused otherwise."""
    spec = strict_json(body, "container create")
    labels = spec.get("Labels") if isinstance(spec, dict) else None
    if not isinstance(labels, dict) or not isinstance(labels.get(LABEL_MODEL), str):
        raise ProxyRefused(f"container create: only a model's container may be created (label {LABEL_MODEL})")
    model_id = labels[LABEL_MODEL]
    if LABEL_RAY_NODE in labels:
        raise ProxyRefused("container create: a model over two hosts (Ray) does not run through the socket proxy")
    model = config.model(model_id)
    if model is None:
        raise ProxyRefused(f"container create: {config.path} has no model {model_id!r}")
    name = container_name(config.waker.name, model.id)
    if parse_qsl(query, keep_blank_values=True) != [("name", name)]:
        raise ProxyRefused(f"container create: model {model.id!r}'s container is named {name!r}, and nothing else")
    allowed = allowed_specs(config, model)
    if spec not in allowed:
        raise ProxyRefused(
            f"container create: not the container {config.path} gives model {model.id!r} "
            f"({difference(spec, allowed[0])}); if the config changed, run `waker reload`"
        )
    # The proxy's own copy goes to Docker: Python's == takes 1 for true and 1.0 for 1, Docker would not.
    checked = allowed[allowed.index(spec)]
    return urlencode({"name": name}), json.dumps(checked, separators=(",", ":")).encode()


def difference(given: Any, expected: Any, path: str = "") -> str:
    """Where `given` first differs from `expected`, as a path of keys."""
    if isinstance(given, dict) and isinstance(expected, dict):
        for key in sorted(set(given) | set(expected)):
            where = f"{path}.{key}" if path else key
            if key not in expected:
                return f"{where} is not in it"
            if key not in given:
                return f"{where} is missing"
            if given[key] != expected[key]:
                return difference(given[key], expected[key], where)
    return f"{path or 'the body'} differs"
