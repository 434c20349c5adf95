"""Who may use the gateway, as nginx config (pure): client API keys, the CORS allow-list, and the
loopback-only fallback when no key is set. Checked in nginx before anything else, so a request
without a valid key never reaches the waker and never starts a container."""

from __future__ import annotations

import re

from waker.config.fields import Address
from waker.config.schema import Config

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
# Paths that answer without a client key: health, the gateway's internal pages (error bodies, the
# loopback-only reload probe), and the admin API and dashboard, which have their own token (or
# answer loopback clients only).
KEY_EXEMPT = ("/healthz", "~^/_waker/", "~^/admin/", "~^/ui/?")
CORS_HEADERS = "Authorization, Content-Type, X-Api-Key, OpenAI-Organization, OpenAI-Project, OpenAI-Beta"
UPSTREAM_CORS = (
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Credentials",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
    "Access-Control-Expose-Headers",
)


def listen_address(config: Config) -> Address:
    """Where nginx listens: the configured address, or loopback when no API key protects it."""
    listen = config.gateway.listen
    if config.gateway.api_keys or config.gateway.allow_no_keys or listen.host in LOOPBACK_HOSTS:
        return listen
    return Address("127.0.0.1", listen.port)


def exposure_warning(config: Config) -> str | None:
    if config.gateway.api_keys:
        return None
    if listen_address(config) != config.gateway.listen:
        return (
            f"no API key is configured, so the gateway listens on {listen_address(config)} only, not on "
            f"{config.gateway.listen}: set [gateway] api_keys (or api_keys_file) to serve other hosts"
        )
    return (
        f"no API key is configured: anyone who reaches {config.gateway.listen} can use every model; "
        "set [gateway] api_keys (or api_keys_file)"
    )


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def http_lines(config: Config) -> list[str]:
    lines = []
    keys = config.gateway.api_keys
    if keys:
        lines += [
            "    map $http_authorization $key_bearer {",
            "        default 0;",
            *(f"        {_quote('Bearer ' + key)} 1;" for key in keys),
            "    }",
            "    map $http_x_api_key $key_header {",
            "        default 0;",
            *(f"        {_quote(key)} 1;" for key in keys),
            "    }",
            "    map $uri $key_exempt {",
            "        default 0;",
            *(f"        {_quote(path)} 1;" for path in KEY_EXEMPT),
            "    }",
            "    map $key_exempt$key_bearer$key_header $key_denied { default 0; 000 1; }",
        ]
    origins = config.gateway.cors_origins
    if origins:
        patterns = [f"~^{re.escape(o[:-1])}" if o.endswith("*") else o for o in origins]
        lines += [
            "    map $http_origin $cors_origin {",
            "        default '';",
            *(f"        {_quote(p)} $http_origin;" for p in patterns),
            "    }",
            "    map $cors_origin $cors_methods { '' ''; default 'GET, POST, OPTIONS'; }",
            f"    map $cors_origin $cors_headers {{ '' ''; default '{CORS_HEADERS}'; }}",
            "    map $cors_origin $cors_expose { '' ''; default 'Retry-After, X-Busy-Model, X-Waker-Fixups'; }",
            "    map $request_method$cors_origin $cors_preflight { default 0; '~^OPTIONS.' 1; }",
        ]
    return lines


def server_lines(config: Config) -> list[str]:
    # A model server's own CORS answer (vLLM allows every origin by default) must not open the
    # API to every web page: only the allow-list below speaks for the gateway.
    lines = [f"        proxy_hide_header {header};" for header in UPSTREAM_CORS]
    if config.gateway.cors_origins:
        lines += [f"        {line}" for line in cors_headers(config)] + ["        if ($cors_preflight) { return 204; }"]
    if config.gateway.api_keys:
        lines.append("        if ($key_denied) { return 401; }")
    return lines


def cors_headers(config: Config) -> list[str]:
    """The CORS add_header lines, repeated in any location that adds a header of its own (a location
    with an add_header inherits none from the server)."""
    if not config.gateway.cors_origins:
        return []
    return [
        "add_header Access-Control-Allow-Origin $cors_origin always;",
        "add_header Vary Origin always;",
        "add_header Access-Control-Allow-Methods $cors_methods always;",
        "add_header Access-Control-Allow-Headers $cors_headers always;",
        "add_header Access-Control-Expose-Headers $cors_expose always;",
    ]


def admin_restriction(config: Config) -> str:
    """Without an admin token, the admin API and dashboard answer loopback clients only."""
    return "" if config.waker.admin_token else "allow 127.0.0.0/8; allow ::1; deny all; "
