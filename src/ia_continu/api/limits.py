"""Request body size limit, enforced before any parsing (pure ASGI, no framework)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOO_LARGE_STATUS = 413


class BodySizeLimitMiddleware:
    """Answer 413 to any request whose body exceeds ``max_bytes``.

    A declared Content-Length over the limit is refused before a byte is read. Bodies
    without one (chunked) are counted as they stream in: past the limit, the client gets
    the 413 and the application sees a disconnected client, so nothing reaches a parser.
    """

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, path_limits: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # Exact paths with their own limit (POST /datasets takes 10,000 labelled rows).
        self.path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.path_limits.get(scope.get("path", ""), self.max_bytes)
        declared = _content_length(scope)
        if declared is not None and declared > max_bytes:
            await self._refuse(send, max_bytes)
            return

        received = 0
        refused = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    refused = True
                    if not response_started:
                        await self._refuse(send, max_bytes)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if refused:  # the 413 went out already; drop the application's answer
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)

    async def _refuse(self, send: Send, max_bytes: int) -> None:
        body = orjson.dumps({"detail": f"request body larger than {max_bytes} bytes"})
        await send(
            {
                "type": "http.response.start",
                "status": TOO_LARGE_STATUS,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    # The rest of the body is not read: the connection cannot be reused.
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server rejects it; otherwise the stream is counted
    return None


def document_body_limit(
    openapi_schema: dict[str, Any], *, max_bytes: int, path_limits: Mapping[str, int] | None = None
) -> None:
    """Add the 413 answer to every operation that takes a request body."""
    for path, path_item in openapi_schema.get("paths", {}).items():
        limit = (path_limits or {}).get(path, max_bytes)
        for operation in path_item.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                operation.setdefault("responses", {}).setdefault(
                    str(TOO_LARGE_STATUS),
                    {
                        "description": f"Request body larger than {limit} bytes",
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
