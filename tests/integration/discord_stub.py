"""A real HTTP server on loopback standing in for a Discord webhook.

It records every request (path, JSON body, arrival time) and answers from a script of
responses: (status, JSON body or None, delay in seconds before answering).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WEBHOOK_PATH = "/api/webhooks/123456/s3cr3t-t0ken-do-not-log"


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    at: float  # time.monotonic() on arrival


@dataclass
class DiscordStub:
    responses: list[tuple[int, dict[str, Any] | None, float]] = field(default_factory=list)
    default: tuple[int, dict[str, Any] | None, float] = (204, None, 0.0)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}{WEBHOOK_PATH}"

    def script(self, *responses: tuple[int, dict[str, Any] | None, float]) -> None:
        with self.lock:
            self.responses = list(responses)
            self.received.clear()

    def next_response(self) -> tuple[int, dict[str, Any] | None, float]:
        with self.lock:
            return self.responses.pop(0) if self.responses else self.default

    def embeds(self) -> list[dict[str, Any]]:
        return [e for r in self.received for e in r.body.get("embeds", [])]

    def __enter__(self) -> DiscordStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                with stub.lock:
                    stub.received.append(
                        Received(path=self.path, body=json.loads(raw or b"{}"), at=time.monotonic())
                    )
                status, body, delay = stub.next_response()
                if delay:
                    time.sleep(delay)
                data = json.dumps(body).encode() if body is not None else b""
                try:
                    self.send_response(status)
                    if data:
                        self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
