"""Entry point of the Ray test image (waker-ray:test): one node of a Ray cluster on the host network.

The shape of a multi-host vLLM (NVIDIA's DGX Spark playbook, vLLM's run_cluster.sh): a Ray head on one
box serves the model, a Ray worker on the other joins; the model server does not listen until the
cluster has every node it needs, as vLLM does not listen until its engine (which places its workers
through Ray) is built.

  node.py head   --ip IP --port P --port-base B --nodes N [--timeout S] -- SERVER_ARGS...
      starts a Ray head (GCS on IP:P), waits until N nodes are alive, then runs the fake vLLM server
      (/server.py SERVER_ARGS); when the cluster loses a node the server is ended and the head exits 3,
      as vLLM's engine dies when a Ray worker it placed dies.
  node.py worker --ip IP --address HEAD_IP:P --port-base B
      joins the cluster and stays until stopped.

Every port a node opens comes from its --port-base, so that two nodes on one host's loopback (the
tests run both engines' containers with --network host) never take the same one.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import ray

POLL_SECONDS = 0.5
NODE_LOST_EXIT = 3


def log(message: str) -> None:
    print(f"ray-node: {message}", file=sys.stderr, flush=True)


def node_ports(base: int) -> list[str]:
    return [
        f"--node-manager-port={base}",
        f"--object-manager-port={base + 1}",
        f"--runtime-env-agent-port={base + 2}",
        f"--dashboard-agent-grpc-port={base + 3}",
        f"--dashboard-agent-listen-port={base + 4}",
        f"--metrics-export-port={base + 5}",
        f"--min-worker-port={base + 10}",
        f"--max-worker-port={base + 60}",
    ]


def ray_command(args: list[str]) -> list[str]:
    # A small object store: /dev/shm is Docker's 64 MiB unless the container is given more.
    command = ["ray", "start", "--disable-usage-stats", "--object-store-memory=78643200", *args]
    log(" ".join(command))
    return command


def alive_nodes() -> int:
    return sum(1 for node in ray.nodes() if node["Alive"])


def head(options: argparse.Namespace, server_args: list[str]) -> int:
    subprocess.run(
        ray_command(
            [
                "--head",
                f"--node-ip-address={options.ip}",
                f"--port={options.port}",
                "--include-dashboard=false",
                *node_ports(options.port_base),
            ]
        ),
        check=True,
    )
    ray.init(address=f"{options.ip}:{options.port}", logging_level="warning")
    deadline = time.monotonic() + options.timeout
    seen = 0
    while (alive := alive_nodes()) < options.nodes:
        if alive != seen:
            log(f"cluster has {alive}/{options.nodes} nodes, waiting")
            seen = alive
        if time.monotonic() > deadline:
            log(f"only {alive}/{options.nodes} nodes after {options.timeout:g} s: giving up")
            return 1
        time.sleep(POLL_SECONDS)
    log(f"cluster has {options.nodes}/{options.nodes} nodes: starting the model server")
    server = subprocess.Popen([sys.executable, "-u", "/server.py", *server_args])
    signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    while server.poll() is None:
        if alive_nodes() < options.nodes:
            log(f"a node left the cluster ({alive_nodes()}/{options.nodes} alive): ending the model server")
            server.terminate()
            server.wait()
            return NODE_LOST_EXIT
        time.sleep(POLL_SECONDS)
    return server.returncode


def worker(options: argparse.Namespace) -> int:
    # exec: `ray start --block` becomes the container's process and gets Docker's SIGTERM, on which it
    # stops its node (a process 1 without a handler would ignore it until Docker's SIGKILL).
    command = ray_command(
        [f"--address={options.address}", f"--node-ip-address={options.ip}", "--block", *node_ports(options.port_base)]
    )
    os.execvp(command[0], command)


def main(argv: list[str]) -> int:
    own, server_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="node.py")
    sub = parser.add_subparsers(dest="role", required=True)
    head_parser = sub.add_parser("head")
    head_parser.add_argument("--port", type=int, required=True)
    head_parser.add_argument("--nodes", type=int, default=2)
    head_parser.add_argument("--timeout", type=float, default=float(os.environ.get("RAY_NODES_TIMEOUT", "300")))
    worker_parser = sub.add_parser("worker")
    worker_parser.add_argument("--address", required=True)
    for each in (head_parser, worker_parser):
        each.add_argument("--ip", default="127.0.0.1")
        each.add_argument("--port-base", type=int, required=True)
    options = parser.parse_args(own)
    return head(options, server_args) if options.role == "head" else worker(options)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
