"""Renders the gateway's nginx configuration and its njs body router from the config (pure).

Per model M the config has:
- `location /v1/<name>/` for its id and every alias: path routing, straight to the container;
- `@model_M`: where the njs body router jumps for body-routed requests;
- `@wake_M`: on 502 (nothing listens yet), a body-less GET to the waker, held until M is ready;
- `@feedback_M` (loading feedback on): on 502 for a chat completion, the request with its body to the
  waker, which answers a streaming one itself (progress, then the model's stream) and any other as
  `@wake_M` does;
- `@retry_M`: where the waker's X-Accel-Redirect sends the original request (method and body kept).

A sleeping model (vLLM's sleep mode) still listens, and vLLM holds a request sent to it unanswered
until a wake. So while M is asleep its upstream `model_M` is rendered as a socket that never exists:
nginx gets its 502 and asks the waker, which wakes M first. `@retry_M` goes through `retry_M`, always
the real address, so that requests the waker lets through after a wake need no reload.

With several hosts (`[[host]]`), a model placed by the scheduler may run on any of them, so its
upstreams list its port on each host's address, the first host's as the server and the others as
`backup`: nginx tries them in that order and proxies to the one that accepts (a refused connection
costs one round trip on the link), so a model that moves to another host needs no reload. A model
that names its `host` has that host's address alone.

A model that declares fix-ups has its body rewritten by njs in the three locations that reach it
(path, `@model_M`, `@retry_M`); the locations of the other models carry nothing of it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from waker.config import fixups as config_fixups
from waker.config.fields import Address
from waker.config.schema import RESERVED_NAMES, Config, LoadingFeedback, ModelConfig
from waker.config.units import format_size
from waker.errors import error_body
from waker.nginx import access as nginx_access

# Body-routed endpoints outside /v1/ that vLLM serves (all of /v1/ goes through the router already).
BODY_ROUTES_OUTSIDE_V1 = (
    "tokenize",
    "detokenize",
    "rerank",
    "score",
    "pooling",
    "classify",
    "invocations",
    "v2/rerank",
)

# Statuses nginx itself may produce, each answered with an OpenAI error body instead of an HTML page.
NGINX_ERRORS: dict[int, tuple[str, str]] = {
    400: ("bad_request", "the request is malformed HTTP"),
    401: (
        "invalid_api_key",
        (
            "missing or wrong API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>' "
            "with a key from [gateway] api_keys"
        ),
    ),
    403: (
        "forbidden",
        (
            "this route is not open to this client (the admin API and dashboard answer other hosts "
            "only when [waker] admin_token is set)"
        ),
    ),
    404: ("not_found", "no such route: the API is under /v1/ (for example POST /v1/chat/completions)"),
    405: ("method_not_allowed", "this method is not allowed on this route"),
    408: ("request_timeout", "the client sent the request too slowly"),
    429: (
        "too_many_connections",
        (
            "this client already holds {max_connections_per_client} connections to the gateway "
            "([gateway] max_connections_per_client): let some finish, then retry"
        ),
    ),
    413: ("body_too_large", "the request body is larger than the gateway accepts ([gateway] max_body is {max_body})"),
    414: ("uri_too_long", "the request URI is too long"),
    494: ("headers_too_large", "the request headers are too large"),
    500: ("gateway_error", "the gateway failed to handle the request"),
    502: ("model_unreachable", "the model server could not be reached; retry the request"),
    503: ("unavailable", "the gateway is overloaded; retry later"),
    504: ("model_timeout", "the model server did not answer within [gateway] read_timeout ({read_timeout})"),
    505: ("http_version_not_supported", "this HTTP version is not supported: use HTTP/1.1"),
}
CONNECTIONS_RETRY_AFTER = 1  # seconds: a client over its connection limit waits for one of its own to end
HEADER_TIMEOUT = 10  # seconds, at most, for a request head (below [gateway] client_timeout when it is lower)
# Seconds a client waits before trying again when the waker does not answer: systemd and compose
# restart it within seconds.
WAKER_DOWN_RETRY_AFTER = 5
WAKER_DOWN = (
    "waker_unavailable",
    (
        "the waker (control plane) is not reachable, so models that are not running "
        "cannot be started; check that `waker run` or `waker serve` is running"
    ),
)

GENERATION_PATH = "/_waker/generation"
# A model request's begin mark: a mirror subrequest to BEGIN_PREFIX + model id, logged to the waker's
# activity listener (waker/nginx/activity.py parses it).
BEGIN_PREFIX = "/_inflight/"
ERROR_PREFIX = "/_waker/error/"
# Errors nginx can raise before it has parsed a URI: it cannot jump from those to a named location,
# so their bodies live at internal URIs. The others stay named: a jump to a URI would run the
# server-level checks (the API key) again.
EARLY_ERRORS = frozenset({400, 414, 494, 505})
_GENERATION_PLACEHOLDER = "@GENERATION@"

NJS_SOURCE_CANDIDATES = (
    Path(__file__).resolve().parents[1] / "_nginx" / "route.js",  # installed wheel
    Path(__file__).resolve().parents[2] / "nginx" / "route.js",  # source checkout
)


@dataclass(frozen=True, slots=True)
class Rendered:
    nginx_conf: str
    route_js: str
    generation: str  # answered at GENERATION_PATH, so a reload can be seen to have taken effect


def location_key(model_id: str) -> str:
    """An nginx-safe, injective name for a model id: characters other than [A-Za-z0-9-] become _XX."""
    return re.sub(r"[^A-Za-z0-9-]", lambda m: f"_{ord(m.group()):02x}", model_id)


def render(
    config: Config,
    runtime_dir: Path,
    worker_user: str | None = None,
    njs_source: str | None = None,
    files_dir: Path | None = None,
    asleep: frozenset[str] = frozenset(),
) -> Rendered:
    """`files_dir` is where nginx.conf and route.js go (default: the runtime dir); a staging dir
    lets a new config be tested by nginx before it replaces the running one. `asleep`: the ids of
    models in sleep mode (from falling asleep until woken), whose requests must go to the waker."""
    conf = render_nginx_conf(config, runtime_dir, worker_user, files_dir, asleep)
    route_js = render_route_js(config, njs_source if njs_source is not None else read_njs_source())
    generation = hashlib.sha256((conf + route_js).encode()).hexdigest()[:16]
    return Rendered(conf.replace(_GENERATION_PLACEHOLDER, generation), route_js, generation)


def read_njs_source() -> str:
    for candidate in NJS_SOURCE_CANDIDATES:
        if candidate.exists():
            return candidate.read_text(encoding="utf-8")
    raise FileNotFoundError("nginx/route.js is missing from this installation; reinstall the waker package")


def render_route_js(config: Config, source: str) -> str:
    routes = {name: location_key(m.id) for m in config.models for name in m.names}
    ids = [m.id for m in config.models]
    reserved = {name: True for name in sorted(RESERVED_NAMES)}
    disabled = {name: m.notes for m in config.disabled for name in m.names}
    fixups = {
        location_key(m.id): {"fixups": [f.value for f in m.fixups], "context": config_fixups.model_context(m)}
        for m in config.models
        if m.fixups
    }
    for placeholder, value in (
        ("var ROUTES = {};", routes),
        ("var MODEL_IDS = [];", ids),
        ("var RESERVED = {};", reserved),
        ("var DISABLED = {};", disabled),
        ("var FIXUPS = {};", fixups),
    ):
        if placeholder not in source:
            raise ValueError(f"nginx/route.js lacks the line {placeholder!r} the renderer fills in")
        source = source.replace(placeholder, f"var {placeholder.split()[1]} = {json.dumps(value)};", 1)
    return source


def _quote(text: str) -> str:
    """An nginx string literal. `$` cannot be escaped in nginx strings, so it must not appear."""
    assert "$" not in text, text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _error_locations(config: Config) -> list[str]:
    values = {
        "max_body": format_size(config.gateway.max_body),
        "read_timeout": f"{int(config.gateway.read_timeout)}s",
        "max_connections_per_client": str(config.gateway.max_connections_per_client),
    }
    lines = []
    for status, (code, message) in NGINX_ERRORS.items():
        reply = 400 if status == 494 else status
        body = json.dumps(error_body(message.format(**values), code, reply))
        challenge = {
            401: "add_header WWW-Authenticate Bearer always; ",
            429: f"add_header Retry-After {CONNECTIONS_RETRY_AFTER} always; ",
        }.get(status, "")
        name = f"= {ERROR_PREFIX}{status} {{ internal;" if status in EARLY_ERRORS else f"@error_{status} {{"
        lines.append(
            f"        location {name} default_type application/json; {challenge}return {reply} {_quote(body)}; }}"
        )
    body = json.dumps(error_body(WAKER_DOWN[1], WAKER_DOWN[0], 503))
    lines.append(
        "        location @waker_down { default_type application/json; "
        f"add_header Retry-After {WAKER_DOWN_RETRY_AFTER} always; return 503 {_quote(body)}; }}"
    )
    return lines


def _servers(model: ModelConfig, config: Config) -> str:
    """The upstream servers of a model: its address, or with `[[host]]` its port on each host it may run on."""
    if not config.hosts or config.waker.network:
        return f"server {model.address} max_fails=0;"
    addresses = list(
        dict.fromkeys(
            str(Address(h.address, model.host_port)) for h in config.hosts if not model.host or h.name == model.host
        )
    )
    return " ".join(f"server {a} max_fails=0{' backup' if i else ''};" for i, a in enumerate(addresses))


def _error_pages(overrides: dict[int, str] | None = None) -> str:
    """error_page lines for a location: a location that sets any error_page inherits none, so all repeat."""
    pages = {
        status: f"{ERROR_PREFIX}{status}" if status in EARLY_ERRORS else f"@error_{status}" for status in NGINX_ERRORS
    }
    pages.update(overrides or {})
    return " ".join(f"error_page {status} = {target};" for status, target in pages.items())


_MODEL_PROXY = (
    "proxy_pass http://{upstream}_{key}; "
    # Only the waker may steer nginx: a model's own X-Accel-* headers are ignored.
    "proxy_ignore_headers X-Accel-Redirect X-Accel-Expires X-Accel-Limit-Rate X-Accel-Charset;"
)


def _model_locations(model: ModelConfig, config: Config) -> list[str]:
    key = location_key(model.id)
    proxy = _MODEL_PROXY.format(upstream="model", key=key)
    # The body njs rewrote replaces the client's (nginx sets Content-Length from it), and the response
    # names the fix-ups that changed it. Path routing computes it here ($waker_fixed_body); body
    # routing already did in the router, which leaves it in $waker_body (a js_var outlives redirects),
    # as the path location does for its replay.
    headers = "".join(f"{line} " for line in nginx_access.cors_headers(config))
    fixed = f"add_header X-Waker-Fixups $waker_fixups always; {headers}"
    # First in the block: a `rewrite ... break` ends the `set`s after it.
    fix_path = f"set $waker_fixups_for {key}; proxy_set_body $waker_fixed_body; {fixed}" if model.fixups else ""
    fix = f"proxy_set_body $waker_body; {fixed}" if model.fixups else ""
    feedback = model.loading_feedback is LoadingFeedback.REASONING
    # With loading feedback, a cold chat completion goes to the waker with its body ($wake_via).
    wake = _error_pages({502: f"${{wake_via}}{key}" if feedback else f"@wake_{key}"})
    # Where a request enters a model: it is counted in flight from here to its access log line.
    enter = (
        f"set $inflight 1; set $inflight_model {model.id}; mirror {BEGIN_PREFIX}{model.id}; mirror_request_body off;"
    )
    # A held request may wait for room in the queue, then for the start itself.
    wake_timeout = int(config.scheduler.queue_timeout + model.start_timeout) + 60
    lines = [f"        # model {model.id}"]
    for name in model.names:
        rewrite = "rewrite ^/v1/[^/]+/(.*)$ /v1/$1 break;"
        lines.append(f"        location /v1/{name}/ {{ {fix_path}{enter} {rewrite} {proxy} {wake} }}")
    lines += [
        f"        location @model_{key} {{ {fix}{enter} {proxy} {wake} }}",
        (
            f"        location @wake_{key} {{ set $wake_uri /_wake/{model.id}; proxy_pass http://waker$wake_uri; "
            "proxy_pass_request_body off; proxy_set_header Content-Length ''; proxy_set_header Connection ''; "
            "proxy_set_header X-Original-URI $request_uri; proxy_method GET; "
            f"proxy_read_timeout {wake_timeout}s; {_error_pages({502: '@waker_down', 504: '@waker_down'})} }}"
        ),
        f"        location @retry_{key} {{ {fix}{_MODEL_PROXY.format(upstream='retry', key=key)} {_error_pages()} }}",
    ]
    if feedback:
        # The waker may answer it itself, streaming progress and then the model's answer: the read
        # timeout is the longer of the wait's and a generation's. It gets the body the fix-ups made.
        lines.append(
            f"        location @feedback_{key} {{ {fix}set $wake_uri /_wake/{model.id}; "
            "proxy_pass http://waker$wake_uri; "
            "proxy_set_header Connection ''; proxy_set_header X-Original-URI $request_uri; "
            "proxy_set_header X-Upstream-URI $uri$is_args$args; "
            f"proxy_read_timeout {max(wake_timeout, int(config.gateway.read_timeout))}s; "
            f"{_error_pages({502: '@waker_down', 504: '@waker_down'})} }}"
        )
    return lines


def render_nginx_conf(
    config: Config,
    runtime_dir: Path,
    worker_user: str | None = None,
    files_dir: Path | None = None,
    asleep: frozenset[str] = frozenset(),
) -> str:
    gateway, waker = config.gateway, config.waker
    body_routes = "|".join(re.escape(r) for r in BODY_ROUTES_OUTSIDE_V1)
    to_waker = f"proxy_pass http://waker; {_error_pages({502: '@waker_down', 504: '@waker_down'})}"
    syslog = f"syslog:server={waker.listen.reachable()},tag=waker,nohostname"
    admin_only = nginx_access.admin_restriction(config)
    longest_start = max((m.start_timeout for m in config.models), default=config.scheduler.start_timeout)
    load_timeout = int(config.scheduler.queue_timeout + longest_start) + 60
    lines = [
        "# Rendered by `waker` from " + str(config.path) + "; edit the TOML, not this file.",
        f"load_module {gateway.njs_module};",
        *([f"user {worker_user};"] if worker_user else []),
        "daemon off;",
        "worker_processes auto;",
        f"pid {runtime_dir / 'nginx.pid'};",
        f"error_log {runtime_dir / 'logs' / 'error.log'} warn;",
        "events { worker_connections 8192; }",
        "http {",
        # Activity marks for the waker (see waker/nginx/activity.py): a datagram when a model request
        # begins (mirror subrequest) and one when it ends (its access log line).
        "    log_format inflight_begin 'begin $uri $pid-$connection-$connection_requests';",
        "    log_format inflight_end 'end $inflight_model $pid-$connection-$connection_requests $status';",
        f"    access_log {syslog} inflight_end if=$inflight;",
        # Where a model's 502 goes (read only then): a chat completion to the waker with its body,
        # for models with loading feedback; anything else body-less, as ever.
        '    map "$request_method:$uri" $wake_via { "POST:/v1/chat/completions" "@feedback_"; default "@wake_"; }',
        "    server_tokens off;",
        "    limit_conn_zone $binary_remote_addr zone=per_client:1m;",
        "    limit_conn_status 429;",
        "    default_type application/json;",
        f"    client_body_temp_path {runtime_dir / 'tmp' / 'body'};",
        f"    proxy_temp_path {runtime_dir / 'tmp' / 'proxy'};",
        f"    fastcgi_temp_path {runtime_dir / 'tmp' / 'fastcgi'};",
        f"    uwsgi_temp_path {runtime_dir / 'tmp' / 'uwsgi'};",
        f"    scgi_temp_path {runtime_dir / 'tmp' / 'scgi'};",
        f"    js_import route from {(files_dir or runtime_dir) / 'route.js'};",
        *(
            ["    js_set $waker_fixed_body route.fixedBody;", "    js_var $waker_body;", "    js_var $waker_fixups;"]
            if any(m.fixups for m in config.models)
            else []
        ),
        *nginx_access.http_lines(config),
        "    upstream waker {",
        f"        server {waker.listen};",
        "        keepalive 32;",
        "    }",
        "    server {",
        f"        listen {nginx_access.listen_address(config)};",
        # The body must stay in one memory buffer: njs reads it to route, and nginx replays it after a wake.
        f"        client_max_body_size {gateway.max_body};",
        f"        client_body_buffer_size {gateway.max_body};",
        "        client_body_in_single_buffer on;",
        # A client that sends its request too slowly is cut off, not given a worker (slowloris). A
        # request head comes at once from any real client: it gets HEADER_TIMEOUT at most.
        f"        client_header_timeout {int(min(gateway.client_timeout, HEADER_TIMEOUT))}s;",
        # Past its head, each connection counts against its address: one client cannot take them all.
        f"        limit_conn per_client {gateway.max_connections_per_client};",
        f"        client_body_timeout {int(gateway.client_timeout)}s;",
        f"        send_timeout {int(gateway.client_timeout)}s;",
        "        proxy_http_version 1.1;",
        "        proxy_set_header Connection '';",
        "        proxy_buffering off;",
        "        proxy_request_buffering on;",
        "        proxy_connect_timeout 5s;",
        f"        proxy_read_timeout {int(gateway.read_timeout)}s;",
        f"        proxy_send_timeout {int(gateway.read_timeout)}s;",
        f"        {_error_pages()}",
        # A model's 502 goes to its @wake_ location by error_page; without this, an error there (the
        # waker gone mid-wait) would get nginx's HTML page instead of that location's own error_page.
        "        recursive_error_pages on;",
        # Only model locations set $inflight. No server-level `set` default: the mirror subrequest
        # shares the request's variables and would run it again, erasing them.
        "        uninitialized_variable_warn off;",
        *nginx_access.server_lines(config),
        (
            f"        location ^~ {BEGIN_PREFIX} {{ internal; log_subrequest on; access_log {syslog} inflight_begin; "
            "return 204; }"
        ),
        (
            f"        location = {GENERATION_PATH} {{ allow 127.0.0.0/8; allow ::1; deny all; "
            f"return 200 '{_GENERATION_PLACEHOLDER}'; }}"
        ),
        f"        location = /healthz {{ {to_waker} }}",
        f"        location = /v1/models {{ {to_waker} }}",
        # llama.cpp's router serves the same list without the /v1 prefix; Open WebUI asks there.
        f"        location = /models {{ {to_waker} }}",
        # Its load and unload (the waker refuses them unless [gateway] client_model_control is on).
        # A load is held like a wake: through the queue, then the start.
        (
            f"        location = /models/load {{ proxy_pass http://waker; proxy_read_timeout {load_timeout}s; "
            f"{_error_pages({502: '@waker_down', 504: '@waker_down'})} }}"
        ),
        f"        location = /models/unload {{ {to_waker} }}",
        # The admin API and the dashboard; the waker checks the admin token when one is set.
        (
            f"        location /admin/ {{ {admin_only}proxy_pass http://waker; proxy_read_timeout 1d; "
            f"{_error_pages({502: '@waker_down', 504: '@waker_down'})} }}"
        ),
        f"        location /ui/ {{ {admin_only}{to_waker} }}",
        "        location = /ui { return 301 /ui/; }",
        f"        location /v1/ {{ js_content route.dispatch; {_error_pages()} }}",
        f"        location ~ ^/({body_routes})$ {{ js_content route.dispatch; {_error_pages()} }}",
        "        location / { return 404; }",
        *_error_locations(config),
    ]
    for model in config.models:
        lines += _model_locations(model, config)
    lines.append("    }")
    gate_closed = f"unix:{runtime_dir / 'asleep-never-listening.sock'}"
    for model in config.models:
        key = location_key(model.id)
        # Kept-alive connections spare a TCP handshake (and a docker-proxy hop) per request.
        servers = _servers(model, config)
        model_servers = f"server {gate_closed} max_fails=0;" if model.id in asleep else servers
        lines.append(f"    upstream model_{key} {{ {model_servers} keepalive 16; }}")
        lines.append(f"    upstream retry_{key} {{ {servers} keepalive 16; }}")
    lines += ["}", ""]
    return "\n".join(lines)
