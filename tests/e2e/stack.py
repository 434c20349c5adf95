"""A real stack for end-to-end tests: `waker run` (nginx + waker) as a child process, a real Docker
engine, and the fake vLLM image. Each stack has its own name, ports and runtime dir, and removes its
containers when it stops."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.eventually import eventually

# A branch that changes the fake can build it under its own tag (WAKER_FAKE_IMAGE), so that test runs
# of other branches on the same Docker engine keep theirs.
FAKE_IMAGE = os.environ.get("WAKER_FAKE_IMAGE", "waker-fake-vllm:test")
REAL_IMAGE = "waker-real-vllm:test"  # the real vLLM, CPU build (tests/real_vllm/)
# What the real engine needs on these machines (shared/real-vllm.md): a KV cache size, and more shared
# memory than Docker's default 64 MiB. Starts take 20-40 s on two cores, more under load.
REAL_SCHEDULER = {"start_timeout": "300s", "stop_timeout": "30s", "min_uptime": "0s"}
# The tiny model's context (tests/real_vllm/make_tiny_llama.py POSITIONS): a stream that fills it runs
# for minutes here (130-400 tokens/s), so a test that needs work in flight holds one open, whatever
# the machine's load, and ends it by closing its client (vLLM then aborts the request).
LONG_CONTEXT = 32768
REPO = Path(__file__).resolve().parents[2]


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port_range(count: int) -> int:
    """A base port such that base .. base+count-1 are free now. Ports come from below the kernel's
    ephemeral range, so that a client's outgoing connection cannot take one while its server is
    down (a restarted waker must get its port back)."""
    low, _ = _ephemeral_range()
    for _ in range(500):
        base = random.randrange(10000, max(10001, low - count))
        if all(_bindable(port) for port in range(base, base + count)):
            return base
    raise RuntimeError("no free port range")


def free_port() -> int:
    return free_port_range(1)


def docker(*args: str, check: bool = True) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def start_socket_proxy(sock: Path, config: Path, **popen) -> subprocess.Popen:
    """`waker socket-proxy` listening on `sock` (its socket made) in front of the host's Docker, creating
    the containers `config` gives its models (a file the proxy reads when a create comes: it may be
    written after the proxy starts, as a stack's is)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "waker.cli.main", "socket-proxy", "--listen", str(sock), "--config", str(config)],
        cwd=REPO,
        **popen,
    )
    eventually(sock.exists, 10, f"the socket proxy's {sock}", lambda: f"(exit code {process.poll()})")
    return process


def fake_model(model_id: str, *, load_delay: float = 0.5, extra: list[str] | None = None, **keys) -> dict:
    """A [[model]] table running the fake vLLM server."""
    command = [
        "serve",
        f"fake/{model_id}",
        "--port",
        "8000",
        "--served-model-name",
        model_id,
        "--load-delay",
        str(load_delay),
        *(extra or []),
    ]
    return {"id": model_id, "image": FAKE_IMAGE, "command": command, **keys}


def real_model(
    model_id: str,
    *,
    weights: str = "/models/tiny-llama",
    max_model_len: int = 1024,
    extra: list[str] | None = None,
    kv_cache_gib: int | None = 1,
    **keys,
) -> dict:
    """A [[model]] table running the real vLLM on the CPU with a tiny local model. Without a KV-cache
    size (kv_cache_gib=None) vLLM exits at start, as it does on these machines."""
    command = [
        weights,
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--served-model-name",
        model_id,
        "--max-model-len",
        str(max_model_len),
        "--enforce-eager",
        *(extra or []),
    ]
    env = {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib)} if kv_cache_gib is not None else {}
    return {
        "id": model_id,
        "image": REAL_IMAGE,
        "command": command,
        "shm_size": "1g",
        "env": env,
        "context_length": max_model_len,
        **keys,
    }


