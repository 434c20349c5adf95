"""A stand-in for nginx as its parent process sees it (waker/nginx/process.py): the test copies this
file, a shebang first, to an executable named `nginx` and names it in [gateway] nginx.

    nginx -p PREFIX -c CONF -e ERROR_LOG [-t]

With -t it checks the config: accepted with nginx's two lines on stderr, or, when a file `refuse`
lies beside it, refused with exit code 1 and that file's text as the [emerg] line.

Without, it is the master in the foreground: it binds the config's first `listen` (a failure is
logged in ERROR_LOG, exit code 1), writes its `pid` file, and forks two workers, which answer
/_waker/generation with the generation in the config they were forked with. SIGHUP: new workers for
the config as it is now, SIGQUIT to the old ones, which close their listening socket, become "worker
process is shutting down" and exit. SIGQUIT: the workers quit, the master removes its pid file and
exits 0. Like nginx, each process retitles itself ("nginx: master process", "nginx: worker
process"...) by writing over its argv, which is what /proc/PID/cmdline shows.

Files beside it make it misbehave, each read when the signal comes:
- `hold`: an old worker stops accepting but keeps its title until it gets SIGUSR2;
- `linger`: a shutting-down worker stays (a long request in progress) until it gets SIGUSR2;
- `stuck`: the master ignores SIGQUIT.

What it was run with and did goes to `log` beside it, one JSON object a line. Unlike nginx, the master
dies with the process that started it, and the workers with the master: no test run leaves one behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import select
import signal
import socket
import sys
from pathlib import Path
from typing import Any, NoReturn

HERE = Path(__file__).resolve().parent
MASTER = "nginx: master process"
WORKER = "nginx: worker process"
SHUTTING_DOWN = "nginx: worker process is shutting down"
WORKERS = 2
MASTER_SIGNALS = {signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD}
PR_SET_PDEATHSIG = 1


def record(event: str, **fields: Any) -> None:
    with open(HERE / "log", "a", encoding="utf-8") as log:  # one write per line: lines of processes don't mix
        log.write(json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n")


def options(args: list[str]) -> dict[str, str]:
    found, rest = {}, iter(args)
    for arg in rest:
        found[arg] = "" if arg == "-t" else next(rest)
    return found


def directive(conf: str, name: str) -> str:
    match = re.search(rf"^\s*{name}\s+([^;\s]+)[^;]*;", conf, re.MULTILINE)
    if match is None:
        raise SystemExit(f'nginx: [emerg] no "{name}" directive')
    return match.group(1)


def generation(conf: str) -> str:
    match = re.search(r"location = /_waker/generation \{[^}]*return 200 '([^']*)'", conf)
    return match.group(1) if match else ""


def test(args: list[str]) -> NoReturn:
    conf = options(args)["-c"]
    record("test", argv=args)
    refuse = HERE / "refuse"
    if refuse.exists():
        print(f"nginx: [emerg] {refuse.read_text().strip()}", file=sys.stderr)
        print(f"nginx: configuration file {conf} test failed", file=sys.stderr)
        sys.exit(1)
    print(f"nginx: the configuration file {conf} syntax is ok", file=sys.stderr)
    print(f"nginx: configuration file {conf} test is successful", file=sys.stderr)
    sys.exit(0)


def bind(address: str, error_log: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    listener = socket.socket(socket.AF_INET6 if host.startswith("[") else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nginx does
    try:
        listener.bind((host.strip("[]"), int(port)))
    except OSError as exc:
        message = f"bind() to {address} failed ({exc.errno}: {exc.strerror})"
        with open(error_log, "a", encoding="utf-8") as log:
            log.write(f"[emerg] {os.getpid()}#0: {message}\n")
        print(f"nginx: [emerg] {message}", file=sys.stderr)
        sys.exit(1)
    listener.listen(128)
    listener.setblocking(False)  # the workers share it: one that loses the race for a connection goes on
    return listener


def retitle(title: str) -> None:
    """What nginx's setproctitle does: the new title over the argv area (arg_start to arg_end in stat)."""
    with open("/proc/self/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])
    raw = title.encode()[: end - start - 1]
    with open("/proc/self/mem", "r+b", buffering=0) as memory:
        memory.seek(start)
        memory.write(raw + b"\0" * (end - start - len(raw)))


def die_with_parent(parent: int) -> None:
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the prctl
        os._exit(1)


def spawn(listener: socket.socket, conf: str) -> list[int]:
    pids, master = [], os.getpid()  # not the child's getppid(): the master may be gone by then
    for _ in range(WORKERS):
        pid = os.fork()
        if pid == 0:
            worker(listener, generation(conf), master)
        pids.append(pid)
    return pids


def master(args: list[str]) -> NoReturn:
    given = options(args)
    # Blocked before any worker starts: workers inherit the mask, and no signal is lost to a default action.
    signal.pthread_sigmask(signal.SIG_BLOCK, {*MASTER_SIGNALS, signal.SIGUSR2})
    conf_path, prefix = Path(given["-c"]), Path(given["-p"])
    conf = conf_path.read_text()
    die_with_parent(os.getppid())
    retitle(" ".join([MASTER, sys.argv[0], *args]))
    listener = bind(directive(conf, "listen"), given["-e"])
    pid_file = prefix / directive(conf, "pid")
    pid_file.write_text(f"{os.getpid()}\n")
    record("start", argv=args)
    workers = spawn(listener, conf)
    while True:
        received = signal.sigwait(MASTER_SIGNALS)
        if received == signal.SIGCHLD:
            reap()
        elif received == signal.SIGHUP:
            conf = conf_path.read_text()
            old, workers = workers, spawn(listener, conf)
            signal_all(old, signal.SIGQUIT)
            record("reload", generation=generation(conf))
        elif (HERE / "stuck").exists():
            record("ignored", signal="SIGQUIT")
        else:
            signal_all(workers, signal.SIGQUIT)
            while True:
                try:
                    os.waitpid(-1, 0)
                except ChildProcessError:
                    break
            pid_file.unlink()
            record("quit")
            sys.exit(0)


def reap() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def signal_all(pids: list[int], number: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, number)


def answer(connection: socket.socket, generation: str) -> None:
    connection.settimeout(5)
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = connection.recv(65536)
        if not chunk:
            return  # a connect-and-close: the waker checking that the port is open
        request += chunk
    path = request.split(b" ", 2)[1]
    status, body = ("200 OK", generation) if path == b"/_waker/generation" else ("404 Not Found", "not found")
    connection.sendall(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}".encode())


def worker(listener: socket.socket, generation: str, master_pid: int) -> NoReturn:
    """A forked worker: it never returns into the master's code."""
    retitle(WORKER)
    die_with_parent(master_pid)
    wake_up, wake_up_writer = os.pipe()
    os.set_blocking(wake_up_writer, False)
    signal.signal(signal.SIGQUIT, lambda *_: None)
    signal.set_wakeup_fd(wake_up_writer)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGQUIT})  # SIGUSR2 stays blocked, for sigwait
    record("worker", generation=generation)
    while True:
        readable, _, _ = select.select([listener, wake_up], [], [])
        if wake_up in readable:
            break
        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            continue  # another worker took it
        with connection, contextlib.suppress(OSError):
            answer(connection, generation)
    listener.close()
    if (HERE / "hold").exists():
        signal.sigwait({signal.SIGUSR2})
    retitle(SHUTTING_DOWN)
    if (HERE / "linger").exists():
        signal.sigwait({signal.SIGUSR2})
    record("exit")
    os._exit(0)


def main() -> NoReturn:
    args = sys.argv[1:]
    if "-t" in args:
        test(args)
    master(args)


if __name__ == "__main__":
    main()
