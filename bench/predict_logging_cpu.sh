#!/usr/bin/env bash
# Where /predict's CPU goes, per thread of one server (`ia-continu serve`, one worker),
# with prediction logging on or off: CPU microseconds per request for each thread that
# worked during a wrk run (the flush runs in asyncio's default executor thread, which
# with logging off only serves the model watcher). Steadier than req/s on a busy machine.
# Usage: bench/predict_logging_cpu.sh true|false [DURATION=10s] [CONNECTIONS=8] [PORT=9102]
set -euo pipefail
MODE=${1:?true or false}; DURATION=${2:-10s}; CONNS=${3:-8}; PORT=${4:-9102}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
export IA_DATA_DIR="$WORK/data" IA_LOG_LEVEL=warning IA_DATABASE_URL=""
"$ROOT/.venv/bin/python" "$ROOT/bench/predlog_seed.py"
IA_PREDICTION_LOG_ENABLED=$MODE "$ROOT/.venv/bin/ia-continu" serve --port "$PORT" \
  >"$WORK/server.log" 2>&1 &
PID=$!
trap 'kill -INT $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 150); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
URL="http://127.0.0.1:$PORT/predict"
wrk -t1 -c"$CONNS" -d2s -s "$ROOT/bench/predict.lua" "$URL" >/dev/null; sleep 1

snap() {  # tid user+sys_ticks voluntary_switches
  for t in /proc/"$PID"/task/*; do
    echo "$(basename "$t") $(awk '{print $14 + $15}' "$t/stat") \
      $(awk '/^voluntary_ctxt/ {print $2}' "$t/status")"
  done | sort
}
snap >"$WORK/s0"
out=$(wrk -t1 -c"$CONNS" -d"$DURATION" -s "$ROOT/bench/predict.lua" "$URL")
sleep 0.6  # the last flush of the run
snap >"$WORK/s1"
n=$(awk '/requests in/ {print $1}' <<<"$out")
echo "logging=$MODE: $n requests, $(awk '/Requests\/sec/ {print $2}' <<<"$out") req/s"
join "$WORK/s0" "$WORK/s1" | awk -v n="$n" -v hz="$(getconf CLK_TCK)" -v main="$PID" '
  { d = $4 - $2; total += d
    if (d > 0) printf "  thread %s%s: %.1f us CPU/request, %d voluntary switches\n",
      $1, ($1 == main ? " (event loop)" : ""), d / hz / n * 1e6, $5 - $3 }
  END { printf "  all threads: %.1f us CPU/request\n", total / hz / n * 1e6 }'
