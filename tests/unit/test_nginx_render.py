"""The rendered nginx config is checked by the real nginx binary (`nginx -t`), not by string matching alone."""

import json
import shutil
import subprocess
from pathlib import Path

from waker.config import parse_config
from waker.nginx_render import location_key, render

NGINX = shutil.which("nginx", path="/usr/sbin:/usr/bin:/usr/local/sbin")


def config(tmp_path, models):
    raw = {"waker": {"runtime_dir": str(tmp_path)}, "model": models}
    return parse_config(raw, tmp_path / "models.toml")


def nginx_test(tmp_path: Path, cfg) -> subprocess.CompletedProcess:
    assert NGINX, "nginx is not installed: apt-get install nginx libnginx-mod-http-js"
    rendered = render(cfg, tmp_path)
    for sub in ("logs", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    (tmp_path / "nginx.conf").write_text(rendered.nginx_conf)
    (tmp_path / "route.js").write_text(rendered.route_js)
    return subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                           "-e", str(tmp_path / "logs/error.log")], capture_output=True, text=True, check=False)


def test_location_keys_are_injective_and_nginx_safe():
    ids = ["qwen2.5-7b", "qwen2_5-7b", "a:b", "a_b", "a.b"]
    keys = [location_key(i) for i in ids]
    assert len(set(keys)) == len(keys)
    assert all(k.replace("_", "").replace("-", "").isalnum() for k in keys)


def test_rendered_config_is_accepted_by_nginx(tmp_path):
    cfg = config(tmp_path, [
        {"id": "qwen2.5-1.5b-instruct", "aliases": ["small", "q:1"], "image": "i"},
        {"id": "gpt-oss-20b", "image": "i", "start_timeout": "90m"},
    ])
    result = nginx_test(tmp_path, cfg)
    assert result.returncode == 0, result.stderr


def test_two_hundred_models_render_and_pass_nginx(tmp_path):
    cfg = config(tmp_path, [{"id": f"model-{i}", "aliases": [f"m{i}"], "image": "i"} for i in range(200)])
    assert nginx_test(tmp_path, cfg).returncode == 0


def test_every_name_routes_to_its_model_and_waker_only_on_502(tmp_path):
    cfg = config(tmp_path, [{"id": "alpha", "aliases": ["a"], "image": "i", "host_port": 19001}])
    conf = render(cfg, tmp_path).nginx_conf
    for name in ("alpha", "a"):
        line = next(line_ for line_ in conf.splitlines() if f"location /v1/{name}/ " in line_)
        # A chat completion goes to @feedback_alpha (loading feedback is on by default), the rest to @wake_alpha.
        assert "proxy_pass http://model_alpha;" in line and "error_page 502 = ${wake_via}alpha;" in line
        assert "X-Accel-Redirect" in line  # models may not steer nginx
    assert "upstream model_alpha { server 127.0.0.1:19001 " in conf
    wake = next(line_ for line_ in conf.splitlines() if "location @wake_alpha" in line_)
    assert "proxy_pass_request_body off" in wake and "proxy_method GET" in wake
    feedback = next(line_ for line_ in conf.splitlines() if "location @feedback_alpha" in line_)
    assert "proxy_pass_request_body" not in feedback and "X-Upstream-URI $uri$is_args$args" in feedback
    assert '"POST:/v1/chat/completions" "@feedback_"; default "@wake_";' in conf


def test_without_loading_feedback_a_model_wakes_as_before(tmp_path):
    cfg = config(tmp_path, [{"id": "alpha", "image": "i", "loading_feedback": "off"}])
    conf = render(cfg, tmp_path).nginx_conf
    line = next(line_ for line_ in conf.splitlines() if "location /v1/alpha/ " in line_)
    assert "error_page 502 = @wake_alpha;" in line and "@feedback_alpha" not in conf


def test_router_table_maps_ids_and_aliases(tmp_path):
    cfg = config(tmp_path, [{"id": "alpha", "aliases": ["a"], "image": "i"}, {"id": "b:1", "image": "i"}])
    js = render(cfg, tmp_path).route_js
    line = next(line_ for line_ in js.splitlines() if line_.startswith("var ROUTES"))
    assert json.loads(line.split("=", 1)[1].split(";  //")[0]) == {"alpha": "alpha", "a": "alpha", "b:1": "b_3a1"}


def test_access_control_config_is_accepted_by_nginx(tmp_path):
    raw = {"waker": {"runtime_dir": str(tmp_path), "admin_token": "admin-secret"},
           "gateway": {"listen": "0.0.0.0:8009", "api_keys": ["sk-abcdefgh", "key:with/odd+chars="],
                       "cors_origins": ["http://localhost:3000", "vscode-webview://*"]},
           "model": [{"id": "alpha", "image": "i"}]}
    cfg = parse_config(raw, tmp_path / "models.toml")
    assert nginx_test(tmp_path, cfg).returncode == 0
    conf = render(cfg, tmp_path).nginx_conf
    assert "listen 0.0.0.0:8009;" in conf and "'Bearer sk-abcdefgh' 1;" in conf
    assert "location /admin/ { proxy_pass" in conf  # the admin token guards it, from any host


def test_without_keys_the_gateway_falls_back_to_loopback_and_says_so(tmp_path):
    from waker.nginx_access import exposure_warning

    open_cfg = parse_config({"waker": {"runtime_dir": str(tmp_path)}, "gateway": {"listen": "0.0.0.0:8009"},
                             "model": [{"id": "alpha", "image": "i"}]}, tmp_path / "models.toml")
    conf = render(open_cfg, tmp_path).nginx_conf
    assert "listen 127.0.0.1:8009;" in conf and "$key_denied" not in conf
    assert "listens on 127.0.0.1:8009 only" in exposure_warning(open_cfg)
    assert "location /admin/ { allow 127.0.0.0/8; allow ::1; deny all;" in conf
    allowed = parse_config({"waker": {"runtime_dir": str(tmp_path)},
                            "gateway": {"listen": "0.0.0.0:8009", "allow_no_keys": True},
                            "model": [{"id": "alpha", "image": "i"}]}, tmp_path / "models.toml")
    assert "listen 0.0.0.0:8009;" in render(allowed, tmp_path).nginx_conf
    assert "anyone who reaches" in exposure_warning(allowed)


def test_model_controls_go_to_the_waker_and_a_load_may_wait_as_long_as_a_wake(tmp_path):
    cfg = config(tmp_path, [{"id": "alpha", "image": "i"}, {"id": "big", "image": "i", "start_timeout": "90m"}])
    lines = render(cfg, tmp_path).nginx_conf.splitlines()
    load = next(line for line in lines if "location = /models/load " in line)
    assert "proxy_pass http://waker;" in load and "proxy_read_timeout 6060s;" in load  # 10m queue + 90m + 60 s
    for path in ("/models", "/models/unload"):
        assert "proxy_pass http://waker;" in next(line for line in lines if f"location = {path} " in line)
