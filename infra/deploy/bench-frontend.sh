#!/usr/bin/env bash
# Frontend throughput over NATS: real etcd + NATS, one frontend and two mocker worker
# processes at a high speed-up, driven by `ferrite bench`. Reports requests/s, streamed
# tokens/s, and the frontend's CPU time per request and per streamed token (from
# /proc/<pid>/stat, user + system).
#   usage: infra/deploy/bench-frontend.sh [CONCURRENCY] [REQUESTS] [ISL] [OSL] [SPEEDUP]
set -euo pipefail
source "$(dirname "$0")/bench-common.sh"
CONC=${1:-64}; REQS=${2:-2000}; ISL=${3:-128}; OSL=${4:-64}; SPEEDUP=${5:-1000}
for i in 1 2; do
  "$BIN" worker --engine mocker --speedup "$SPEEDUP" > "$STATE/worker$i.log" 2>&1 & pids+=($!)
done
PORT=$(free_port)
"$BIN" frontend --port "$PORT" > "$STATE/frontend.log" 2>&1 & FPID=$!; pids+=($FPID)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
# warm-up
"$BIN" bench --url "http://127.0.0.1:$PORT" --model stories260k --concurrency 8 --requests 64 --isl "$ISL" --osl "$OSL" --no-progress >/dev/null
ticks() { awk '{print $14+$15}' "/proc/$FPID/stat"; }
HZ=$(getconf CLK_TCK)
T0=$(ticks)
"$BIN" bench --url "http://127.0.0.1:$PORT" --model stories260k --concurrency "$CONC" --requests "$REQS" \
  --isl "$ISL" --osl "$OSL" --no-progress --json "$STATE/bench.json" >/dev/null
T1=$(ticks)
python3 - "$STATE/bench.json" "$T0" "$T1" "$HZ" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))["summary"]; t0, t1, hz = map(float, sys.argv[2:5])
cpu = (t1 - t0) / hz
print(json.dumps({
  "requests_per_s": round(b["request_throughput"], 1),
  "streamed_tokens_per_s": round(b["output_token_throughput"], 1),
  "ttft_ms_p50": round(b["ttft_ms"]["p50"], 2), "ttft_ms_p99": round(b["ttft_ms"]["p99"], 2),
  "frontend_cpu_s": round(cpu, 2),
  "frontend_cpu_ms_per_request": round(1e3 * cpu / max(b["requests_ok"], 1), 3),
  "frontend_cpu_us_per_token": round(1e6 * cpu / max(b["completion_tokens"], 1), 1),
  "requests": b["requests_ok"], "errors": b["requests_failed"], "load": b["load"]}, indent=2))
PY
