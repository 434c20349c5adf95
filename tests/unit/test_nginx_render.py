"""What the rendered nginx config says; that nginx accepts it: tests/integration/test_nginx_config.py."""

import json

from waker.config.schema import parse_config
from waker.nginx.render import location_key, render


def config(tmp_path, models):
    raw = {"waker": {"runtime_dir": str(tmp_path)}, "model": models}
    return parse_config(raw, tmp_path / "models.toml")


def test_location_keys_are_injective_and_nginx_safe():
    ids = ["qwen2.5-7b", "qwen2_5-7b", "a:b", "a_b", "a.b"]
    keys = [location_key(i) for i in ids]
    assert len(set(keys)) == len(keys)
    assert all(k.replace("_", "").replace("-", "").isalnum() for k in keys)


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


def test_access_control_is_rendered_into_the_config(tmp_path):
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
    conf = render(cfg, tmp_path).nginx_conf
    assert "listen 0.0.0.0:8009;" in conf and "'Bearer sk-abcdefgh' 1;" in conf
    assert "location /admin/ { proxy_pass" in conf  # the admin token guards it, from any host


def test_without_keys_the_gateway_falls_back_to_loopback_and_says_so(tmp_path):
    from waker.nginx.access import exposure_warning

    open_cfg = parse_config(
        {
            "waker": {"runtime_dir": str(tmp_path)},
            "gateway": {"listen": "0.0.0.0:8009"},
            "model": [{"id": "alpha", "image": "i"}],
        },
        tmp_path / "models.toml",
    )
    conf = render(open_cfg, tmp_path).nginx_conf
    assert "listen 127.0.0.1:8009;" in conf and "$key_denied" not in conf
    assert "listens on 127.0.0.1:8009 only" in exposure_warning(open_cfg)
    assert "location /admin/ { allow 127.0.0.0/8; allow ::1; deny all;" in conf
    allowed = parse_config(
        {
            "waker": {"runtime_dir": str(tmp_path)},
            "gateway": {"listen": "0.0.0.0:8009", "allow_no_keys": True},
            "model": [{"id": "alpha", "image": "i"}],
        },
        tmp_path / "models.toml",
    )
    assert "listen 0.0.0.0:8009;" in render(allowed, tmp_path).nginx_conf
    assert "anyone who reaches" in exposure_warning(allowed)


def test_model_controls_go_to_the_waker_and_a_load_may_wait_as_long_as_a_wake(tmp_path):
    cfg = config(tmp_path, [{"id": "alpha", "image": "i"}, {"id": "big", "image": "i", "start_timeout": "90m"}])
    lines = render(cfg, tmp_path).nginx_conf.splitlines()
    load = next(line for line in lines if "location = /models/load " in line)
    assert "proxy_pass http://waker;" in load and "proxy_read_timeout 6060s;" in load  # 10m queue + 90m + 60 s
    for path in ("/models", "/models/unload"):
        assert "proxy_pass http://waker;" in next(line for line in lines if f"location = {path} " in line)


def test_nginx_sends_activity_marks_to_a_waker_on_a_wildcard_address_over_loopback(tmp_path):
    for listen, server in (("0.0.0.0:18080", "127.0.0.1:18080"), ("[::]:18080", "[::1]:18080")):
        cfg = parse_config(
            {"waker": {"runtime_dir": str(tmp_path), "listen": listen}, "model": [{"id": "alpha", "image": "i"}]},
            tmp_path / "models.toml",
        )
        assert f"syslog:server={server},tag=waker" in render(cfg, tmp_path).nginx_conf


def test_a_sleeping_model_s_requests_go_to_the_waker_and_only_the_waker_s_redirect_reaches_it(tmp_path):
    cfg = config(
        tmp_path, [{"id": "alpha", "image": "i", "host_port": 19001}, {"id": "beta", "image": "i", "host_port": 19002}]
    )
    conf = render(cfg, tmp_path, asleep=frozenset({"alpha"})).nginx_conf
    assert f"upstream model_alpha {{ server unix:{tmp_path}/asleep-never-listening.sock " in conf
    assert "upstream retry_alpha { server 127.0.0.1:19001 " in conf
    assert "upstream model_beta { server 127.0.0.1:19002 " in conf  # awake models: unchanged
    assert "location @retry_alpha { proxy_pass http://retry_alpha;" in conf
    assert render(cfg, tmp_path).nginx_conf != conf


