"""The systemd deployment: the unit passes `systemd-analyze verify`, and `waker run` speaks the
notify protocol (READY once the gateway answers, watchdog keep-alives, STOPPING on the way out)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.e2e.stack import REPO, fake_model

pytestmark = pytest.mark.e2e


def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is not installed (apt-get install systemd)"
    unit = tmp_path / "waker.service"
    unit.write_text(
        subprocess.run(
            [REPO / "scripts" / "install-systemd", "--print"], check=True, capture_output=True, text=True
        ).stdout
    )
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    text = unit.read_text()
    for line in ("Type=notify", "WatchdogSec=30", "Restart=on-failure", "SupplementaryGroups=docker", "User=waker"):
        assert line in text


def test_waker_run_notifies_ready_feeds_the_watchdog_and_says_stopping(make_stack, tmp_path):
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(20)
    stack = make_stack([fake_model("alpha")], env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"})
    messages = [listener.recv(4096).decode()]
    assert messages[0].startswith("READY=1") and "serving 1 models" in messages[0]
    with urllib.request.urlopen(f"{stack.url}/healthz", timeout=5) as response:  # READY meant it answers
        assert response.status == 200
    began = time.monotonic()
    while sum(m == "WATCHDOG=1" for m in messages) < 3:
        messages.append(listener.recv(4096).decode())
    assert time.monotonic() - began < 3  # every half WatchdogSec
    stack.proc.terminate()
    while "STOPPING=1" not in messages:
        messages.append(listener.recv(4096).decode())
    assert stack.proc.wait(timeout=20) == 0
    listener.close()
