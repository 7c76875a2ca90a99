#!/usr/bin/env bash
# /predict throughput of this checkout against a baseline commit (default: main), with the
# HTTP hardening of api/server.py and api/guard.py on one side only.
# Two `ia-continu serve` (one worker each) run side by side on one SQLite data dir with a
# model stored directly (no MLflow); the baseline runs the same virtualenv with
# PYTHONPATH pointing at `git archive BASE src`. wrk hits them one at a time in ABBA order;
# the results are the medians of the per-pair ratios, in req/s and in server CPU per
# request (user+sys of the process), steadier than req/s on a shared machine.
# Usage: bench/http_hardening_ab.sh [PAIRS=8] [DURATION=5s] [CONNECTIONS=8] [BASE=main]
set -euo pipefail
PAIRS=${1:-8}; DURATION=${2:-5s}; CONNS=${3:-8}; BASE=${4:-main}
PORT_NEW=9112; PORT_OLD=9113
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY="$ROOT/.venv/bin/python"; CLI="$ROOT/.venv/bin/ia-continu"
WORK=$(mktemp -d)
export IA_DATA_DIR="$WORK/data" IA_LOG_LEVEL=warning IA_DATABASE_URL="" IA_WARM_UP_ML=false
TICKS=$(getconf CLK_TCK)
git -C "$ROOT" archive "$BASE" src | tar -x -C "$WORK"

"$PY" "$ROOT/bench/predlog_seed.py"

"$CLI" serve --port "$PORT_NEW" >"$WORK/new.log" 2>&1 &
PID_NEW=$!
PYTHONPATH="$WORK/src" "$CLI" serve --port "$PORT_OLD" >"$WORK/old.log" 2>&1 &
PID_OLD=$!
trap 'kill -INT $PID_NEW $PID_OLD 2>/dev/null; wait $PID_NEW $PID_OLD 2>/dev/null; rm -rf "$WORK"' EXIT
for port in "$PORT_NEW" "$PORT_OLD"; do
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.2; done
done
# The baseline really is the other code: only this checkout knows IA_MAX_HEADER_BYTES.
big=$(head -c 20000 /dev/zero | tr '\0' a)
echo "431 check: new $(curl -s -o /dev/null -w '%{http_code}' -H "X-Big: $big" "http://127.0.0.1:$PORT_NEW/health")," \
  "baseline $(curl -s -o /dev/null -w '%{http_code}' -H "X-Big: $big" "http://127.0.0.1:$PORT_OLD/health")"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

hit() {  # $1 = port, $2 = server pid; prints "req/s cpu_us_per_request"
  local c0 c1 out
  c0=$(cpu_ticks "$2")
  out=$(wrk -t1 -c"$CONNS" -d"$DURATION" -s "$ROOT/bench/predict.lua" "http://127.0.0.1:$1/predict")
  sleep 0.6
  c1=$(cpu_ticks "$2")
  if grep -q "Non-2xx" <<<"$out"; then echo "errors: $out" >&2; fi
  awk -v rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")" -v t=$((c1 - c0)) -v hz="$TICKS" \
    -v n="$(awk '/requests in/ {print $1}' <<<"$out")" 'BEGIN {printf "%s %.1f\n", rps, t / hz / n * 1e6}'
}

hit "$PORT_NEW" "$PID_NEW" >/dev/null; hit "$PORT_OLD" "$PID_OLD" >/dev/null  # warm-up
results=()
for p in $(seq "$PAIRS"); do
  if (( p % 2 )); then new=$(hit "$PORT_NEW" "$PID_NEW"); old=$(hit "$PORT_OLD" "$PID_OLD")
  else old=$(hit "$PORT_OLD" "$PID_OLD"); new=$(hit "$PORT_NEW" "$PID_NEW"); fi
  results+=("$new $old")
  echo "pair $p: hardened ${new% *} req/s (${new#* } us CPU/req), $BASE ${old% *} req/s (${old#* } us CPU/req)"
done
printf '%s\n' "${results[@]}" | "$PY" -c '
import statistics, sys
rows = [[float(x) for x in line.split()] for line in sys.stdin if line.strip()]
m = statistics.median
new_rps, new_cpu, old_rps, old_cpu = (m(r[i] for r in rows) for i in range(4))
ratio = m(r[0] / r[2] for r in rows)
cpu_ratio = m(r[1] / r[3] for r in rows)
print(f"median req/s: hardened {new_rps:.0f}, baseline {old_rps:.0f}; median per-pair ratio "
      f"{ratio:.3f}")
print(f"median CPU/request: hardened {new_cpu:.1f} us, baseline {old_cpu:.1f} us; median "
      f"per-pair ratio {cpu_ratio:.3f}")'
