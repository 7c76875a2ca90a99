"""Connection-level limits for `ia-continu serve`: header size, slow clients, connection cap.

uvicorn's httptools protocol has none of them: httptools (llhttp) buffers a header of any
size before calling back (a 300 MiB header took the worker from 370 to 798 MiB), a
connection that never completes its request stays open forever (1,100 of them exhausted
a 1,024-file limit and /health failed), and ``limit_concurrency`` answers 503 to *requests*
(with a warning per request) while the sockets stay open. This subclass adds, per worker:

- ``max_header_bytes``: the request line and headers of one request; past it, 431 and the
  connection is closed (nothing more is buffered);
- ``header_timeout``: seconds from the connection (or the first byte of a keep-alive
  request) to the end of the headers; ``body_timeout``: seconds from the end of the headers
  to the end of the body. Either expired: the connection is closed (408 when nothing was
  answered yet);
- ``max_connections``: past it, the oldest connection that is not being served (idle
  keep-alive, or still sending its request) is closed to make room; when every connection
  has a request in progress, the new one gets 503 and is closed. One WARNING line every
  10 s at most says so, with counts.

The per-request cost is a few attribute writes: the deadlines are checked by one sweep
per second over the worker's connections rather than a timer armed per request.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

# What a connection is doing, for the deadlines and the choice of whom to evict.
_IDLE = 0  # keep-alive between requests: uvicorn's keep-alive timeout applies
_HEADERS = 1  # connected or first byte received, headers not complete
_BODY = 2  # headers complete, body not complete
_SERVING = 3  # request complete, the application is answering

_SWEEP_SECONDS = 1.0
_REPORT_SECONDS = 10.0
_FD_RESERVE = 64  # files a worker needs besides its client sockets (database, logs, ...)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_header_bytes: int = 16_384
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 1000


def effective_max_connections(configured: int) -> int:
    """The cap, lowered to fit the process's open-file limit (a socket is a file)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft - _FD_RESERVE))


class _WorkerGuard:
    """Per worker (per event loop): the sweep task and the rate-limited reports."""

    def __init__(self, limits: HttpLimits, loop: asyncio.AbstractEventLoop) -> None:
        self.limits = limits
        self.max_connections = effective_max_connections(limits.max_connections)
        if self.max_connections < limits.max_connections:
            log.warning(
                "IA_MAX_CONNECTIONS=%d lowered to %d per worker: the open-file limit is %d",
                limits.max_connections,
                self.max_connections,
                resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            )
        self.loop = loop
        self.connections: set[GuardedHttpToolsProtocol] = set()
        self.evicted = 0
        self.refused = 0
        self.timed_out = {_HEADERS: 0, _BODY: 0}
        self.too_large = 0
        self._last_report = 0.0
        self._sweeper = loop.call_later(_SWEEP_SECONDS, self.sweep)

    def sweep(self) -> None:
        now = time.monotonic()
        header_deadline = now - self.limits.header_timeout
        body_deadline = now - self.limits.body_timeout
        for conn in list(self.connections):
            phase = conn.ia_phase
            # A body whose reading the server paused (pipelined behind a slow request,
            # or not consumed yet by the application) is not the client's fault.
            if (phase == _HEADERS and conn.ia_since < header_deadline) or (
                phase == _BODY and conn.ia_since < body_deadline and not conn.flow.read_paused
            ):
                self.timed_out[phase] += 1
                conn.close_slow_client()
        self.report(now)
        if self.connections or self.has_news():
            self._sweeper = self.loop.call_later(_SWEEP_SECONDS, self.sweep)
        else:
            self._sweeper = None  # type: ignore[assignment]

    def ensure_sweeping(self) -> None:
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(_SWEEP_SECONDS, self.sweep)

    def make_room(self, newcomer: GuardedHttpToolsProtocol) -> bool:
        """At the cap: close the oldest connection not being served. False = none."""
        victim = None
        for conn in self.connections:
            if conn is newcomer or conn.ia_phase == _SERVING:
                continue
            # Idle keep-alive connections go first, then the slowest request senders.
            key = (conn.ia_phase != _IDLE, conn.ia_since)
            if victim is None or key < (victim.ia_phase != _IDLE, victim.ia_since):
                victim = conn
        if victim is None:
            return False
        self.evicted += 1
        victim.close_slow_client()
        return True

    def report(self, now: float) -> None:
        """One WARNING line with what the limits did since the last one (every 10 s at
        most; the sweep goes on until it is out)."""
        if not self.has_news() or now - self._last_report < _REPORT_SECONDS:
            return
        self._last_report = now
        limits = self.limits
        parts = [
            (self.evicted, "idle or slow connections closed to make room"),
            (self.refused, "new connections refused with 503 (every connection busy)"),
            (self.too_large, f"requests over IA_MAX_HEADER_BYTES={limits.max_header_bytes} (431)"),
            (
                self.timed_out[_HEADERS],
                f"connections closed for headers slower than "
                f"IA_HEADER_TIMEOUT={limits.header_timeout:g}s",
            ),
            (
                self.timed_out[_BODY],
                f"connections closed for bodies slower than "
                f"IA_BODY_TIMEOUT={limits.body_timeout:g}s",
            ),
        ]
        log.warning(
            "HTTP limits (this worker: %d connections open, cap IA_MAX_CONNECTIONS=%d): %s",
            len(self.connections),
            self.max_connections,
            ", ".join(f"{count} {what}" for count, what in parts if count),
        )
        self.evicted = self.refused = self.too_large = 0
        self.timed_out = {_HEADERS: 0, _BODY: 0}

    def has_news(self) -> bool:
        return bool(self.evicted or self.refused or self.too_large or any(self.timed_out.values()))


