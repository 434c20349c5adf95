"""The CLI commands that talk to a running waker through its admin API.

Exit codes: 0 done; 1 the waker refused or failed (its message is printed); 2 bad usage or config;
3 the waker could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

from waker.config.schema import load_config, overrides_or_env
from waker.errors import ConfigError

EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


class ClientError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def add_commands(sub: argparse._SubParsersAction) -> None:
    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text)
        parser.add_argument("--url", help="waker address (default: $WAKER_URL, else [waker] listen of the config)")
        parser.add_argument("--token", help="admin token (default: $WAKER_ADMIN_TOKEN, else the config's)")
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        parser.set_defaults(remote=True)
        return parser

    command("status", "show every model: state, requests, uptime, idle time")
    for name, help_text in (
        ("start", "start a model and wait until it is ready"),
        ("stop", "stop a model"),
        ("sleep", "put an idle model in sleep mode now (its config needs sleep = 1 or 2)"),
        ("wake", "wake a sleeping model (as start: a stopped one is started)"),
        ("pin", "never idle-stop or evict a model"),
        ("unpin", "let a model be idle-stopped and evicted again"),
    ):
        parser = command(name, help_text)
        parser.add_argument("model")
        if name in ("start", "stop", "sleep", "wake"):
            parser.add_argument("--no-wait", action="store_true", help="return at once")
        if name == "stop":
            parser.add_argument("--force", action="store_true", help="even if requests are in flight")
    command("unload", "stop every model that is not pinned").add_argument(
        "--force", action="store_true", help="even models with requests in flight"
    )
    logs = command("logs", "print a model's container logs")
    logs.add_argument("model")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("--tail", type=int, default=100, help="lines from the end (default 100)")
    command("events", "print what happens, as it happens")
    command("reload", "re-read the config file; a broken one is refused and the running one stays")
    command("prepare", "check images and create containers without starting them").add_argument(
        "models", nargs="*", help="model ids (default: all)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        client = Client(*_target(args))
        return COMMANDS[args.command](client, args)
    except ClientError as exc:
        print(f"waker {args.command}: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


def _target(args: argparse.Namespace) -> tuple[str, str]:
    url, token = args.url or os.environ.get("WAKER_URL"), args.token or os.environ.get("WAKER_ADMIN_TOKEN")
    if url and token is not None:
        return url, token
    try:
        config = load_config(args.config, overrides_or_env(args.overrides))
    except ConfigError as exc:
        if url:
            return url, token or ""
        raise ClientError(
            EXIT_USAGE, "no --url or $WAKER_URL, and the config cannot be read: " + "; ".join(exc.problems)
        ) from None
    return url or config.waker.listen.reachable().url, token if token is not None else config.waker.admin_token


class Client:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url.rstrip("/"), token

    def call(self, method: str, path: str, body: Any = None, timeout: float | None = 3600) -> Any:
        with self._open(method, path, body, timeout) as response:
            return self._json(response.read() or b"null")

    def stream(self, path: str, opened: Callable[[], None] = lambda: None) -> Iterator[tuple[str, dict[str, Any]]]:
        """Server-sent events from `path`, as (event type, data) pairs; `opened` is called once the
        stream is open (the waker sends nothing before an event or its heartbeat)."""
        with self._open("GET", path, None, None) as response:
            if response.headers.get_content_type() != "text/event-stream":
                raise self._not_the_waker("not an event stream")
            opened()
            kind = "message"
            for raw in response:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    yield kind, self._json(line[6:])
                    kind = "message"

    def _json(self, text: str | bytes) -> Any:
        try:
            return json.loads(text)
        except ValueError:
            raise self._not_the_waker("not JSON") from None

    def _not_the_waker(self, answer: str) -> ClientError:
        """The waker answers JSON or an event stream; anything else comes from another server at --url
        (a web UI answers its page for any path, with 200)."""
        return ClientError(
            EXIT_UNREACHABLE,
            f"what answers at {self.url} is not the waker (its answer is {answer}); is --url right ([waker] listen)?",
        )

    def _open(self, method: str, path: str, body: Any, timeout: float | None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {exc.code} {exc.reason}"
            raise ClientError(EXIT_REFUSED, message) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(
                EXIT_UNREACHABLE,
                f"cannot reach the waker at {self.url} ({reason}); is `waker run` running, and is --url right?",
            ) from None


def _quoted(model: str) -> str:
    return urllib.parse.quote(model, safe="")


def _memory(memory: dict[str, Any]) -> str:
    """What the container holds now / the footprint admission counts (learned, else declared); `!`
    when what it took exceeds what it declares."""
    held = memory.get("current_bytes")
    footprint = memory.get("learned_bytes") or memory.get("declared_bytes")
    text = "/".join(f"{size / 2**30:.1f}G" if size is not None else "-" for size in (held, footprint))
    return "-" if held is None and footprint is None else text + ("!" if memory.get("exceeds_declared") else "")


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    value = int(value)
    return (
        f"{value // 3600}h{value % 3600 // 60:02d}m"
        if value >= 3600
        else (f"{value // 60}m{value % 60:02d}s" if value >= 60 else f"{value}s")
    )


def _print(args: argparse.Namespace, data: Any, human: str) -> int:
    print(json.dumps(data, indent=2) if args.json else human)
    return 0


def status(client: Client, args: argparse.Namespace) -> int:
    data = client.call("GET", "/admin/models")
    several = len(data.get("hosts", ())) > 1
    rows = [
        (
            "MODEL",
            "STATE",
            *(("HOST",) if several else ()),
            "IN-FLIGHT",
            "QUEUED",
            "UPTIME",
            "IDLE",
            "GPU",
            "MEMORY",
            "FLAGS",
            "LAST ERROR",
        )
    ]
    for m in data["models"]:
        flags = ",".join(f for f in ("exclusive", "keep_warm", "pinned") if m[f]) or "-"
        state = m["state"]
        if m.get("loading"):
            state += f" {_seconds(m['loading']['elapsed_seconds'])}/{_seconds(m['loading']['expected_seconds'])}"
            if m["loading"].get("pull"):
                state += f" ({m['loading']['pull']['text']})"
        error = (m["last_error"] or "-").splitlines()[0][:60]
        where = ("+".join(m["hosts"]) or "-",) if several else ()
        rows.append(
            (
                m["id"],
                state,
                *where,
                str(m["in_flight"]),
                str(m["queued"]),
                _seconds(m["uptime_seconds"]),
                _seconds(m["idle_seconds"]),
                f"{m['gpu_memory']:g}",
                _memory(m["memory"]),
                flags,
                error,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
    # The line a waiting stream and the dashboard show, for each model queued or loading.
    progress = "".join(f"\n{m['id']}: {m['progress']['text']}" for m in data["models"] if m.get("progress"))
    footer = f"{progress}\nqueue: {data['queue_length']}   docker: {data['docker']}"
    for host in data["hosts"]:
        if memory := host.get("memory"):
            footer += (
                f"\nmemory{'' if not several else ' on ' + host['name']}: {memory['available_bytes'] / 2**30:.1f} GiB "
                f"available of {memory['total_bytes'] / 2**30:.1f}, floor {memory['floor_bytes'] / 2**30:.1f}"
            )
        elif host.get("memory_error"):
            footer += f"\nmemory{'' if not several else ' on ' + host['name']}: not measured: {host['memory_error']}"
    for host in data["hosts"] if several else ():
        state = "connected" if host["connected"] else f"DOWN: {host['error']}"
        footer += (
            f"\nhost {host['name']}: GPU {host['gpu_used']:g} of {host['gpu_capacity']:g} "
            f"({', '.join(host['models']) or 'nothing'}), {state}"
        )
    return _print(args, data, table + footer)


def act(client: Client, args: argparse.Namespace) -> int:
    query = []
    if getattr(args, "no_wait", False):
        query.append("wait=false")
    if getattr(args, "force", False):
        query.append("force=true")
    action = "start" if args.command == "wake" else args.command  # a start wakes a sleeping model
    path = f"/admin/models/{_quoted(args.model)}/{action}" + ("?" + "&".join(query) if query else "")
    data = client.call("POST", path)
    what = data.get("outcome") or data["state"]
    return _print(args, data, f"{data['id']}: {what}" + (f" (now {data['state']})" if "outcome" in data else ""))


def unload(client: Client, args: argparse.Namespace) -> int:
    data = client.call("POST", "/admin/unload" + ("?force=true" if args.force else ""))
    lines = [f"{model}: {what}" for model, what in data["models"].items()] or ["nothing to unload"]
    return _print(args, data, "\n".join(lines))


def logs(client: Client, args: argparse.Namespace) -> int:
    path = f"/admin/models/{_quoted(args.model)}/logs?tail={args.tail}"
    if not args.follow:
        data = client.call("GET", path)
        return _print(args, data, "\n".join(data["lines"]))
    for _, data in client.stream(path + "&follow=1"):
        print(json.dumps(data) if args.json else data["line"], flush=True)
    return 0


def events(client: Client, args: argparse.Namespace) -> int:
    def following() -> None:  # from here on nothing published is missed: say so (on stderr, not in the events)
        print(f"following the events of the waker at {client.url}; Ctrl-C ends", file=sys.stderr, flush=True)

    for kind, data in client.stream("/admin/events", following):
        if args.json:
            print(json.dumps(data), flush=True)
        else:
            details = " ".join(f"{k}={v}" for k, v in data.items() if k not in ("type", "time"))
            print(f"{kind} {details}", flush=True)
    # The waker never ends this stream while it runs: an end is the waker going away, not success.
    raise ClientError(EXIT_UNREACHABLE, f"the waker at {client.url} ended the event stream; did it stop or restart?")


def reload(client: Client, args: argparse.Namespace) -> int:
    data = client.call("POST", "/admin/reload")
    summary = ", ".join(f"{k}: {', '.join(v)}" for k, v in data.items() if isinstance(v, list) and v)
    return _print(args, data, "reloaded" + (f" ({summary})" if summary else ", nothing changed"))


def prepare(client: Client, args: argparse.Namespace) -> int:
    data = client.call("POST", "/admin/prepare", {"models": args.models})
    lines = [
        f"{model}: " + ", ".join(f"{k} {v}" if k != "error" else f"ERROR {v}" for k, v in report.items())
        for model, report in data["models"].items()
    ]
    _print(args, data, "\n".join(lines))
    return 0 if data["ok"] else EXIT_REFUSED


COMMANDS = {
    "status": status,
    "start": act,
    "stop": act,
    "sleep": act,
    "wake": act,
    "pin": act,
    "unpin": act,
    "unload": unload,
    "logs": logs,
    "events": events,
    "reload": reload,
    "prepare": prepare,
}
