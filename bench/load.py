"""Load generators: wrk for throughput and tail latency, a keep-alive client for the
time of single large requests (with the server's CPU time per request beside it)."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LUA_POST = Path(__file__).with_name("wrk_post.lua")


def ensure_wrk(*, install: bool = True) -> str | None:
    """The wrk binary, installed with apt-get when missing (and allowed); else None."""
    found = shutil.which("wrk")
    if found or not install or not shutil.which("apt-get"):
        return found
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*args: str) -> None:
        subprocess.run(
            [*prefix, "apt-get", *args], env=env, capture_output=True, check=False, timeout=600
        )

    apt("install", "-y", "-q", "wrk")
    if not shutil.which("wrk"):  # stale package lists on a fresh machine
        apt("update", "-q")
        apt("install", "-y", "-q", "wrk")
    return shutil.which("wrk")


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx answers + socket errors
    cpu_us_per_request: float | None = None  # server CPU / requests served

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    def grab(pattern: str) -> str:
        match = re.search(pattern, output, re.MULTILINE)
        if not match:
            raise ValueError(f"wrk output without {pattern!r}:\n{output}")
        return match.group(1)

    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output):
        errors += int(m.group(1))
    if m := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        errors += sum(int(g) for g in m.groups())
    return WrkResult(
        rps=float(grab(r"^Requests/sec:\s+([\d.]+)")),
        p50_ms=_ms(grab(r"^\s+50%\s+(\S+)")),
        p99_ms=_ms(grab(r"^\s+99%\s+(\S+)")),
        requests=int(grab(r"^\s+(\d+) requests in")),
        errors=errors,
    )


def run_wrk(
    wrk: str,
    url: str,
    *,
    connections: int,
    seconds: float,
    body: str | None = None,
    server_cpu: Callable[[], float] | None = None,
) -> WrkResult:
    """One wrk run (one thread, like the issue's reference figures)."""
    argv = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    env = dict(os.environ)
    if body is not None:
        argv += ["-s", str(LUA_POST)]
        env["WRK_BODY"] = body
    cpu_before = server_cpu() if server_cpu else 0.0
    out = subprocess.run(
        [*argv, url], env=env, capture_output=True, text=True, check=True, timeout=seconds + 60
    )
    result = parse_wrk(out.stdout)
    if server_cpu and result.requests:
        result.cpu_us_per_request = (server_cpu() - cpu_before) / result.requests * 1e6
    return result


def median_result(results: list[WrkResult]) -> WrkResult:
    """Field-wise median over rounds."""

    def med(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    return WrkResult(
        rps=statistics.median(r.rps for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        requests=sum(r.requests for r in results),
        errors=sum(r.errors for r in results),
        cpu_us_per_request=med([r.cpu_us_per_request for r in results]),
    )


@dataclass
class Timed:
    median_ms: float
    min_ms: float
    max_ms: float
    n: int
    cpu_ms_per_request: float | None  # the server's CPU time per request
    status: int
    last_body: bytes
    last_headers: dict[str, str]

    def summary(self) -> dict[str, Any]:
        return {
            "median_ms": round(self.median_ms, 3),
            "min_ms": round(self.min_ms, 3),
            "max_ms": round(self.max_ms, 3),
            "n": self.n,
            "server_cpu_ms_per_request": None
            if self.cpu_ms_per_request is None
            else round(self.cpu_ms_per_request, 3),
        }


def time_requests(
    port: int,
    path: str,
    *,
    body: bytes | None,
    n: int,
    server_cpu: Callable[[], float] | None = None,
    timeout: float = 300.0,
    warmup: int = 1,
    min_seconds: float = 0.0,
    content_type: str = "application/json",
) -> Timed:
    """At least ``n`` sequential requests (and ``min_seconds``, so that the server's CPU
    time, counted in 10 ms ticks, is meaningful) on one keep-alive connection with a
    pre-encoded body: the client-side time is an upper bound of the server's time."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Content-Type": content_type}
    method = "GET" if body is None else "POST"

    def once() -> tuple[float, int, bytes, dict[str, str]]:
        started = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        return elapsed, response.status, data, dict(response.getheaders())

    try:
        for _ in range(warmup):
            once()
        cpu_before = server_cpu() if server_cpu else 0.0
        times, status, data, hdrs = [], 0, b"", {}
        started = time.perf_counter()
        while len(times) < n or time.perf_counter() - started < min_seconds:
            elapsed, status, data, hdrs = once()
            if status != 200:
                raise RuntimeError(f"{method} {path} answered {status}: {data[:300]!r}")
            times.append(elapsed)
        cpu = (server_cpu() - cpu_before) * 1000 / len(times) if server_cpu else None
    finally:
        conn.close()
    return Timed(
        median_ms=statistics.median(times),
        min_ms=min(times),
        max_ms=max(times),
        n=len(times),
        cpu_ms_per_request=cpu,
        status=status,
        last_body=data,
        last_headers={k.lower(): v for k, v in hdrs.items()},
    )


def parse_server_timing(header: str) -> dict[str, float]:
    """``name;dur=12.3, …`` -> {name: milliseconds}."""
    out: dict[str, float] = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";")
        if m := re.search(r"dur=([\d.]+)", rest):
            out[name] = float(m.group(1))
    return out
