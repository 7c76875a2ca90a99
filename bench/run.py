"""`make bench`: the whole benchmark suite in one run, one table, one JSON file.

Every comparison is measured side by side in the same run (interleaved rounds, median
of the rounds), because the machine is small and shared: ratios are the figures to
trust; absolute times are guidance. Server-side CPU time per request is reported next
to client-side times: it is what a request costs, whatever else the machine is doing.

    python -m bench            # full suite, ~6 minutes
    python -m bench --smoke    # every section with tiny sizes (keeps the bench working)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.load import (
    WrkResult,
    ensure_wrk,
    median_result,
    parse_server_timing,
    run_wrk,
    time_requests,
)
from bench.servers import VENV_BIN, Server, start_api, start_mlflow, start_models_serve

RESULTS_DIR = Path(__file__).with_name("results")
MODEL_NAME = "ia_continu_logistic_regression"
PREDICT_BODY = '{"features": [0.5, -1.2]}'
MLFLOW_BODY = '{"inputs": [[0.5, -1.2]]}'  # the same row, in MLflow's scoring format
HEAVY = ("mlflow", "sklearn", "scipy", "prefect", "skops", "pandas")


@dataclass(frozen=True)
class Plan:
    smoke: bool
    wrk_seconds: float
    rounds: int
    connections: tuple[int, ...]
    repeats: int
    min_seconds: float
    batch_rows: tuple[int, ...]
    generate_sizes: tuple[int, ...]
    retrain_sizes: tuple[int, ...]
    retrain_repeats: int
    cli_rows: int
    growth_sizes: tuple[int, ...]
    startup_repeats: int
    peer: bool
    workers2: bool


FULL = Plan(
    smoke=False,
    wrk_seconds=5,
    rounds=3,
    connections=(1, 8),
    repeats=30,
    min_seconds=2.0,
    batch_rows=(1, 100, 10_000),
    generate_sizes=(1_000, 10_000),
    retrain_sizes=(1_000, 10_000),
    retrain_repeats=5,
    cli_rows=1_000_000,
    growth_sizes=(1_000, 10_000, 100_000, 1_000_000),
    startup_repeats=3,
    peer=True,
    workers2=True,
)
SMOKE = Plan(
    smoke=True,
    wrk_seconds=1,
    rounds=1,
    connections=(8,),
    repeats=3,
    min_seconds=0.2,
    batch_rows=(1, 100),
    generate_sizes=(1_000,),
    retrain_sizes=(1_000,),
    retrain_repeats=1,
    cli_rows=20_000,
    growth_sizes=(1_000, 10_000),
    startup_repeats=1,
    peer=True,
    workers2=True,
)


class Table:
    """The one table the run prints: section, measure, value, target or ratio, verdict."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(
        self, section: str, measure: str, value: str, goal: str = "", ok: bool | None = None
    ) -> None:
        verdict = "" if ok is None else ("ok" if ok else "MISSED")
        self.rows.append((section, measure, value, goal, verdict))
        print(f"  {section:<18} {measure:<44} {value:>30}  {goal:<22} {verdict}", flush=True)

    def render(self) -> str:
        head = ("section", "measure", "value", "target / ratio", "")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(5)]
        lines = []
        for i, row in enumerate([head, *self.rows]):
            cells = [
                row[0].ljust(widths[0]),
                row[1].ljust(widths[1]),
                row[2].rjust(widths[2]),
                row[3].ljust(widths[3]),
                row[4],
            ]
            lines.append("  ".join(cells).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = ["| section | measure | value | target / ratio | |", "|---|---|---:|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    os_name = platform.platform()
    if Path("/etc/os-release").exists():
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 2**20, 1),
        "os": os_name,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_at_start": os.getloadavg(),
    }


def _post_json(server: Server, path: str, payload: Any, timeout: float = 600.0) -> Any:
    timed = time_requests(
        server.port, path, body=orjson.dumps(payload), n=1, warmup=0, timeout=timeout
    )
    return orjson.loads(timed.last_body), timed


def _generate(server: Server, samples: int, seed: int, hour: int = 2) -> int:
    body, _ = _post_json(server, "/generate", {"samples": samples, "seed": seed, "hour": hour})
    return int(body["generation_id"])


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


# --- sections ------------------------------------------------------------------------------


