"""Load and soak driver: concurrent clients mixing /predict, /generate, /evaluate, /retrain.

    make soak DURATION=600                  # against `make run`'s stack (ports 9000, 5000)
    python bench/soak.py --duration 120 --api-port 9106 --mlflow-port 5106

When nothing answers on the API port, a stack is started (``ia-continu up``, data in a
temporary directory) on the given ports and stopped at the end. Prints requests by route
and status, p50/p99 latencies, errors, and the memory (RSS) of every process of the
stack at the start and at the end. ``run_load`` is also used by the load tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROUTES = ("/predict", "/generate", "/evaluate", "/retrain", "/feedback")
# Share of the requests each client sends to each route (the rest of the mix is /predict
# whenever the retrain slots are taken: retrains are slow and would soon hold every client).
DEFAULT_WEIGHTS = {"/predict": 64, "/generate": 12, "/evaluate": 12, "/retrain": 6, "/feedback": 6}
GENERATE_SIZES = (100, 200, 500, 1000, 2000, 5000, 10_000)


@dataclass
class LoadStats:
    """What the clients saw."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter[str] = field(default_factory=Counter)  # transport errors, by route+type
    error_samples: list[str] = field(default_factory=list)
    generations: list[tuple[int, int]] = field(default_factory=list)  # (id, samples_created)
    served_versions: Counter[str] = field(default_factory=Counter)  # /predict and /evaluate
    trained_versions: list[str] = field(default_factory=list)
    # prediction_id -> the last label sent for it (each client labels only its own ids,
    # sequentially: the stored label must be this one).
    labels: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())

    @property
    def server_errors(self) -> dict[tuple[str, int], int]:
        return {k: v for k, v in self.statuses.items() if k[1] >= 500}

    def percentile(self, route: str, q: float) -> float:
        values = sorted(self.latencies.get(route, []))
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))]

    def report(self) -> str:
        lines = [
            f"{self.requests} requests in {self.elapsed:.1f} s "
            f"({self.requests / max(self.elapsed, 1e-9):.0f}/s)",
            f"{'route':<10} {'status':>6} {'count':>8}",
        ]
        for (route, status), count in sorted(self.statuses.items()):
            lines.append(f"{route:<10} {status:>6} {count:>8}")
        lines.append(f"{'route':<10} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
        for route in ROUTES:
            if self.latencies.get(route):
                lines.append(
                    f"{route:<10} {1000 * self.percentile(route, 0.50):>9.1f} "
                    f"{1000 * self.percentile(route, 0.99):>9.1f} "
                    f"{1000 * max(self.latencies[route]):>9.1f}"
                )
        errors = sum(self.errors.values()) + sum(self.server_errors.values())
        lines.append(f"errors: {errors} (transport {dict(self.errors)}, 5xx {self.server_errors})")
        lines.extend(f"  e.g. {sample}" for sample in self.error_samples[:5])
        lines.append(
            f"datasets generated: {len(self.generations)}, models trained: "
            f"{len(self.trained_versions)}, versions served: {dict(self.served_versions)}"
        )
        return "\n".join(lines)


async def run_load(
    base_url: str,
    *,
    duration: float,
    clients: int = 50,
    weights: dict[str, int] | None = None,
    retrain_slots: int = 2,
    headers: dict[str, str] | None = None,
    seed: int = 0,
    timeout: float = 180.0,
) -> LoadStats:
    """``clients`` concurrent loops for ``duration`` seconds; requests in flight at the
    deadline are awaited, so every request sent is counted."""
    weights = weights or DEFAULT_WEIGHTS
    stats = LoadStats()
    known_ids: list[int] = []
    retrains = asyncio.Semaphore(retrain_slots)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    start = time.monotonic()
    deadline = start + duration

    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=timeout, limits=limits
    ) as http:

        async def call(route: str, body: dict[str, Any] | None) -> httpx.Response | None:
            t0 = time.perf_counter()
            try:
                response = await http.post(route, json=body)
            except httpx.HTTPError as exc:
                stats.errors[f"{route} {type(exc).__name__}"] += 1
                if len(stats.error_samples) < 20:
                    stats.error_samples.append(f"{route}: {type(exc).__name__}: {exc}")
                return None
            stats.latencies[route].append(time.perf_counter() - t0)
            stats.statuses[(route, response.status_code)] += 1
            if response.status_code >= 500 and len(stats.error_samples) < 20:
                stats.error_samples.append(f"{route}: {response.status_code} {response.text}")
            return response

        async def client(rng: random.Random) -> None:
            routes, shares = list(weights), list(weights.values())
            mine: list[str] = []  # ids of the predictions this client was answered
            while time.monotonic() < deadline:
                route = rng.choices(routes, shares)[0]
                if route == "/retrain":
                    if retrains.locked():
                        route = "/predict"
                    else:
                        async with retrains:
                            await _retrain(rng)
                        continue
                if route == "/predict":
                    response = await call(
                        "/predict", {"features": [rng.gauss(0, 2), rng.gauss(0, 2)]}
                    )
                    if response is not None and response.status_code == 200:
                        answer = response.json()
                        stats.served_versions[answer["model_version"]] += 1
                        mine.append(answer["prediction_id"])
                elif route == "/feedback":
                    # One label or a few, for ids this client was given (relabelled at
                    # times: a replacement); an orphan id never, so orphans stay 0.
                    picked = rng.sample(mine, min(len(mine), rng.randint(1, 20)))
                    if not picked:
                        continue
                    items = [{"prediction_id": i, "label": rng.randint(0, 1)} for i in picked]
                    one = len(items) == 1
                    response = await call("/feedback", items[0] if one else {"items": items})
                    if response is not None and response.status_code == 200:
                        stats.labels.update((i["prediction_id"], i["label"]) for i in items)
                elif route == "/generate":
                    body: dict[str, Any] = {"samples": rng.choice(GENERATE_SIZES)}
                    if rng.random() < 0.5:
                        body["hour"] = rng.randrange(24)
                    if rng.random() < 0.5:
                        body["seed"] = rng.randrange(2**32)
                    response = await call("/generate", body)
                    if response is not None and response.status_code == 200:
                        data = response.json()
                        stats.generations.append((data["generation_id"], data["samples_created"]))
                        known_ids.append(data["generation_id"])
                elif route == "/evaluate":
                    body = {"generation_id": rng.choice(known_ids)} if known_ids else {}
                    response = await call("/evaluate", body)
                    if response is not None and response.status_code == 200:
                        stats.served_versions[response.json()["model_version"]] += 1

        async def _retrain(rng: random.Random) -> None:
            use_known = known_ids and rng.random() < 0.5
            body = {"generation_id": rng.choice(known_ids)} if use_known else None
            response = await call("/retrain", body)
            if response is not None and response.status_code == 200:
                stats.trained_versions.append(response.json()["model_version"])

        await asyncio.gather(*(client(random.Random(seed * 1000 + i)) for i in range(clients)))
    stats.elapsed = time.monotonic() - start
    return stats


