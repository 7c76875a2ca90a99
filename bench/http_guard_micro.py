"""CPU cost per request of the HTTP hardening, isolated from the network and the machine's
load (which makes wrk figures on a shared machine swing tenfold).

    .venv/bin/python bench/http_guard_micro.py [--requests 20000] [--rounds 5]

Two measurements, each interleaved ABBA for ``--rounds`` rounds (median kept):
1. the protocol: a keep-alive /predict request (headers + JSON body) fed to uvicorn's
   ``HttpToolsProtocol`` and to ``GuardedHttpToolsProtocol`` over an in-memory transport,
   with an ASGI app that answers at once;
2. the middleware: ``RequestRulesMiddleware`` around that app,
   against the app alone, called directly.
The difference is the time the hardening adds to each /predict, to compare with the
request's whole CPU cost (bench/predict_logging_ab.sh prints it).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from ia_continu.api.guard import RequestRulesMiddleware
from ia_continu.api.server import GuardedHttpToolsProtocol, HttpLimits

BODY = b'{"features": [0.3, -1.2]}'
REQUEST = (
    b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nUser-Agent: wrk\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)
ANSWER = b'{"prediction": 1}'


async def answer(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"17")],
        }
    )
    await send({"type": "http.response.body", "body": ANSWER})


class _Transport:
    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += 1

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 9000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def time_protocol(factory: Any, n: int) -> float:
    config = Config(app=answer, lifespan="off", log_level="warning")
    config.load()
    protocol = factory(config=config, server_state=ServerState(), app_state={})
    transport = _Transport()
    protocol.connection_made(transport)
    started = time.process_time()
    for _ in range(n):
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)  # the request's task runs and answers
        await asyncio.sleep(0)
    elapsed = time.process_time() - started
    assert transport.written >= n, transport.written
    return elapsed / n * 1e6


async def time_app(app: Any, n: int) -> float:
    headers = [
        (b"host", b"127.0.0.1:9000"),
        (b"user-agent", b"wrk"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
    ]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: Any) -> None:
        pass

    started = time.process_time()
    for _ in range(n):
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/predict",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
        }
        await app(scope, receive, send)
    return (time.process_time() - started) / n * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    limits = HttpLimits()

    def guarded_factory(**kwargs: Any) -> Any:
        return GuardedHttpToolsProtocol(limits=limits, **kwargs)

    wrapped = RequestRulesMiddleware(answer, keyless=True)
    rows: dict[str, list[float]] = {k: [] for k in ("plain", "guarded", "app", "wrapped")}
    for n in range(args.rounds):  # ABBA: a drift in the machine's load hits both alike
        order = [("plain", "guarded"), ("app", "wrapped")]
        if n % 2:
            order = [(b, a) for a, b in order]
        for name in (name for pair in order for name in pair):
            if name in ("plain", "guarded"):
                factory = HttpToolsProtocol if name == "plain" else guarded_factory
                rows[name].append(await time_protocol(factory, args.requests))
            else:
                rows[name].append(
                    await time_app(answer if name == "app" else wrapped, args.requests)
                )
    m = {k: statistics.median(v) for k, v in rows.items()}
    print(
        f"protocol per request: uvicorn httptools {m['plain']:.2f} us, guarded "
        f"{m['guarded']:.2f} us (+{m['guarded'] - m['plain']:.2f} us)"
    )
    print(
        f"middlewares per request: app alone {m['app']:.2f} us, with RequestRules "
        f"{m['wrapped']:.2f} us (+{m['wrapped'] - m['app']:.2f} us)"
    )
    print(f"total added per /predict: {m['guarded'] - m['plain'] + m['wrapped'] - m['app']:.2f} us")


if __name__ == "__main__":
    asyncio.run(main())
