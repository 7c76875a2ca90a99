#!/usr/bin/env bash
# /predict throughput with prediction logging on and off.
# Two servers run side by side (one uvicorn worker each, `ia-continu serve`), logging on
# and off, sharing one SQLite database in a temporary data dir where a model is stored
# directly (no MLflow needed). wrk hits them one at a time in ABBA order, so that slow
# drifts in machine load hit both alike; the drop is the median of the per-pair ratios.
# Per run also: the server's CPU time per request (user+sys of the process, flush thread
# included), steadier than req/s on a shared machine.
# Usage: bench/predict_logging_ab.sh [PAIRS=10] [DURATION=5s] [CONNECTIONS=8] [PORT_ON=9102] [PORT_OFF=9103]
set -euo pipefail
PAIRS=${1:-10}; DURATION=${2:-5s}; CONNS=${3:-8}; PORT_ON=${4:-9102}; PORT_OFF=${5:-9103}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY="$ROOT/.venv/bin/python"; CLI="$ROOT/.venv/bin/ia-continu"
WORK=$(mktemp -d)
export IA_DATA_DIR="$WORK/data" IA_LOG_LEVEL=warning IA_DATABASE_URL=""
TICKS=$(getconf CLK_TCK)

"$PY" "$ROOT/bench/predlog_seed.py"

IA_PREDICTION_LOG_ENABLED=true "$CLI" serve --port "$PORT_ON" >"$WORK/on.log" 2>&1 &
PID_ON=$!
IA_PREDICTION_LOG_ENABLED=false "$CLI" serve --port "$PORT_OFF" >"$WORK/off.log" 2>&1 &
PID_OFF=$!
trap 'kill -INT $PID_ON $PID_OFF 2>/dev/null; wait $PID_ON $PID_OFF 2>/dev/null; rm -rf "$WORK"' EXIT
for port in "$PORT_ON" "$PORT_OFF"; do
  for _ in $(seq 150); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

hit() {  # $1 = port, $2 = server pid; prints "req/s cpu_us_per_request"
  local c0 c1 out
  c0=$(cpu_ticks "$2")
  out=$(wrk -t1 -c"$CONNS" -d"$DURATION" -s "$ROOT/bench/predict.lua" "http://127.0.0.1:$1/predict")
  sleep 0.6  # the logger's last flush of this run (interval 0.5 s) counted in its CPU
  c1=$(cpu_ticks "$2")
  if grep -q "Non-2xx" <<<"$out"; then echo "errors: $out" >&2; fi
  awk -v rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")" -v t=$((c1 - c0)) -v hz="$TICKS" \
    -v n="$(awk '/requests in/ {print $1}' <<<"$out")" 'BEGIN {printf "%s %.1f\n", rps, t / hz / n * 1e6}'
}

hit "$PORT_ON" "$PID_ON" >/dev/null; hit "$PORT_OFF" "$PID_OFF" >/dev/null  # warm-up
results=()
for p in $(seq "$PAIRS"); do
  if (( p % 2 )); then on=$(hit "$PORT_ON" "$PID_ON"); off=$(hit "$PORT_OFF" "$PID_OFF")
  else off=$(hit "$PORT_OFF" "$PID_OFF"); on=$(hit "$PORT_ON" "$PID_ON"); fi
  results+=("$on $off")
  echo "pair $p: logging on ${on% *} req/s (${on#* } us CPU/req), off ${off% *} req/s (${off#* } us CPU/req)"
done
curl -s "http://127.0.0.1:$PORT_ON/predictions/stats?minutes=1440" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
print("logger (on):", {k: d[k] for k in ("logged", "dropped", "flush_errors", "queued", "count")})'
printf '%s\n' "${results[@]}" | "$PY" -c '
import statistics, sys
rows = [[float(x) for x in line.split()] for line in sys.stdin if line.strip()]
m = statistics.median
on_rps, on_cpu, off_rps, off_cpu = (m(r[i] for r in rows) for i in range(4))
ratio = m(r[0] / r[2] for r in rows)
cpu_ratio = m(r[3] / r[1] for r in rows)
print(f"median req/s: on {on_rps:.0f}, off {off_rps:.0f}; median per-pair on/off {ratio:.3f} "
      f"(drop {100 * (1 - ratio):.1f}%)")
print(f"median CPU/request: on {on_cpu:.1f} us, off {off_cpu:.1f} us; median per-pair "
      f"off/on {cpu_ratio:.3f} (throughput drop at equal CPU {100 * (1 - cpu_ratio):.1f}%)")'