# --- processes and memory ------------------------------------------------------------------


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh)
            for line in fh:
                parts = line.split()
                local, state, inode = parts[1], parts[3], parts[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(inode)
    return inodes


def _all_pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def processes_on_port(port: int) -> list[int]:
    """Processes holding the port's listening socket, their children, and the launcher
    of a server that listens from a child (``mlflow server`` runs uvicorn)."""
    inodes = {f"socket:[{i}]" for i in _listening_inodes(port)}
    if not inodes:
        return []
    holders = set()
    for pid in _all_pids():
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        holders.add(pid)
                        break
    parents = {pid: _parent(pid) for pid in _all_pids()}
    group = set(holders)
    changed = True
    while changed:  # descendants
        changed = False
        for pid, ppid in parents.items():
            if ppid in group and pid not in group:
                group.add(pid)
                changed = True
    for pid in list(holders):
        ppid = parents.get(pid)
        launcher = _cmdline(ppid) if ppid and ppid not in group else ""
        if "mlflow server" in launcher or "prefect server" in launcher:
            group.add(ppid)  # type: ignore[arg-type]
    return sorted(group)


def memory_snapshot(ports: dict[str, int]) -> dict[str, dict[int, tuple[int | None, str]]]:
    return {
        name: {pid: (rss_kib(pid), _cmdline(pid)[:90]) for pid in processes_on_port(port)}
        for name, port in ports.items()
    }


def memory_report(
    start: dict[str, dict[int, tuple[int | None, str]]],
    end: dict[str, dict[int, tuple[int | None, str]]],
) -> str:
    lines = [f"{'service':<8} {'pid':>8} {'RSS start MiB':>14} {'RSS end MiB':>12} {'growth':>8}"]
    for name in start:
        for pid, (before, cmd) in start[name].items():
            after = end.get(name, {}).get(pid, (None, ""))[0]
            growth = f"{100 * (after - before) / before:+.0f}%" if before and after else "exited"
            lines.append(
                f"{name:<8} {pid:>8} {_mib(before):>14} {_mib(after):>12} {growth:>8}  {cmd}"
            )
        for pid in set(end.get(name, {})) - set(start[name]):
            lines.append(f"{name:<8} {pid:>8} {'(new)':>14} {_mib(end[name][pid][0]):>12}")
    return "\n".join(lines)


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


# --- the stack -------------------------------------------------------------------------------


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the stack exited with {proc.returncode} before {url} answered")
        if _answers(url):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@contextlib.contextmanager
def ensure_stack(
    *, api_port: int, mlflow_port: int, workers: int
) -> Iterator[subprocess.Popen[bytes] | None]:
    """Use the stack answering on the ports, or start one (data in a temporary dir)."""
    if _answers(f"http://127.0.0.1:{api_port}/health"):
        print(f"using the stack already running on :{api_port}", flush=True)
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="ia-soak-") as tmp:
        env = {
            **os.environ,
            "IA_PORT": str(api_port),
            "IA_WORKERS": str(workers),
            "IA_DATA_DIR": str(Path(tmp) / "data"),
            "IA_DATABASE_URL": os.environ.get("IA_DATABASE_URL", ""),
            "IA_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "IA_MLFLOW_UI_URL": f"http://localhost:{mlflow_port}",
        }
        executable = Path(sys.executable).with_name("ia-continu")
        argv = [str(executable), "up", "--no-with-prefect", "--mlflow-port", str(mlflow_port)]
        argv += ["--mlflow-dir", str(Path(tmp) / "mlflow")]
        print(f"starting a stack: {' '.join(argv)}", flush=True)
        log = open(Path(tmp) / "stack.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            argv, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            _wait(f"http://127.0.0.1:{api_port}/health", proc)
            _wait(f"http://127.0.0.1:{mlflow_port}/health", proc)
            yield proc
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()


def _print_rss_every(ports: dict[str, int], period: float, stop: threading.Event) -> None:
    """A memory trace during the run: a leak shows as steady growth, not one step."""
    t0 = time.monotonic()
    while not stop.wait(period):
        totals = {
            name: sum(rss or 0 for rss, _ in procs.values()) / 1024
            for name, procs in memory_snapshot(ports).items()
            if procs
        }
        trace = ", ".join(f"{name} {mib:.0f} MiB" for name, mib in totals.items())
        print(f"[{time.monotonic() - t0:5.0f} s] RSS {trace}", flush=True)


def _prepare(base_url: str, headers: dict[str, str] | None) -> None:
    """A dataset and a model, so that /predict and /evaluate have something to serve."""
    with httpx.Client(base_url=base_url, headers=headers, timeout=300) as http:
        if http.get("/models").json().get("active_version"):
            return
        http.post("/generate", json={"samples": 1000}).raise_for_status()
        http.post("/retrain").raise_for_status()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--api-port", type=int, default=int(os.environ.get("IA_PORT", 9000)))
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--prefect-port", type=int, default=4200, help="0: not watched")
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("IA_WORKERS", 1)),
        help="API workers when starting a stack (default IA_WORKERS or 1, as make run)",
    )
    parser.add_argument("--api-key", default=os.environ.get("IA_SOAK_API_KEY", ""))
    parser.add_argument("--sample-every", type=float, default=60.0, help="RSS trace period (s)")
    args = parser.parse_args(argv)

    base_url = f"http://127.0.0.1:{args.api_port}"
    headers = {"X-API-Key": args.api_key} if args.api_key else None
    ports = {"api": args.api_port, "mlflow": args.mlflow_port, "prefect": args.prefect_port}
    ports = {name: port for name, port in ports.items() if port}
    with ensure_stack(api_port=args.api_port, mlflow_port=args.mlflow_port, workers=args.workers):
        _prepare(base_url, headers)
        before = memory_snapshot(ports)
        print(f"load: {args.clients} clients for {args.duration:.0f} s on {base_url}", flush=True)
        stop = threading.Event()
        sampler = threading.Thread(
            target=_print_rss_every, args=(ports, args.sample_every, stop), daemon=True
        )
        sampler.start()
        try:
            stats = asyncio.run(
                run_load(base_url, duration=args.duration, clients=args.clients, headers=headers)
            )
        finally:
            stop.set()
            sampler.join()
        after = memory_snapshot(ports)
        print(stats.report())
        print(memory_report(before, after))
        api_rss = [rss for rss, _ in after.get("api", {}).values() if rss]
        if api_rss:
            print(f"API RSS total at end: {sum(api_rss) / 1024:.1f} MiB", flush=True)
    errors = sum(stats.errors.values()) + sum(stats.server_errors.values())
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
