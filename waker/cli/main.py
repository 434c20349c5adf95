"""`waker` command line: check, nginx-config, serve, run, gateway, and the admin commands (admin_client)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import asdict
from pathlib import Path

import tomli_w

from waker.cli import admin_client, logs, pull
from waker.config.hosts import HostConfig
from waker.config.schema import Config, ModelConfig, ModelStatus, load_config, overrides_or_env
from waker.config.units import format_duration, format_size
from waker.config.weights import derived as derived_weights
from waker.core.memory import exceeds_share, gib
from waker.errors import ConfigError
from waker.nginx.render import render
from waker.system.memory import FOOTPRINTS, ThisMachine

EXIT_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="waker", description="Control plane of the LLM inference gateway.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate the config and print one line per model")
    check.add_argument("--resolved", action="store_true", help="print the effective config (defaults applied) as TOML")
    sub.add_parser("nginx-config", help="print the rendered nginx config")
    serve_command = sub.add_parser("serve", help="run the control plane (nginx runs elsewhere)")
    serve_command.add_argument(
        "--nginx",
        choices=("none", "container"),
        default="none",
        help="none: leave nginx alone (default); container: render its config into the runtime dir "
        "and reload it in the gateway container whose network namespace this one shares "
        "(the compose deployment)",
    )
    sub.add_parser("run", help="run nginx and the control plane in the foreground")
    sub.add_parser(
        "gateway",
        help="render the nginx config, then become nginx in the foreground (the compose "
        "gateway; a `waker serve --nginx container` beside it reloads it)",
    )
    proxy = sub.add_parser("socket-proxy", help="serve a Docker socket that allows only the calls the waker makes")
    proxy.add_argument("--listen", type=Path, required=True, help="socket to create, for the waker's docker_host")
    proxy.add_argument("--docker", type=Path, default=Path("/var/run/docker.sock"), help="the real Docker socket")
    proxy.add_argument(
        "--owner", type=int, default=None, help="user id to own the socket (the waker's, when it runs as another user)"
    )
    admin_client.add_commands(sub)
    pull.add_command(sub)
    for command in sub.choices.values():
        command.add_argument(
            "--config", type=Path, default=None, help="config file (default: $WAKER_CONFIG or config/models.toml)"
        )
        command.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override one [gateway], [waker] or [scheduler] setting (repeatable; "
            "default: $WAKER_SET, overrides separated by spaces)",
        )
    args = parser.parse_args(argv)
    if getattr(args, "remote", False):
        return admin_client.run(args)
    if args.command == "socket-proxy":
        from waker.docker import socket_proxy

        logs.configure()
        latest = socket_proxy.LatestConfig(args.config, overrides_or_env(args.overrides))
        return asyncio.run(socket_proxy.run(args.listen, args.docker, latest, args.owner))

    try:
        config = load_config(args.config, overrides_or_env(args.overrides))
    except ConfigError as exc:
        print(f"waker: the config has {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG

    if args.command == "check":
        return _check(config, args.resolved)
    if args.command == "pull":
        return pull.run(config, args)
    if args.command == "nginx-config":
        sys.stdout.write(render(config, config.waker.runtime_dir).nginx_conf)
        return 0
    logs.configure()
    if args.command == "gateway":
        from waker.nginx.process import exec_nginx

        exec_nginx(config)
    from waker.cli.serve import serve

    try:
        return asyncio.run(serve(config, "child" if args.command == "run" else args.nginx))
    except KeyboardInterrupt:
        return 130


def _check(config: Config, resolved: bool) -> int:
    learned = _learned(config)
    if resolved:
        sys.stdout.write(tomli_w.dumps(resolved_config(config)))
        if learned:  # comments: the output stays a config file the waker reads
            sys.stdout.write(
                f"\n# Footprints learned at the models' starts ({config.waker.state_dir / FOOTPRINTS}); "
                "admission counts the larger of `memory` and this:\n"
            )
            sys.stdout.writelines(f"#   {model}: {note}\n" for model, note in learned.items())
        return 0
    disabled = f" ({len(config.disabled)} more disabled)" if config.disabled else ""
    print(
        f"{config.path}: {len(config.models)} model(s){disabled}, gateway on {config.gateway.listen}, "
        f"waker on {config.waker.listen}"
    )
    for m in config.models:
        aliases = f" (aliases: {', '.join(m.aliases)})" if m.aliases else ""
        gpu = f"gpu {m.gpu_memory:g}" if m.gpu_memory else "no gpu budget"
        gpu += "".join(f", {flag}" for flag in ("exclusive", "keep_warm") if getattr(m, flag))
        if m.sleep.enabled:
            gpu += f", sleeps at level {int(m.sleep.level)} holding {m.sleep.memory:g}"
        print(
            f"  {m.id}{aliases}: {m.image}, port {m.port} -> {m.address}, {gpu}, "
            f"start_timeout {format_duration(m.start_timeout)}, idle_timeout {format_duration(m.idle_timeout)}"
            + (", experimental" if m.status is ModelStatus.EXPERIMENTAL else "")
            + (f", {learned[m.id]}" if m.id in learned else "")
        )
    for m in config.disabled:
        print(f"  {m.id}: disabled ({m.notes})")
    return 0


def _guide_fields(m: ModelConfig) -> dict:
    """The catalogue-guide keys a model sets (unset ones stay out, as the file would leave them)."""
    entry: dict = {key: value for key, value in (("best_for", m.best_for), ("tradeoffs", m.tradeoffs)) if value}
    if m.known_issues:
        entry["known_issues"] = list(m.known_issues)
    if m.picks:
        entry["picks"] = list(m.picks)
    if m.source is not None:
        entry["source"] = {"repo": m.source.repo, "commit": m.source.commit, "file": m.source.file}
    return entry


def _learned(config: Config) -> dict[str, str]:
    """Each model's footprint the memory guard learned (kept in the state directory), in words,
    flagged when it exceeds what the model declares."""
    machine = ThisMachine(config.waker.state_dir)
    footprints = machine.learned()
    try:
        total: int | None = machine.read().total
    except (OSError, KeyError, ValueError):
        total = None
    notes = {}
    for m in config.models:
        if (took := footprints.get(m.id)) is not None:
            declared = f", declares {gib(m.memory)}" if m.memory else ""
            over = exceeds_share(took, m.memory, m.gpu_memory, total)
            notes[m.id] = f"learned {gib(took)}{declared}" + (": takes more than it declares" if over else "")
    return notes


def resolved_config(config: Config) -> dict:
    g, w, s = config.gateway, config.waker, config.scheduler
    models = []
    for m in sorted((*config.models, *config.disabled), key=lambda m: m.host_port):
        entry = {
            "id": m.id,
            "aliases": list(m.aliases),
            "image": m.image,
            "pull": m.pull.value,
            "command": list(m.command),
            "port": m.port,
            "health": m.health,
            "env": dict(m.env),
            "volumes": list(m.volumes),
            "gpus": m.gpus,
            "ulimits": dict(m.ulimits),
            "host_port": m.host_port,
            "vision": m.vision,
            "tools": m.tools,
            "description": m.description,
            "status": m.status,
            "notes": m.notes,
            "exclusive": m.exclusive,
            "keep_warm": m.keep_warm,
            "start_timeout": format_duration(m.start_timeout),
            "stop_timeout": format_duration(m.stop_timeout),
            "idle_timeout": format_duration(m.idle_timeout),
            "min_uptime": format_duration(m.min_uptime),
            "loading_feedback": m.loading_feedback.value,
        }
        if m.entrypoint is not None:
            entry["entrypoint"] = list(m.entrypoint)
        if m.shm_size:
            entry["shm_size"] = format_size(m.shm_size)
        if m.memory:
            entry["memory"] = format_size(m.memory)
        if m.gpu_memory:  # 0 means "no GPU budget", which the file expresses by leaving it out
            entry["gpu_memory"] = m.gpu_memory
        if m.context_length:
            entry["context_length"] = m.context_length
        if m.sleep.enabled:  # the other sleep keys are refused beside sleep = 0
            entry.update(
                sleep=int(m.sleep.level),
                sleep_memory=m.sleep.memory,
                sleep_timeout=format_duration(m.sleep.timeout),
                wake_timeout=format_duration(m.sleep.wake_timeout),
            )
        if m.fixups:
            entry["fixups"] = [f.value for f in m.fixups]
        if m.host:
            entry["host"] = m.host
        if m.hosts > 1:
            entry.update(hosts=m.hosts, ray_port=m.ray.port, worker_command=list(m.ray.worker_command))
        if m.weights is None and derived_weights(m.entrypoint, m.command) is not None:
            entry["weights"] = False  # the command names a repository, and the engine fetches it itself
        elif m.weights is not None and not m.weights.derived:
            given: dict[str, object] = {"repo": m.weights.repo}
            if m.weights.revision:
                given["revision"] = m.weights.revision
            if m.weights.include:
                given["include"] = list(m.weights.include)
            entry["weights"] = given
        entry.update(_guide_fields(m))
        models.append(entry)
    return {
        "gateway": {
            "listen": str(g.listen),
            "max_body": format_size(g.max_body),
            "client_timeout": format_duration(g.client_timeout),
            "allow_no_keys": g.allow_no_keys,
            "cors_origins": list(g.cors_origins),
            "client_model_control": g.client_model_control,
            "read_timeout": format_duration(g.read_timeout),
            "nginx": g.nginx,
            "njs_module": g.njs_module,
            "loading_feedback": g.loading_feedback.value,
        },
        "waker": {
            "listen": str(w.listen),
            **({} if config.hosts else {"docker_host": w.docker_host}),
            "name": w.name,
            "model_port_base": w.model_port_base,
            "runtime_dir": str(w.runtime_dir),
            "state_dir": str(w.state_dir),
            **({"network": w.network, "model_ip_base": w.model_ip_base} if w.network else {}),
            **({"egress_network": w.egress_network} if w.egress_network else {}),
        },
        "scheduler": {
            "start_timeout": format_duration(s.start_timeout),
            "stop_timeout": format_duration(s.stop_timeout),
            "idle_timeout": format_duration(s.idle_timeout),
            "min_uptime": format_duration(s.min_uptime),
            "gpu_capacity": s.gpu_capacity,
            "on_busy": s.on_busy,
            "queue_timeout": format_duration(s.queue_timeout),
            "max_start_failures": s.max_start_failures,
            "start_backoff": format_duration(s.start_backoff),
            "sleep_timeout": format_duration(s.sleep_timeout),
            "wake_timeout": format_duration(s.wake_timeout),
            "max_wake_failures": s.max_wake_failures,
            "memory_floor": format_size(s.memory_floor) if s.memory_floor else 0,
            "drop_page_cache": s.drop_page_cache,
        },
        **({"host": [_host_entry(h) for h in config.hosts]} if config.hosts else {}),
        "model": models,
    }


def _host_entry(h: HostConfig) -> dict:
    entry: dict = {
        "name": h.name,
        **({"docker_host": h.docker.url} if h.docker.url else {}),
        "address": h.address,
        "gpu_capacity": h.gpu_capacity,
        **(
            {"memory_floor": format_size(h.memory_floor) if h.memory_floor else 0} if h.memory_floor is not None else {}
        ),
        **({"memory_probe_image": h.memory_probe_image} if h.memory_probe_image else {}),
    }
    if h.docker.tls is not None:
        entry.update(tls_ca=str(h.docker.tls.ca), tls_cert=str(h.docker.tls.cert), tls_key=str(h.docker.tls.key))
    return {**entry, **{key: value for key, value in asdict(h.interconnect).items() if value}}


if __name__ == "__main__":
    sys.exit(main())
