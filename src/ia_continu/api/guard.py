"""Request rules applied before any route runs (pure ASGI, no framework).

``RequestRulesMiddleware`` (inside the metrics, so its answers are counted, outside the
API-key check):

- a path holding a NUL byte is 404 and a query string holding one is 422: no route can
  match it, and PostgreSQL refuses NUL in text (that was a 503 "database unavailable");
- without API keys (keyless mode), a ``Host`` not in the allowed list is 400: the
  DNS-rebinding defence (an attacker's name resolving to 127.0.0.1 reaches the API from
  the user's browser, with the attacker's name in Host), as MLflow's own server does;
- without API keys, a write (any method but GET/HEAD/OPTIONS) whose ``Origin`` is neither
  the service's own (``http(s)://`` + its Host) nor in IA_ALLOWED_ORIGINS is 403: a web
  page the user visits cannot retrain or roll back a local instance. Clients that send no
  Origin (curl, scripts, the monitoring flow) are not browsers and are not concerned;
- a write with a body whose media type the route does not declare is 415. JSON only by
  default (``text/plain`` and form posts are what a cross-site form can send without a
  preflight); a route that takes more declares it in ``BODY_CONTENT_TYPES``.

The same middleware serves HEAD as GET wherever GET is (the server drops the body), and
logs a client that disconnects before its request body is complete in one INFO line
instead of an "Exception in ASGI application" traceback; ``CLIENT_GONE`` in the scope tells
the metrics middleware to count it with status 499. One middleware rather than several:
each ASGI layer costs ~1 µs on every /predict.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from starlette.requests import ClientDisconnect

from ia_continu.api.security import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

# Set in the scope when the client went away mid-request; the metrics count it as 499.
CLIENT_GONE = "ia.client_gone"
CLIENT_GONE_STATUS = 499

JSON = "application/json"
DEFAULT_BODY_CONTENT_TYPES: frozenset[str] = frozenset({JSON})
# Media types accepted in a request body, per path (no trailing slash); every other write
# takes JSON only.
BODY_CONTENT_TYPES: dict[str, frozenset[str]] = {
    # Labelled uploads come as JSON or as CSV with a feature1,feature2,target header.
    "/datasets": frozenset({JSON, "text/csv"}),
}

# Content-Type values accepted without parsing on a JSON-only path (the common case).
_PLAIN_JSON = frozenset({b"application/json", b"application/json; charset=utf-8"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_ALWAYS_ALLOWED_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})


def allowed_hosts_for(bind_host: str, extra: str) -> tuple[frozenset[str], bool, bool]:
    """(allowed host names, any host allowed, IP literals allowed) for keyless mode."""
    names = set(_ALWAYS_ALLOWED_HOSTS)
    bind = bind_host.strip().strip("[]").lower()
    ip_literals = bind in _WILDCARD_BINDS  # reachable at any of the machine's addresses
    if not ip_literals:
        names.add(bind)
    extra_names = {h.strip().lower().strip("[]") for h in extra.split(",") if h.strip()}
    return frozenset(names | extra_names), "*" in extra_names, ip_literals


def _split_csv(value: str) -> frozenset[str]:
    return frozenset(v.strip().rstrip("/").lower() for v in value.split(",") if v.strip())


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:9000
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        return host.rsplit(":", 1)[0]
    return host


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _nul_query_errors(query: bytes) -> list[dict[str, object]]:
    """A validation-style detail naming each query parameter that holds a NUL, like
    FastAPI's own 422s (clients read ``loc``)."""
    from urllib.parse import parse_qsl

    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    names = [name for name, value in pairs if "\x00" in name or "\x00" in value]
    return [
        {
            "type": "string_pattern_mismatch",
            "loc": ["query", name.replace("\x00", "")],
            "msg": "NUL characters are not allowed",
        }
        for name in names or ["query string"]
    ]


