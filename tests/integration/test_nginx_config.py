"""The rendered nginx config is checked by the real nginx binary (`nginx -t`), not by string matching alone."""

import subprocess
from pathlib import Path

import pytest

from tests.unit.test_nginx_render import config
from waker.config.schema import parse_config
from waker.nginx.render import render

pytestmark = pytest.mark.integration


def nginx_test(nginx: str, tmp_path: Path, cfg, asleep: frozenset[str] = frozenset()) -> subprocess.CompletedProcess:
    rendered = render(cfg, tmp_path, asleep=asleep)
    for sub in ("logs", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    (tmp_path / "nginx.conf").write_text(rendered.nginx_conf)
    (tmp_path / "route.js").write_text(rendered.route_js)
    return subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "logs/error.log")],
        capture_output=True,
        text=True,
        check=False,
    )


def test_rendered_config_is_accepted_by_nginx(nginx, tmp_path):
    cfg = config(
        tmp_path,
        [
            {"id": "qwen2.5-1.5b-instruct", "aliases": ["small", "q:1"], "image": "i"},
            {"id": "gpt-oss-20b", "image": "i", "start_timeout": "90m"},
        ],
    )
    result = nginx_test(nginx, tmp_path, cfg)
    assert result.returncode == 0, result.stderr


def test_two_hundred_models_render_and_pass_nginx(nginx, tmp_path):
    cfg = config(tmp_path, [{"id": f"model-{i}", "aliases": [f"m{i}"], "image": "i"} for i in range(200)])
    result = nginx_test(nginx, tmp_path, cfg)
    assert result.returncode == 0, result.stderr


def test_access_control_config_is_accepted_by_nginx(nginx, tmp_path):
    raw = {
        "waker": {"runtime_dir": str(tmp_path), "admin_token": "admin-secret"},
        "gateway": {
            "listen": "0.0.0.0:8009",
            "api_keys": ["sk-abcdefgh", "key:with/odd+chars="],
            "cors_origins": ["http://localhost:3000", "vscode-webview://*"],
        },
        "model": [{"id": "alpha", "image": "i"}],
    }
    cfg = parse_config(raw, tmp_path / "models.toml")
    result = nginx_test(nginx, tmp_path, cfg)
    assert result.returncode == 0, result.stderr


def test_a_config_with_a_sleeping_model_is_accepted_by_nginx(nginx, tmp_path):
    cfg = config(
        tmp_path, [{"id": "alpha", "image": "i", "host_port": 19001}, {"id": "beta", "image": "i", "host_port": 19002}]
    )
    result = nginx_test(nginx, tmp_path, cfg, asleep=frozenset({"alpha"}))
    assert result.returncode == 0, result.stderr


def test_fixup_locations_are_accepted_by_nginx(nginx, tmp_path):
    raw = {
        "waker": {"runtime_dir": str(tmp_path)},
        "gateway": {"cors_origins": ["http://localhost:3000"]},
        "model": [
            {"id": "plain", "image": "i"},
            {
                "id": "fix.ed",
                "aliases": ["f"],
                "image": "i",
                "command": ["--max-model-len", "4096"],
                "fixups": ["max_tokens", "strip_tools", "alternate_roles", "include_usage", "thinking"],
            },
        ],
    }
    result = nginx_test(nginx, tmp_path, parse_config(raw, tmp_path / "models.toml"))
    assert result.returncode == 0, result.stderr


def test_a_config_with_two_hosts_is_accepted_by_nginx(nginx, tmp_path):
    raw = {
        "waker": {"runtime_dir": str(tmp_path)},
        "host": [{"name": "one"}, {"name": "two", "docker_host": "ssh://two", "address": "192.168.100.2"}],
        "model": [{"id": "free", "image": "i"}, {"id": "named", "image": "i", "host": "two"}],
    }
    cfg = parse_config(raw, tmp_path / "models.toml")
    result = nginx_test(nginx, tmp_path, cfg, asleep=frozenset({"free"}))
    assert result.returncode == 0, result.stderr
