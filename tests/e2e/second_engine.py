"""A second, real Docker engine on this machine, standing in for a second host.

Its own `dockerd` (and the containerd it starts), socket, data root, exec root, pidfile and bridge, in
the same network namespace as the main engine, so that host-network containers of both engines meet
on loopback (the Ray tests) and the host reaches both engines' published ports.

What keeps the two engines apart:
- Bridge: dockerd creates only `docker0`, already the main engine's; engine 2 gets a bridge of its own,
  made here with its own subnet (`--bridge`, which dockerd refuses beside `--bip`).
- iptables: both engines would own the same DOCKER chains in one namespace, and engine 2 starting or
  stopping would rewrite the main engine's rules. Engine 2 runs with `--iptables=false --ip-masq=false`:
  published ports still work (docker-proxy listens on the host), containers get no NAT to the outside,
  which no test needs.
- cgroups: containers go under their own parent, `waker-engine2`.

It also listens on a loopback TCP port with TLS (`--tlsverify`, certificates made here by openssl, as in
Docker's "Protect the Docker daemon socket"), for the tests of `tcp://` Docker hosts.

The state directory is kept between runs, so that images loaded once stay loaded (compared by image id,
loaded again only when the main engine's copy changed); containers are not kept: every start removes
what an earlier run left. A lock file keeps two test sessions from driving the same engine at once.

Cost, measured on these machines (2 cores): dockerd up in 1.2 s, down in 1 s; copying the fake image
(166 MB) 5.5 s and the Ray image (532 MB) 8 s, only when they changed.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.e2e.stack import free_port
from tests.eventually import eventually

DEFAULT_ROOT = Path(os.environ.get("WAKER_ENGINE2_ROOT", "/var/tmp/waker-engine2"))
BRIDGE = "wkr2br0"
BRIDGE_ADDRESS = "172.31.250.1/24"  # gateway/prefix of engine 2's bridge; docker0 is 172.17.0.0/16
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def _run(
    args: list[str], *, check: bool = True, stdin: IO[bytes] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, check=False, stdin=stdin, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr!s}")
    return result


@dataclass
class SecondEngine:
    root: Path = DEFAULT_ROOT
    bridge: str = BRIDGE
    bridge_address: str = BRIDGE_ADDRESS
    proc: subprocess.Popen[bytes] | None = None
    tls_port: int = 0  # chosen at the first start, kept across restarts
    _lock: IO[str] | None = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def host(self) -> str:
        """The DOCKER_HOST of engine 2, for `docker -H`, aiodocker and a [[host]] docker_host."""
        return f"unix://{self.socket}"

    @property
    def tls_dir(self) -> Path:
        """ca.pem, server-*.pem (for 127.0.0.1) and the client's cert.pem / key.pem."""
        return self.root / "tls"

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        return _run(["docker", "-H", self.host, *args], check=check, timeout=timeout).stdout

    def acquire(self, timeout: float = 600) -> SecondEngine:
        """Takes the engine for this session: waits (up to `timeout`) while another session holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = (self.root / "lock").open("w")

        def taken() -> bool:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        eventually(taken, timeout, f"the lock on {self.root} (another test session uses engine 2)")
        self._lock = lock
        return self

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def start(self, timeout: float = START_TIMEOUT) -> SecondEngine:
        """Starts engine 2; does nothing when this object's engine already runs."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self._end_leftover_daemon()
        self._ensure_bridge()
        for sub in ("data", "exec"):
            (self.root / sub).mkdir(exist_ok=True)
        make_tls(self.tls_dir)
        self.tls_port = self.tls_port or free_port()
        tls = self.tls_dir
        self.proc = subprocess.Popen(
            [
                "dockerd",
                "-H",
                self.host,
                "-H",
                f"tcp://127.0.0.1:{self.tls_port}",
                "--tlsverify",
                "--tlscacert",
                str(tls / "ca.pem"),
                "--tlscert",
                str(tls / "server-cert.pem"),
                "--tlskey",
                str(tls / "server-key.pem"),
                "--data-root",
                str(self.root / "data"),
                "--exec-root",
                str(self.root / "exec"),
                "--pidfile",
                str(self.root / "docker.pid"),
                "--bridge",
                self.bridge,
                "--iptables=false",
                "--ip-masq=false",
                "--ip6tables=false",
                "--cgroup-parent",
                "waker-engine2",
                "--storage-driver",
                "overlay2",
            ],
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        eventually(self._answers, timeout, f"engine 2 answering on {self.socket}", self._explain)
        return self

    def remove_all_containers(self) -> None:
        """Engine 2 belongs to the tests alone: what an earlier (aborted) run left is removed."""
        leftovers = self.docker("ps", "-aq").split()
        if leftovers:
            self.docker("rm", "-f", *leftovers)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ends dockerd the way a host shutting down does (SIGTERM: it stops its containers first)."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def logs(self, name: str) -> str:
        """A container's output, stdout and stderr together."""
        return subprocess.run(
            ["docker", "-H", self.host, "logs", name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
            timeout=60,
        ).stdout

    def load_images(self, *images: str) -> list[str]:
        """Copies images from the main engine (no registry here): only those engine 2 lacks or holds in
        another version. Returns the names copied."""
        copied = []
        for image in images:
            wanted = _run(["docker", "image", "inspect", "--format", "{{.Id}}", image]).stdout.strip()
            here = self.docker("image", "inspect", "--format", "{{.Id}}", image, check=False).strip()
            if here == wanted:
                continue
            save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
            assert save.stdout is not None
            _run(["docker", "-H", self.host, "load", "-q"], stdin=save.stdout)
            save.stdout.close()
            if save.wait() != 0:
                raise RuntimeError(f"docker save {image} failed")
            copied.append(image)
        return copied

    def container_ip(self, name: str) -> str:
        return self.docker("inspect", "--format", "{{.NetworkSettings.IPAddress}}", name).strip()

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"dockerd of engine 2 exited with {self.proc.returncode}: {self._explain()}")
        return (
            _run(
                ["docker", "-H", self.host, "version", "--format", "{{.Server.Version}}"], check=False, timeout=10
            ).returncode
            == 0
        )

    def _explain(self) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        return "; dockerd log: " + " | ".join(lines[-15:])

    def _end_leftover_daemon(self) -> None:
        """A dockerd an aborted run left behind (its pidfile is ours): ended before starting anew."""
        pidfile = self.root / "docker.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return
        if cmdline and cmdline[0].endswith(b"dockerd") and str(self.root).encode() in b" ".join(cmdline):
            os.kill(pid, signal.SIGTERM)
            eventually(lambda: not Path(f"/proc/{pid}").exists(), STOP_TIMEOUT, "the leftover dockerd exiting")

    def _ensure_bridge(self) -> None:
        shown = _run(["ip", "-j", "addr", "show", "dev", self.bridge], check=False)
        if shown.returncode == 0:
            return
        network = ipaddress.IPv4Interface(self.bridge_address).network
        routes = json.loads(_run(["ip", "-j", "route", "show"]).stdout or "[]")
        for route in routes:
            dst = route.get("dst", "")
            if dst not in ("", "default") and ipaddress.ip_network(dst, strict=False).overlaps(network):
                raise RuntimeError(
                    f"engine 2's bridge subnet {network} overlaps the route {dst} on "
                    f"{route.get('dev')}: set another BRIDGE_ADDRESS in {__file__}"
                )
        _run(["ip", "link", "add", "name", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", self.bridge_address, "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])


def make_tls(directory: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made once."""
    if (directory / "key.pem").exists():
        return
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        _run(["openssl", *args])

    d = str(directory)
    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "3650",
        "-subj",
        "/CN=waker test CA",
        "-keyout",
        f"{d}/ca-key.pem",
        "-out",
        f"{d}/ca.pem",
    )
    for name, subject, extension in (
        ("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
        ("client", "/CN=waker", "extendedKeyUsage=clientAuth"),
    ):
        key, request = f"{d}/{name}-key.pem", f"{d}/{name}.csr"
        openssl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            key,
            "-out",
            request,
        )
        (directory / f"{name}.ext").write_text(extension + "\n")
        openssl(
            "x509",
            "-req",
            "-in",
            request,
            "-CA",
            f"{d}/ca.pem",
            "-CAkey",
            f"{d}/ca-key.pem",
            "-CAcreateserial",
            "-days",
            "3650",
            "-extfile",
            f"{d}/{name}.ext",
            "-out",
            f"{d}/{name}-cert.pem",
        )
    # The names the docker CLI looks for in a DOCKER_CERT_PATH; key.pem last: it marks the set complete.
    (directory / "cert.pem").write_bytes((directory / "client-cert.pem").read_bytes())
    (directory / "key.pem").write_bytes((directory / "client-key.pem").read_bytes())