_GUARDS: dict[int, _WorkerGuard] = {}


def _guard_for(limits: HttpLimits, loop: asyncio.AbstractEventLoop) -> _WorkerGuard:
    guard = _GUARDS.get(id(loop))
    if guard is None or guard.loop is not loop:
        guard = _GUARDS[id(loop)] = _WorkerGuard(limits, loop)
    return guard


def _plain_response(status: bytes, message: str) -> bytes:
    body = message.encode()
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )


# The base class's callbacks called directly: a zero-argument super() per callback, five
# callbacks per request, is measurable at this rate.
_Base = HttpToolsProtocol


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above (``http=`` of uvicorn's config,
    through functools.partial(GuardedHttpToolsProtocol, limits=...))."""

    def __init__(self, *args: Any, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ia_limits = limits
        self.ia_max_header_bytes = limits.max_header_bytes  # read per chunk received
        self.ia_guard = _guard_for(limits, self.loop)
        self.ia_phase = _HEADERS
        self.ia_since = time.monotonic()
        self.ia_header_bytes = 0  # since the last request's end: the next request's head
        self.ia_in_body = False  # between a request's headers and its end
        self.ia_refused = False  # answered 431: the rest of the bytes are ignored

    # --- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self.ia_guard
        guard.connections.add(self)
        guard.ensure_sweeping()
        self.ia_since = time.monotonic()
        if len(guard.connections) > guard.max_connections and not guard.make_room(self):
            guard.refused += 1
            guard.report(time.monotonic())
            self.ia_phase = _IDLE
            transport.write(_plain_response(b"503 Service Unavailable", "too many connections"))
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ia_guard.connections.discard(self)
        super().connection_lost(exc)

    def close_slow_client(self) -> None:
        """Deadline passed or room needed: 408 if a request had begun but was not handed to
        the application yet (nothing can have been answered), then close."""
        phase, self.ia_phase = self.ia_phase, _IDLE
        if self.transport.is_closing():
            return
        if phase == _HEADERS and self.ia_header_bytes:
            self.transport.write(_plain_response(b"408 Request Timeout", "request timeout"))
        self.transport.close()

    # --- bytes in -----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        # Counted outside bodies, pipelined requests included (whatever the phase).
        if not self.ia_in_body:
            self.ia_header_bytes += len(data)
        _Base.data_received(self, data)
        # Still in a head after this chunk and already over the limit: stop before
        # httptools buffers any more of it.
        if (
            not self.ia_in_body
            and self.ia_header_bytes > self.ia_max_header_bytes
            and not self.transport.is_closing()
        ):
            self._refuse_headers()

    def _refuse_headers(self) -> None:
        guard = self.ia_guard
        guard.too_large += 1
        guard.report(time.monotonic())
        self.ia_phase = _IDLE
        self.ia_refused = True
        limit = self.ia_limits.max_header_bytes
        self.transport.write(
            _plain_response(
                b"431 Request Header Fields Too Large",
                f"request line and headers larger than {limit} bytes",
            )
        )
        self.transport.close()

    # --- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        _Base.on_message_begin(self)
        if self.ia_phase == _IDLE:  # a keep-alive connection's next request
            self.ia_phase = _HEADERS
            self.ia_since = time.monotonic()

    def on_headers_complete(self) -> None:
        limit = self.ia_max_header_bytes
        # The bytes counted include the whole last chunk, body too: only when they pass the
        # limit is the head's exact size worth computing.
        if self.ia_header_bytes > limit and (
            len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers) > limit
        ):
            self._refuse_headers()
            return
        self.ia_in_body = True
        if self.ia_phase == _HEADERS:  # not while an earlier pipelined request is served
            self.ia_phase = _BODY
            self.ia_since = time.monotonic()
        _Base.on_headers_complete(self)

    def on_body(self, body: bytes) -> None:
        if not self.ia_refused:
            _Base.on_body(self, body)

    def on_message_complete(self) -> None:
        if self.ia_refused:
            return
        _Base.on_message_complete(self)
        self.ia_header_bytes = 0
        self.ia_in_body = False
        # Answered before the body ended (a 401, a 413): nothing left to serve.
        self.ia_phase = _IDLE if self.cycle.response_complete else _SERVING

    def on_response_complete(self) -> None:
        _Base.on_response_complete(self)
        if self.ia_phase == _SERVING:
            self.ia_phase = _IDLE