def test_fixups_are_rendered_only_into_the_locations_of_models_that_declare_them(tmp_path):
    plain = {"id": "plain", "aliases": ["p"], "image": "i"}
    before = render(config(tmp_path, [plain]), tmp_path)
    fixed = {
        "id": "fix.ed",
        "aliases": ["f"],
        "image": "i",
        "command": ["--max-model-len", "4096"],
        "fixups": ["thinking", "max_tokens"],
    }
    cfg = config(tmp_path, [plain, fixed])
    rendered = render(cfg, tmp_path)
    assert "js_set" not in before.nginx_conf and "waker_fixed_body" not in before.nginx_conf
    assert "var FIXUPS = {};" in before.route_js

    def plain_lines(conf: str) -> list[str]:
        return [line for line in conf.splitlines() if "plain" in line or "location /v1/p/ " in line]

    # The model without fix-ups renders exactly as it did alone.
    assert plain_lines(rendered.nginx_conf) == plain_lines(before.nginx_conf)
    # comment, 2 path locations, @model, @wake, @retry, @feedback (loading feedback), 2 upstreams
    assert len(plain_lines(before.nginx_conf)) == 9
    header = "add_header X-Waker-Fixups $waker_fixups always;"
    path_fix = f"set $waker_fixups_for fix_2eed; proxy_set_body $waker_fixed_body; {header}"
    body_fix = f"proxy_set_body $waker_body; {header}"
    carrying = {
        line.split("{")[0].strip(): fix
        for line in rendered.nginx_conf.splitlines()
        for fix in (path_fix, body_fix)
        if fix in line
    }
    # The loading feedback's location sends the waker the body the fix-ups made, which it relays.
    assert carrying == {
        "location /v1/fix.ed/": path_fix,
        "location /v1/f/": path_fix,
        "location @model_fix_2eed": body_fix,
        "location @retry_fix_2eed": body_fix,
        "location @feedback_fix_2eed": body_fix,
    }
    # Set before the path locations' `rewrite ... break`, which would end the `set`s after it.
    path_line = next(line for line in rendered.nginx_conf.splitlines() if "location /v1/f/ " in line)
    assert path_line.index(path_fix) < path_line.index("rewrite ")
    assert rendered.nginx_conf.count("js_set $waker_fixed_body route.fixedBody;") == 1
    table = next(line for line in rendered.route_js.splitlines() if line.startswith("var FIXUPS"))
    assert json.loads(table.split(" = ", 1)[1].split(";  //")[0]) == {
        "fix_2eed": {"fixups": ["max_tokens", "thinking"], "context": 4096}
    }


def test_fixup_locations_repeat_the_cors_headers_their_own_header_would_hide(tmp_path):
    cfg = parse_config(
        {
            "gateway": {"cors_origins": ["http://localhost:3000"]},
            "waker": {"runtime_dir": str(tmp_path)},
            "model": [{"id": "m", "image": "i", "context_length": 64, "fixups": ["max_tokens"]}],
        },
        tmp_path / "models.toml",
    )
    conf = render(cfg, tmp_path).nginx_conf
    for line in (line for line in conf.splitlines() if "X-Waker-Fixups $waker_fixups" in line):
        assert "add_header Access-Control-Allow-Origin $cors_origin always;" in line
        assert "add_header Access-Control-Expose-Headers $cors_expose always;" in line
    assert "'Retry-After, X-Busy-Model, X-Waker-Fixups'" in conf


def test_with_hosts_a_model_is_reached_on_each_host_it_may_run_on_the_first_host_first(tmp_path):
    raw = {
        "waker": {"runtime_dir": str(tmp_path)},
        "host": [{"name": "one"}, {"name": "two", "docker_host": "ssh://two", "address": "192.168.100.2"}],
        "model": [
            {"id": "free", "image": "i", "host_port": 19001},
            {"id": "named", "image": "i", "host_port": 19002, "host": "two"},
        ],
    }
    conf = render(parse_config(raw, tmp_path / "models.toml"), tmp_path).nginx_conf
    both = "server 127.0.0.1:19001 max_fails=0; server 192.168.100.2:19001 max_fails=0 backup;"
    assert f"upstream model_free {{ {both} keepalive 16; }}" in conf
    assert f"upstream retry_free {{ {both} keepalive 16; }}" in conf
    assert "upstream model_named { server 192.168.100.2:19002 max_fails=0; keepalive 16; }" in conf
