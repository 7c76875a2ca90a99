"""API keys: which requests need one, checking it, documenting it, and the start-up guard.

The check is a pure ASGI middleware keyed on method + path, so a route added later by
anyone is protected by default: every write (POST/PUT/PATCH/DELETE, ...) needs the key,
reads (GET/HEAD/OPTIONS) do not, and only the explicit ``OPEN_WRITES`` list escapes.
Keys are never logged nor echoed back.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson

from ia_continu.config import Settings

log = logging.getLogger(__name__)

HEADER = "X-API-Key"
SCHEME_NAME = "ApiKeyHeader"
_HEADER_BYTES = HEADER.lower().encode()
# Reads stay open; anything else changes state (or may, for a route added later).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Writes that stay open unless IA_PROTECT_PREDICT=true: serving predictions is the product.
OPEN_WRITES = frozenset({("POST", "/predict"), ("POST", "/predict/batch")})
# Reads that stay open even with IA_PROTECT_READS=true: liveness for uptime monitors.
OPEN_READS = frozenset({"/health"})
MISSING_KEY = f"missing API key: send it in the {HEADER} header"
INVALID_KEY = f"invalid API key in the {HEADER} header"
UNAUTHORIZED_DESCRIPTION = f"Missing or invalid API key ({HEADER} header)"
_MIN_KEY_LENGTH = 16

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class SecurityConfigError(RuntimeError):
    """The security settings do not allow the API to start (message says how to fix it)."""


# --- keys ------------------------------------------------------------------------------------


def load_api_keys(settings: Settings) -> tuple[str, ...]:
    """The accepted keys: IA_API_KEYS (comma-separated) plus IA_API_KEYS_FILE (one per
    line, ``#`` comments and blank lines ignored). Empty tuple = no key configured."""
    keys: list[str] = []
    if settings.api_keys is not None:
        found = _split_keys(settings.api_keys.get_secret_value().split(","), "IA_API_KEYS")
        if not found:
            raise SecurityConfigError("IA_API_KEYS is set but contains no key")
        keys += found
    if settings.api_keys_file is not None:
        path = settings.api_keys_file
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            # Starting unprotected because the file is missing would be the worst outcome.
            raise SecurityConfigError(
                f"cannot read IA_API_KEYS_FILE={path}: {type(exc).__name__}: "
                f"{getattr(exc, 'strerror', None) or exc}"
            ) from None
        lines = (line for line in text.splitlines() if not line.lstrip().startswith("#"))
        found = _split_keys(lines, f"IA_API_KEYS_FILE ({path})")
        if not found:
            raise SecurityConfigError(f"IA_API_KEYS_FILE={path} contains no key")
        keys += found
    unique = tuple(dict.fromkeys(keys))
    if any(len(k) < _MIN_KEY_LENGTH for k in unique):
        log.warning(
            "an API key is shorter than %d characters: prefer `openssl rand -hex 32`",
            _MIN_KEY_LENGTH,
        )
    return unique


def _split_keys(items: Iterable[str], source: str) -> list[str]:
    keys = []
    for n, item in enumerate(items, start=1):
        key = item.strip()
        if not key:
            continue
        # HTTP header values are visible ASCII: any other key could never be sent.
        if not all(0x21 <= ord(c) <= 0x7E for c in key):
            raise SecurityConfigError(
                f"{source}: key #{n} contains spaces or non-ASCII characters (key not shown)"
            )
        keys.append(key)
    return keys


def is_loopback_host(host: str) -> bool:
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything, treat it as exposed
        return False


def check_startup_security(settings: Settings) -> tuple[str, ...]:
    """Load the keys, refusing to serve anonymously on a non-loopback address unless
    IA_ALLOW_ANONYMOUS=true says so. Returns the keys."""
    keys = load_api_keys(settings)
    if settings.protect_reads and not keys:
        raise SecurityConfigError(
            "IA_PROTECT_READS=true needs a key to check: set IA_API_KEYS or IA_API_KEYS_FILE"
        )
    if keys or is_loopback_host(settings.host):
        return keys
    if not settings.allow_anonymous:
        raise SecurityConfigError(
            f"refusing to start: IA_HOST={settings.host} is reachable from other machines and "
            "no API key is set. Set IA_API_KEYS (comma-separated) or IA_API_KEYS_FILE, bind "
            "IA_HOST=127.0.0.1, or set IA_ALLOW_ANONYMOUS=true to serve every route without a key."
        )
    log.warning(
        "serving on %s without API keys (IA_ALLOW_ANONYMOUS=true): anyone who reaches the "
        "port can generate, retrain and activate models",
        settings.host,
    )
    return keys


# --- which requests need a key ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProtectionRule:
    protect_predict: bool = False
    protect_reads: bool = False  # IA_PROTECT_READS: every GET/HEAD but OPEN_READS too

    def is_protected(self, method: str, path: str) -> bool:
        method = method.upper()
        if method in SAFE_METHODS:
            return (
                self.protect_reads
                and method != "OPTIONS"
                and (path.rstrip("/") or "/") not in OPEN_READS
            )
        if self.protect_predict:
            return True
        # "/predict/" must not slip past the open list nor be treated differently.
        normalized = path.rstrip("/") or "/"
        return (method, normalized) not in OPEN_WRITES


# --- the middleware ------------------------------------------------------------------------------


class ApiKeyMiddleware:
    """Pure ASGI: one set lookup per open request; for a protected one, one SHA-256 and
    one constant-time comparison per configured key (the router's matching on refusals).

    A write that no route handles (404, 405 for an undeclared method, a slash redirect)
    is left to the router without a key: no endpoint runs, and clients get the same
    404/405 as without keys. Whenever a route would run, the key is required.
    """

    def __init__(
        self, app: ASGIApp, *, keys: Iterable[str], rule: ProtectionRule, router: Any
    ) -> None:
        self.app = app
        # Comparing digests: equal lengths, so even the key's length does not leak.
        self._digests = tuple(hashlib.sha256(k.encode()).digest() for k in keys)
        if not self._digests:
            raise ValueError("ApiKeyMiddleware needs at least one key")
        self._rule = rule
        self._router = router  # read at request time: routes added later count too

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._rule.is_protected(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope["headers"]:
            if name == _HEADER_BYTES:
                given = value
                break
        # Route matching only for refusals: a valid key pays one digest and the comparisons.
        if (given and self._accepts(given)) or not self._routes_to_endpoint(scope):
            await self.app(scope, receive, send)
            return
        await _reject(scope, send, INVALID_KEY if given else MISSING_KEY)

    def _routes_to_endpoint(self, scope: Scope) -> bool:
        from starlette.routing import Match

        # Fail closed: anything but a certain "no route" needs the key.
        try:
            return any(route.matches(scope)[0] is Match.FULL for route in self._router.routes)
        except Exception:
            return True

    def _accepts(self, given: bytes) -> bool:
        # RFC 9110: whitespace around a field value is not part of it (the server strips
        # the leading one only).
        digest = hashlib.sha256(given.strip(b" \t")).digest()
        matched = False
        for expected in self._digests:  # no early exit: time does not tell which key matched
            matched |= hmac.compare_digest(digest, expected)
        return matched


async def _reject(scope: Scope, send: Send, detail: str) -> None:
    client = scope.get("client")
    log.info(
        "401 %s %s from %s: %s",
        scope["method"],
        scope["path"],
        client[0] if client else "?",
        detail.split(":")[0],
    )
    body = orjson.dumps({"detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", f'ApiKey header="{HEADER}"'.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# --- OpenAPI -------------------------------------------------------------------------------------

_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def document_api_key(schema: dict[str, Any], rule: ProtectionRule) -> dict[str, Any]:
    """Declare the X-API-Key scheme and a 401 answer on exactly the protected operations
    (the same rule the middleware applies). Idempotent."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SCHEME_NAME] = {
        "type": "apiKey",
        "in": "header",
        "name": HEADER,
        "description": "Required on every write route (see the 401 responses).",
    }
    unauthorized = {
        "description": UNAUTHORIZED_DESCRIPTION,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"detail": {"type": "string"}},
                    "required": ["detail"],
                }
            }
        },
    }
    for path, item in schema.get("paths", {}).items():
        for method in _HTTP_METHODS:
            operation = item.get(method)
            if operation is None or not rule.is_protected(method, path):
                continue
            operation["security"] = [{SCHEME_NAME: []}]
            operation.setdefault("responses", {})["401"] = unauthorized
    return schema