async def _answer(send: Send, status: int, detail: str | list[dict[str, object]]) -> None:
    body = orjson.dumps({"detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _shown(value: str) -> str:
    return repr(value[:100])


class RequestRulesMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        keyless: bool,
        bind_host: str = "127.0.0.1",
        allowed_hosts: str = "",
        allowed_origins: str = "",
        body_content_types: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.app = app
        self.keyless = keyless
        self.hosts, self.any_host, self.ip_hosts = allowed_hosts_for(bind_host, allowed_hosts)
        self.origins = _split_csv(allowed_origins)
        self.any_origin = "*" in self.origins
        table = BODY_CONTENT_TYPES if body_content_types is None else body_content_types
        self.content_types = {p: frozenset(t) for p, t in table.items()}
        self._accepted_hosts: set[bytes] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "HEAD":
            # The server keeps its own scope (method HEAD) and sends no body.
            scope = {**scope, "method": "GET"}
        path: str = scope["path"]
        if "\x00" in path:
            await _answer(send, 404, "Not Found")
            return
        query: bytes = scope.get("query_string", b"")
        if query and (b"%00" in query or b"\x00" in query):
            await _answer(send, 422, _nul_query_errors(query))
            return
        host = origin = content_type = None
        has_body = False
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"origin":
                origin = value
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length":
                has_body = value.strip() not in (b"0", b"")
            elif name == b"transfer-encoding":
                has_body = True
        write = scope["method"] not in _SAFE_METHODS
        # Fast path: a Host header already accepted, no Origin (scripts, curl, probes).
        if self.keyless and path != "/health" and (origin is None or not write):
            problem = None if host in self._accepted_hosts else self._check_host(host)
        elif self.keyless and path != "/health":
            problem = self._check_site(host, origin)
        else:
            problem = None
        if problem is not None:
            status, detail = problem
            client = scope.get("client")
            log.info(
                "%d %s %s from %s: %s",
                status,
                scope["method"],
                path,
                client[0] if client else "?",
                detail,
            )
            await _answer(send, status, detail)
            return
        if write and has_body:
            key = path.rstrip("/") or "/"
            if content_type in _PLAIN_JSON and key not in self.content_types:
                await self._serve(scope, receive, send)
                return
            accepted = self.content_types.get(key, DEFAULT_BODY_CONTENT_TYPES)
            media = (
                content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
                if content_type
                else ""
            )
            if media not in accepted:
                await _answer(
                    send,
                    415,
                    f"Content-Type must be {' or '.join(sorted(accepted))}"
                    f" (got {_shown(media) if media else 'none'})",
                )
                return
        await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the application, telling a client that left mid-body from a server error."""
        body_done = False

        async def watching_receive() -> Message:
            nonlocal body_done
            message = await receive()
            if message["type"] == "http.request":
                if not message.get("more_body", False):
                    body_done = True
            elif message["type"] == "http.disconnect" and not body_done:
                scope[CLIENT_GONE] = True  # read by the metrics middleware: status 499
            return message

        abandoned = False
        try:
            await self.app(scope, watching_receive, send)
        except ClientDisconnect:  # raised by Request.body(); FastAPI's parsing answers 400
            abandoned = True
        if scope.get(CLIENT_GONE):
            client: Any = scope.get("client")
            log.info(
                "client %s disconnected before sending the whole body of %s %s (499)",
                client[0] if client else "?",
                scope["method"],
                scope["path"],
            )
        elif abandoned:  # answered already (413): the body was left unread on purpose
            log.debug("body of %s %s left unread", scope["method"], scope["path"])

    def _check_host(self, host: bytes | None) -> tuple[int, str] | None:
        if host is None or self.any_host:
            return None
        name = _hostname(host.decode("latin-1"))
        if name not in self.hosts and not (self.ip_hosts and _is_ip_literal(name)):
            return 400, (
                f"Host {_shown(name)} is not allowed without an API key (DNS-rebinding "
                "defence): add it to IA_ALLOWED_HOSTS or set IA_API_KEYS"
            )
        if len(self._accepted_hosts) < 64:  # bounded: Host values are client-chosen
            self._accepted_hosts.add(host)
        return None

    def _check_site(self, host: bytes | None, origin: bytes | None) -> tuple[int, str] | None:
        problem = self._check_host(host)
        if problem is not None:
            return problem
        host_text = host.decode("latin-1") if host is not None else ""
        if origin is not None and not self.any_origin:
            given = origin.decode("latin-1").strip().rstrip("/").lower()
            own = host_text.strip().lower()
            if given not in self.origins and given not in (f"http://{own}", f"https://{own}"):
                return 403, (
                    f"cross-site write refused: Origin {_shown(given)} is not this service's "
                    "own; add it to IA_ALLOWED_ORIGINS or set IA_API_KEYS"
                )
        return None


def document_content_types(openapi_schema: dict[str, Any]) -> None:
    """Add the 415 answer to every operation that takes a request body (idempotent)."""
    for path, path_item in openapi_schema.get("paths", {}).items():
        accepted = BODY_CONTENT_TYPES.get(path, DEFAULT_BODY_CONTENT_TYPES)
        for operation in path_item.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                operation.setdefault("responses", {}).setdefault(
                    "415",
                    {
                        "description": "Body not sent as " + " or ".join(sorted(accepted)),
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"detail": {"type": "string"}},
                                    "required": ["detail"],
                                }
                            }
                        },
                    },
                )


__all__ = [
    "BODY_CONTENT_TYPES",
    "CLIENT_GONE",
    "CLIENT_GONE_STATUS",
    "DEFAULT_BODY_CONTENT_TYPES",
    "RequestRulesMiddleware",
    "allowed_hosts_for",
]