def toml_value(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


@dataclass
class Stack:
    models: list[dict]
    tmp: Path
    scheduler: dict = field(default_factory=lambda: {"start_timeout": "60s", "stop_timeout": "2s"})
    docker_host: str = ""
    waker: dict = field(default_factory=dict)  # extra [waker] keys
    gateway: dict = field(default_factory=dict)  # extra [gateway] keys
    env: dict = field(default_factory=dict)  # extra environment for `waker run`
    hosts: list[dict] = field(default_factory=list)  # [[host]] entries
    externals: list[dict] = field(default_factory=list)  # [[external]] entries
    name: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        base = free_port_range(2 + len(self.models) + 20)  # room for models added by a reload
        self.gateway_port, self.waker_port, self.model_port_base = base, base + 1, base + 2
        # nginx workers run as nobody when the tests run as root: the runtime dir must be reachable.
        self.runtime_dir = Path("/tmp") / f"waker-test-{self.name}"
        self.config_path = self.tmp / "models.toml"
        self.log_path = self.tmp / "waker.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def waker_url(self) -> str:
        return f"http://127.0.0.1:{self.waker_port}"

    def model_url(self, model_id: str) -> str:
        """The model server itself, on its published port, bypassing nginx and the waker."""
        index = next(i for i, m in enumerate(self.models) if m["id"] == model_id)
        return f"http://127.0.0.1:{self.models[index].get('host_port', self.model_port_base + index)}"

    def write_config(self) -> Path:
        lines = [
            "[gateway]",
            f'listen = "127.0.0.1:{self.gateway_port}"',
            *(f"{k} = {toml_value(v)}" for k, v in self.gateway.items()),
            "[waker]",
            f'listen = "127.0.0.1:{self.waker_port}"',
            f'name = "{self.name}"',
            f'runtime_dir = "{self.runtime_dir}"',
            f'state_dir = "{self.tmp / "state"}"',
            f"model_port_base = {self.model_port_base}",
            *([f'docker_host = "{self.docker_host}"'] if self.docker_host else []),
            *(f"{k} = {toml_value(v)}" for k, v in self.waker.items()),
            "[scheduler]",
            *(f"{k} = {toml_value(v)}" for k, v in self.scheduler.items()),
        ]
        for host in self.hosts:
            lines.append("[[host]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in host.items()]
        for external in self.externals:
            lines.append("[[external]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in external.items()]
        for model in self.models:
            lines.append("[[model]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in model.items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        return self.config_path

    def start(self) -> Stack:
        self.write_config()
        self.started_at = getattr(self, "started_at", time.time())
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "waker.cli.main", "run", "--config", str(self.config_path)],
            stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )

        def up(proc: subprocess.Popen = self.proc) -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"waker run exited with {proc.returncode}:\n{self.log()}")
            return self._answers("/healthz") and ("nginx_started" in self.log() or "nginx_adopted" in self.log())

        eventually(up, 20, "the stack coming up", self.log)
        return self

    def _answers(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.url + path, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def restart_waker(self) -> None:
        """Stops `waker run` and starts it again on the current config; containers stay as they are."""
        self._terminate()
        self.start()

    def _terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        self._terminate()
        ids = docker("ps", "-aq", "--filter", f"label=io.waker.stack={self.name}").split()
        if ids:
            docker("rm", "-f", *ids)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Runs the `waker` command against this stack, finding it through the config file."""
        return subprocess.run(
            [sys.executable, "-m", "waker.cli.main", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def containers(self) -> list[str]:
        return docker("ps", "-aq", "--filter", f"label=io.waker.stack={self.name}").split()

    def docker_events(self, event: str) -> list[dict]:
        """Docker's own record of container `event`s (create, start, ...) for this stack so far."""
        out = docker(
            "events",
            "--since",
            f"{self.started_at - 1:.3f}",
            "--until",
            f"{time.time():.3f}",
            "--filter",
            "type=container",
            "--filter",
            f"event={event}",
            "--filter",
            f"label=io.waker.stack={self.name}",
            "--format",
            "{{json .}}",
        )
        return [json.loads(line) for line in out.splitlines() if line.strip()]