def bench_startup(plan: Plan, work: Path, tracking: str, table: Table) -> dict[str, Any]:
    """API process spawn -> first 200 on /health, on a new database (migrations) and on an
    existing one (a restart), and which heavy libraries the started API has imported."""
    out: dict[str, Any] = {}
    data = work / "startup-data"
    cold = start_api(data_dir=data, tracking_uri=tracking, log_dir=work / "logs")
    try:
        cold.wait_ready("/health", timeout=120)
    finally:
        cold.stop()
    out["new_database_s"] = round(cold.ready_after or 0, 3)
    warm = []
    for _ in range(plan.startup_repeats):
        server = start_api(data_dir=data, tracking_uri=tracking, log_dir=work / "logs")
        try:
            server.wait_ready("/health", timeout=120)
        finally:
            server.stop()
        warm.append((server.ready_after or 0.0, server.cpu_at_ready or 0.0))
    warm.sort()
    median_s, median_cpu = warm[len(warm) // 2]
    out["restart_s"] = [round(w, 3) for w, _ in warm]
    out["restart_median_s"] = round(median_s, 3)
    out["restart_cpu_s"] = round(median_cpu, 3)
    out["heavy_modules_at_startup"] = heavy_modules_at_startup(work)
    table.add(
        "start-up",
        "API spawn -> first /health 200 (restart)",
        f"{median_s:.2f} s ({median_cpu:.2f} s CPU)",
        "<= 2 s",
        median_s <= 2.0,
    )
    table.add("start-up", "same, new database (migrations)", f"{cold.ready_after:.2f} s")
    heavy = out["heavy_modules_at_startup"]
    table.add(
        "start-up",
        "mlflow/sklearn/scipy/prefect imported at start",
        ", ".join(heavy) or "none",
        "none",
        not heavy,
    )
    return out


def heavy_modules_at_startup(work: Path) -> list[str]:
    """Build the app and run its start-up like uvicorn does; list the heavy packages."""
    code = (
        "import sys, json, asyncio\n"
        "from ia_continu.api.asgi import create_app_from_env\n"
        "app = create_app_from_env()\n"
        "async def main():\n"
        "    async with app.router.lifespan_context(app):\n"
        "        pass\n"
        "asyncio.run(main())\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("IA_")},
        "IA_DATA_DIR": str(work / "startup-data"),
        "IA_WARM_UP_ML": "false",  # the warm-up imports them on purpose, after start-up
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    return sorted(loaded & set(HEAVY))


def bench_retrain(plan: Plan, api: Server, table: Table) -> dict[str, Any]:
    """POST /retrain end to end against the real MLflow server, with the server's
    per-step breakdown (Server-Timing header)."""
    out: dict[str, Any] = {}
    for samples in plan.retrain_sizes:
        gid = _generate(api, samples, seed=samples)
        totals, steps = [], []
        for _ in range(plan.retrain_repeats):
            body, timed = _post_json(api, "/retrain", {"generation_id": gid})
            assert body.get("status") == "success", body
            totals.append(timed.median_ms)
            steps.append(parse_server_timing(timed.last_headers.get("server-timing", "")))
        median_total = float(np.median(totals))
        breakdown = {
            k: round(float(np.median([s.get(k, 0.0) for s in steps])), 1) for k in steps[0]
        }
        out[str(samples)] = {
            "median_ms": round(median_total, 1),
            "all_ms": [round(t, 1) for t in totals],
            "breakdown_ms": breakdown,
        }
        goal = "<= 0.5 s" if samples == 10_000 else ""
        table.add(
            "retrain",
            f"/retrain {samples:,} rows, end to end",
            f"{median_total / 1000:.3f} s",
            goal,
            median_total <= 500 if samples == 10_000 else None,
        )
        table.add("retrain", "  train steps (ms)", _steps(breakdown, _TRAIN_STEPS))
        table.add("retrain", "  MLflow steps (ms)", _steps(breakdown, _MLFLOW_STEPS))
    return out


_TRAIN_STEPS = {
    "warm_up_wait": "wait",
    "load_data": "load",
    "fit": "fit",
    "metrics": "metrics",
    "activation": "activate",
}
_MLFLOW_STEPS = {
    "mlflow_run": "run",
    "mlflow_model_log": "model",
    "mlflow_registration": "register",
    "mlflow_alias": "alias",
    "mlflow_finish": "end",
}


def _steps(breakdown: dict[str, float], names: dict[str, str]) -> str:
    return " ".join(f"{short} {breakdown[k]:.0f}" for k, short in names.items() if k in breakdown)


def bench_batch(plan: Plan, api: Server, table: Table) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rng = np.random.default_rng(3)
    for rows in plan.batch_rows:
        body = orjson.dumps({"instances": rng.normal(0, 2, (rows, 2)).tolist()})
        timed = time_requests(
            api.port,
            "/predict/batch",
            body=body,
            n=plan.repeats,
            server_cpu=api.cpu_seconds,
            min_seconds=plan.min_seconds,
        )
        answer = orjson.loads(timed.last_body)
        assert len(answer["predictions"]) == rows
        out[str(rows)] = timed.summary() | {"request_bytes": len(body)}
        cpu = timed.cpu_ms_per_request or 0.0
        table.add(
            "predict/batch",
            f"/predict/batch {rows:,} rows (round trip)",
            f"{timed.median_ms:.2f} ms ({cpu:.2f} ms CPU)",
            "<= 20 ms" if rows == 10_000 else "",
            timed.median_ms <= 20 if rows == 10_000 else None,
        )
    return out


def bench_generate(plan: Plan, api: Server, table: Table) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for samples in plan.generate_sizes:
        body = orjson.dumps({"samples": samples, "seed": 1, "hour": 2})
        timed = time_requests(
            api.port,
            "/generate",
            body=body,
            n=plan.repeats,
            server_cpu=api.cpu_seconds,
            min_seconds=plan.min_seconds,
        )
        out[str(samples)] = timed.summary()
        cpu = timed.cpu_ms_per_request or 0.0
        table.add(
            "generate",
            f"/generate {samples:,} samples (round trip)",
            f"{timed.median_ms:.2f} ms ({cpu:.2f} ms CPU)",
            "<= 30 ms" if samples == 10_000 else "",
            timed.median_ms <= 30 if samples == 10_000 else None,
        )
    return out


def bench_uploads(plan: Plan, api: Server, table: Table) -> dict[str, Any]:
    """POST /datasets (JSON and CSV) next to /generate of as many rows, interleaved
    rounds: the upload parses and checks what /generate draws, and both write it."""
    rows = max(plan.generate_sizes)
    rng = np.random.default_rng(5)
    data = np.column_stack([rng.normal(0, 1, (rows, 2)), rng.integers(0, 2, rows)])
    listed = [[a, b, int(t)] for a, b, t in data.tolist()]
    csv = "feature1,feature2,target\n" + "".join(f"{a!r},{b!r},{t}\n" for a, b, t in listed)
    targets = {
        "generate": ("/generate", orjson.dumps({"samples": rows, "seed": 1, "hour": 2}), None),
        "json": ("/datasets", orjson.dumps({"rows": listed}), None),
        "csv": ("/datasets", csv.encode(), "text/csv"),
    }
    runs: dict[str, list[Any]] = {name: [] for name in targets}
    for _ in range(plan.rounds):
        for name, (path, body, content_type) in targets.items():
            runs[name].append(
                time_requests(
                    api.port,
                    path,
                    body=body,
                    n=max(plan.repeats // 3, 3),
                    server_cpu=api.cpu_seconds,
                    content_type=content_type or "application/json",
                )
            )
    out: dict[str, Any] = {"rows": rows}
    medians = {name: float(np.median([t.median_ms for t in timed])) for name, timed in runs.items()}
    # Server CPU per request: what a request costs, whatever else the machine is doing.
    cpu = {
        name: float(np.median([t.cpu_ms_per_request or 0.0 for t in timed]))
        for name, timed in runs.items()
    }
    for name in ("json", "csv"):
        ms = medians[name]
        out[name] = {
            "median_ms": round(ms, 2),
            "cpu_ms": round(cpu[name], 2),
            "vs_generate": round(ms / medians["generate"], 2),
        }
        size = len(targets[name][1])
        table.add(
            "uploads",
            f"/datasets {rows:,} rows {name.upper()} ({size / 1e6:.2f} MB)",
            f"{ms:.2f} ms ({cpu[name]:.1f} ms CPU, {ms / medians['generate']:.2f}x /generate)",
            "<= 50 ms" if rows == 10_000 else "",
            ms <= 50 if rows == 10_000 else None,
        )
    out["generate_median_ms"] = round(medians["generate"], 2)
    out["generate_cpu_ms"] = round(cpu["generate"], 2)
    table.add(
        "uploads",
        f"/generate {rows:,} rows (same rounds)",
        f"{medians['generate']:.2f} ms ({cpu['generate']:.1f} ms CPU)",
    )
    return out


def _rounds(
    plan: Plan, wrk: str, targets: dict[str, tuple[str, str | None, Server]], connections: int
) -> dict[str, WrkResult]:
    """Interleaved rounds: each target once per round, medians over rounds."""
    runs: dict[str, list[WrkResult]] = {name: [] for name in targets}
    for _ in range(plan.rounds):
        for name, (url, body, server) in targets.items():
            runs[name].append(
                run_wrk(
                    wrk,
                    url,
                    connections=connections,
                    seconds=plan.wrk_seconds,
                    body=body,
                    server_cpu=server.cpu_seconds,
                )
            )
    return {name: median_result(results) for name, results in runs.items()}


def bench_throughput(
    plan: Plan,
    wrk: str | None,
    api: Server,
    peer: Server | None,
    table: Table,
    label: str = "1 worker",
) -> dict[str, Any]:
    if wrk is None:
        table.add("predict", "throughput", "skipped: wrk unavailable")
        return {"skipped": "wrk unavailable"}
    out: dict[str, Any] = {}
    for c in plan.connections:
        targets: dict[str, tuple[str, str | None, Server]] = {
            "health": (f"{api.url}/health", None, api),
            "predict": (f"{api.url}/predict", PREDICT_BODY, api),
        }
        if peer is not None:
            targets["mlflow_models_serve"] = (f"{peer.url}/invocations", MLFLOW_BODY, peer)
        medians = _rounds(plan, wrk, targets, c)
        entry = {name: r.as_dict() for name, r in medians.items()}
        health, predict = medians["health"], medians["predict"]
        entry["predict_over_health"] = round(_ratio(predict.rps, health.rps), 3)
        section = f"predict ({label})"
        for name, r in medians.items():
            cpu = f", {r.cpu_us_per_request:.0f} µs CPU/req" if r.cpu_us_per_request else ""
            errors = f", {r.errors} errors" if r.errors else ""
            table.add(
                section,
                f"c={c} {name}",
                f"{r.rps:,.0f} req/s p50 {r.p50_ms:.2f} p99 {r.p99_ms:.2f} ms",
                cpu.lstrip(", ") + errors,
            )
        ratio = entry["predict_over_health"]
        table.add(
            section, f"c={c} /predict ÷ GET /health", f"{ratio:.2f}", ">= 0.75", ratio >= 0.75
        )
        if c == 8:
            table.add(
                section,
                "c=8 /predict p99",
                f"{predict.p99_ms:.2f} ms",
                "<= 5 ms",
                predict.p99_ms <= 5,
            )
        if peer is not None:
            theirs = medians["mlflow_models_serve"]
            ours_over = _ratio(predict.rps, theirs.rps)
            entry["ours_over_mlflow"] = round(ours_over, 2)
            table.add(
                section,
                f"c={c} ours ÷ mlflow models serve",
                f"{ours_over:.1f}×",
                ">= 10×",
                ours_over >= 10,
            )
        out[f"c{c}"] = entry
    return out


def run_cli_generate(work: Path, data_dir: Path, rows: int, seed: int = 7) -> dict[str, Any]:
    """`ia-continu generate` in its own process: wall time, its own timing, peak RSS."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("IA_")},
        "IA_DATA_DIR": str(data_dir),
    }
    argv = [str(VENV_BIN / "ia-continu"), "generate", "--samples", str(rows)]
    argv += ["--seed", str(seed), "--hour", "2", "--no-progress"]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"ia-continu generate failed:\n{output}")
    inner = re.search(r"generation_id=(\d+) .* in ([\d.]+) s", output)
    assert inner, output
    return {
        "rows": rows,
        "generation_id": int(inner.group(1)),
        "wall_s": round(wall, 3),
        "generate_and_store_s": float(inner.group(2)),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def bench_cli_generate(plan: Plan, work: Path, data_dir: Path, table: Table) -> dict[str, Any]:
    result = run_cli_generate(work, data_dir, plan.cli_rows)
    rate = result["rows"] / result["generate_and_store_s"]
    table.add(
        "cli generate",
        f"ia-continu generate --samples {plan.cli_rows:,}",
        f"{result['wall_s']:.2f} s ({rate:,.0f} rows/s stored)",
    )
    table.add(
        "cli generate", "  peak memory (RSS, whole process)", f"{result['peak_rss_mb']:.0f} MB"
    )
    return result


def bench_growth(
    plan: Plan, work: Path, data_dir: Path, api: Server, table: Table, done: dict[str, Any]
) -> list[dict[str, Any]]:
    """Generate (CLI, chunked) and retrain (API, real MLflow) at growing sizes; ``done``
    is the CLI generation already measured (reused for its size)."""
    lines = []
    for rows in plan.growth_sizes:
        gen = done if rows == done["rows"] else run_cli_generate(work, data_dir, rows, seed=rows)
        _, timed = _post_json(api, "/retrain", {"generation_id": gen["generation_id"]})
        steps = parse_server_timing(timed.last_headers.get("server-timing", ""))
        line = {
            "rows": rows,
            "generate_s": gen.get("generate_and_store_s"),
            "retrain_s": round(timed.median_ms / 1000, 3),
            "load_data_s": round(steps.get("load_data", 0) / 1000, 3),
            "fit_s": round(steps.get("fit", 0) / 1000, 3),
            "mlflow_s": round(steps.get("mlflow", 0) / 1000, 3),
        }
        lines.append(line)
        gen_rate = rows / line["generate_s"] if line["generate_s"] else float("nan")
        table.add(
            "growth",
            f"{rows:>9,} rows: generate / retrain",
            f"{line['generate_s']:.2f} s / {line['retrain_s']:.2f} s",
            f"{gen_rate:,.0f} rows/s gen; load {line['load_data_s']:.2f} fit {line['fit_s']:.2f}",
        )
    if len(lines) >= 2:
        first, last = lines[0], lines[-1]
        scale = last["rows"] / first["rows"]
        # Per-row cost at the largest size over the second size (fixed costs dominate small).
        base = lines[1] if len(lines) > 2 else first
        k = last["rows"] / base["rows"]
        gen_growth = last["generate_s"] / base["generate_s"] / k
        load_growth = (
            (last["load_data_s"] + last["fit_s"])
            / max(base["load_data_s"] + base["fit_s"], 1e-9)
            / k
        )
        table.add(
            "growth",
            f"per-row cost ×{scale:,.0f} rows: generate",
            f"{gen_growth:.2f}",
            "≈ 1 = linear",
        )
        table.add("growth", "per-row cost: load + fit", f"{load_growth:.2f}", "≈ 1 = linear")
    return lines


# --- the run ----------------------------------------------------------------------------------


SECTIONS = (
    "startup", "retrain", "batch", "generate", "uploads", "predict", "workers2", "cli", "growth"
)  # fmt: skip
# Sections with their own servers (no MLflow), run first; also `python -m bench.feedback`.
STANDALONE_SECTIONS = ("feedback",)


def run(
    plan: Plan, out_dir: Path, keep: bool = False, only: frozenset[str] = frozenset()
) -> dict[str, Any]:
    def want(section: str) -> bool:
        return not only or section in only

    table = Table()
    results: dict[str, Any] = {"machine": machine_info(), "plan": plan.__dict__}
    print(f"ia-continu bench ({'smoke' if plan.smoke else 'full'}) on {results['machine']}")
    wrk = ensure_wrk()
    results["wrk"] = wrk
    work = Path(tempfile.mkdtemp(prefix="ia-bench-"))
    servers: list[Server] = []
    try:
        if want("feedback"):  # ids, /predict A/B vs the merge base, /feedback, performance
            from bench.feedback import bench_feedback

            results["feedback"] = bench_feedback(table, smoke=plan.smoke, wrk=wrk, work=work)
        mlflow = start_mlflow(directory=work / "mlflow")
        servers.append(mlflow)
        mlflow.wait_ready("/health", timeout=300)
        tracking = mlflow.url
        results["mlflow_server_ready_s"] = round(mlflow.ready_after or 0, 1)

        if want("startup"):
            results["startup"] = bench_startup(plan, work, tracking, table)

        data_dir = work / "data"
        api = start_api(data_dir=data_dir, tracking_uri=tracking, log_dir=work / "logs")
        servers.append(api)
        api.wait_ready("/health", timeout=120)
        # The first retrain of the process: pays whatever the warm-up has not done yet.
        gid = _generate(api, 10_000, seed=42)
        _, first = _post_json(api, "/retrain", {"generation_id": gid})
        first_steps = parse_server_timing(first.last_headers.get("server-timing", ""))
        results["first_retrain_after_start"] = {
            "ms": round(first.median_ms, 1),
            "breakdown_ms": first_steps,
        }
        wait = first_steps.get("warm_up_wait", 0.0) / 1000
        table.add(
            "retrain",
            "first /retrain right after API start (10,000)",
            f"{first.median_ms / 1000:.2f} s (of which {wait:.2f} s waiting for warm-up)",
        )
        wait_idle(api)

        if want("retrain"):
            results["retrain"] = bench_retrain(plan, api, table)
        if want("batch"):
            results["predict_batch"] = bench_batch(plan, api, table)
        if want("generate"):
            results["generate"] = bench_generate(plan, api, table)
        if want("uploads"):
            results["uploads"] = bench_uploads(plan, api, table)

        peer = None
        if plan.peer and want("predict"):
            peer = start_peer(tracking, work, servers)
            results["mlflow_models_serve_ready_s"] = round(peer.ready_after or 0, 1)
        if want("predict"):
            results["predict"] = bench_throughput(plan, wrk, api, peer, table)
        memory = results["memory_mb"] = {"api_1_worker": round(api.rss_mb(), 1)}
        table.add(
            "memory", "API RSS, 1 worker (after the ML warm-up)", f"{memory['api_1_worker']:.0f} MB"
        )
        if peer is not None:
            memory["mlflow_models_serve"] = round(peer.rss_mb(), 1)
            table.add(
                "memory", "mlflow models serve RSS", f"{memory['mlflow_models_serve']:.0f} MB"
            )
            peer.stop()

        if plan.workers2 and want("workers2"):
            api2 = start_api(
                data_dir=data_dir, tracking_uri=tracking, workers=2, log_dir=work / "logs"
            )
            servers.append(api2)
            api2.wait_ready("/health", timeout=120)
            wait_for_model(api2)
            wait_idle(api2)  # each worker's background ML warm-up
            results["workers2"] = bench_throughput(plan, wrk, api2, None, table, "2 workers")
            results["workers2"]["ready_s"] = round(api2.ready_after or 0, 3)
            memory["api_2_workers"] = round(api2.rss_mb(), 1)
            table.add(
                "memory", "API RSS, 2 workers + supervisor", f"{memory['api_2_workers']:.0f} MB"
            )
            api2.stop()

        if want("cli"):
            results["cli_generate"] = bench_cli_generate(plan, work, data_dir, table)
        if want("growth"):
            done = results.get("cli_generate", {"rows": None})
            results["growth"] = bench_growth(plan, work, data_dir, api, table, done)
    finally:
        for server in reversed(servers):
            server.stop()
        results["machine"]["load_average_at_end"] = os.getloadavg()
        if keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = f"bench-{stamp}{'-smoke' if plan.smoke else ''}"
    results["table"] = table.rows
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=2, default=str))
    (out_dir / f"{name}.md").write_text(table.markdown() + "\n")
    m = results["machine"]
    print()
    print(f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, {m['os']}, Python {m['python']}")
    print(
        f"{m['date_utc']}; load average {m['load_average_at_start']} -> {m['load_average_at_end']}"
    )
    print(table.render())
    print(f"\nwritten: {out_dir / (name + '.json')}")
    return results


def start_peer(tracking: str, work: Path, servers: list[Server], attempts: int = 2) -> Server:
    """`mlflow models serve` on the champion; a second attempt on another port if the
    first one dies during start-up (a port taken meanwhile, a tracking-server hiccup)."""
    for attempt in range(attempts):
        peer = start_models_serve(
            model_uri=f"models:/{MODEL_NAME}@champion", tracking_uri=tracking, log_dir=work / "logs"
        )
        servers.append(peer)
        try:
            peer.wait_ready("/ping", timeout=600)
            return peer
        except RuntimeError as exc:
            peer.stop()
            if attempt == attempts - 1:
                raise
            print(f"retrying: {exc}", flush=True)
    raise AssertionError("unreachable")


def wait_idle(server: Server, timeout: float = 120.0, window: float = 1.0) -> None:
    """Wait until the server uses < 10% of a core (its background warm-up is over)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = server.cpu_seconds()
        time.sleep(window)
        if server.cpu_seconds() - before < 0.1 * window:
            return


def wait_for_model(server: Server, timeout: float = 30.0) -> None:
    """A newly started API serves the active model once its start-up loaded it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            time_requests(server.port, "/predict", body=PREDICT_BODY.encode(), n=1, warmup=0)
            return
        except RuntimeError:
            time.sleep(0.2)
    raise TimeoutError(f"{server.name} serves no model after {timeout} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, every section")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--only", default="", help=f"comma-separated sections among {', '.join(SECTIONS)}"
    )
    args = parser.parse_args(argv)
    only = frozenset(filter(None, args.only.split(",")))
    if unknown := only - set(SECTIONS) - set(STANDALONE_SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    run(SMOKE if args.smoke else FULL, args.out, keep=args.keep, only=only)
    return 0
