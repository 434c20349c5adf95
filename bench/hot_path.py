"""1. Hot path: small non-streamed chat requests to a ready model, side by side: (a) direct to the
container, (b) a plain nginx proxy without the waker, (c) the gateway path-routed, (d) body-routed,
and LiteLLM's proxy in front of the same model when it is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.common import Row, Section, admin, container_ip, fake_model, median, start_stack, wrk

BODY = {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 1}
LITELLM_KEY = "sk-waker-bench"
PLAIN_NGINX = """daemon off; worker_processes auto; pid {dir}/nginx.pid; error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  upstream model {{ server 127.0.0.1:{port}; keepalive 16; }}
  server {{ listen 127.0.0.1:{listen}; location / {{ proxy_pass http://model; proxy_http_version 1.1;
    proxy_set_header Connection ''; proxy_buffering off; }} }} }}
"""


def _plain_nginx(model_port: int, listen: int) -> subprocess.Popen:
    run_dir = Path(tempfile.mkdtemp(prefix="plain-nginx-"))
    os.chmod(run_dir, 0o755)
    (run_dir / "nginx.conf").write_text(PLAIN_NGINX.format(dir=run_dir, port=model_port, listen=listen))
    nginx = shutil.which("nginx", path="/usr/sbin:/usr/bin") or "nginx"
    proc = subprocess.Popen(
        [nginx, "-p", str(run_dir), "-c", str(run_dir / "nginx.conf"), "-e", str(run_dir / "error.log")]
    )
    time.sleep(0.5)
    return proc


def _litellm(litellm: str, model_port: int, listen: int) -> subprocess.Popen | None:
    config = Path(tempfile.mkstemp(suffix=".yaml")[1])
    config.write_text(
        f"model_list:\n  - model_name: hot\n    litellm_params:\n      model: openai/hot\n"
        f"      api_base: http://127.0.0.1:{model_port}/v1\n      api_key: none\n"
    )
    proc = subprocess.Popen(
        [litellm, "--config", str(config), "--host", "127.0.0.1", "--port", str(listen), "--num_workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_MASTER_KEY": LITELLM_KEY},
    )
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{listen}/health/liveliness", timeout=1)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    return None


def run(quick: bool, litellm: str | None) -> Section:
    from tests.e2e.stack import free_port

    seconds, rounds = (2, 1) if quick else (8, 3)
    stack = start_stack([fake_model("hot", load_delay=0.1, extra=["--tokens-per-second", "1000000"])])
    section = Section("1. Hot path: small chat requests to a ready model (wrk, 16 connections)")
    processes: list[subprocess.Popen] = []
    try:
        admin(stack, "POST", "/admin/models/hot/start")
        port = stack.model_port_base
        plain_port, litellm_port = free_port(), free_port()
        processes.append(_plain_nginx(port, plain_port))
        targets = {
            "a. direct (container IP)": (f"http://{container_ip(stack, 'hot')}:8000/v1/chat/completions", BODY),
            "b. plain nginx, no waker": (f"http://127.0.0.1:{plain_port}/v1/chat/completions", BODY),
            "c. gateway, path-routed": (f"{stack.url}/v1/hot/chat/completions", BODY),
            "d. gateway, body-routed": (f"{stack.url}/v1/chat/completions", {**BODY, "model": "hot"}),
        }
        if litellm:
            proc = _litellm(litellm, port, litellm_port)
            if proc is None:
                section.notes.append("LiteLLM's proxy did not come up; it is left out.")
            else:
                processes.append(proc)
                targets["e. LiteLLM proxy"] = (
                    f"http://127.0.0.1:{litellm_port}/v1/chat/completions",
                    {**BODY, "model": "hot"},
                )
        else:
            section.notes.append("LiteLLM not measured in this run (pass --litellm PATH to its `litellm` command).")
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        auth = {"Authorization": f"Bearer {LITELLM_KEY}"}
        for url, body in targets.values():  # warm-up
            wrk(url, body, 1, headers=auth)
        for _ in range(rounds):  # interleaved rounds: the machine's noise hits every target alike
            for name, (url, body) in targets.items():
                samples[name].append(wrk(url, body, seconds, headers=auth))
        result = {
            name: {k: median([s[k] for s in runs]) for k in ("rps", "p50", "p99")} for name, runs in samples.items()
        }
        for name, r in result.items():
            section.rows.append(Row(name, f"{r['rps']:.0f} req/s, p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms"))
        base = result["b. plain nginx, no waker"]
        for name, ratio_target, added_target in (
            ("c. gateway, path-routed", 0.9, 0.3),
            ("d. gateway, body-routed", 0.7, 1.0),
        ):
            r = result[name]
            ratio, added = r["rps"] / base["rps"], r["p50"] - base["p50"]
            section.rows.append(
                Row(f"{name[:2]} throughput / (b)", f"{ratio:.2f}", f">= {ratio_target}", ratio >= ratio_target)
            )
            section.rows.append(
                Row(
                    f"{name[:2]} p50 added over (b)", f"{added:+.2f} ms", f"<= {added_target} ms", added <= added_target
                )
            )
        if "e. LiteLLM proxy" in result:
            ratio = result["d. gateway, body-routed"]["rps"] / result["e. LiteLLM proxy"]["rps"]
            section.rows.append(Row("(d) throughput / LiteLLM", f"{ratio:.1f}x"))
    finally:
        for proc in processes:
            proc.terminate()
            proc.wait()
        stack.stop()
    return section
