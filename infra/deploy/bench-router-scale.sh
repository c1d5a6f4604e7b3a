#!/usr/bin/env bash
# The KV router at scale, end to end: real etcd + NATS, WORKERS mocker workers
# (PER_PROC per process, a fast speed-up), one frontend with `--router kv`. Unique
# 4096-token prompts fill the workers' caches until the router indexes ~1 M blocks; the
# frontend's own metrics then give the decision latency (router actor round trip,
# hashing and scoring included) and the KV events it ingested per second.
#   usage: infra/deploy/bench-router-scale.sh [REQUESTS] [CONCURRENCY]
#   env: WORKERS (128) PER_PROC (32) ISL (4096) KV_BLOCKS (16384) SPEEDUP (1000)
set -euo pipefail
source "$(dirname "$0")/bench-common.sh"
REQS=${1:-4096}; CONC=${2:-64}
WORKERS=${WORKERS:-128}; PER=${PER_PROC:-32}; ISL=${ISL:-4096}
KV_BLOCKS=${KV_BLOCKS:-16384}; SPEEDUP=${SPEEDUP:-1000}
MODEL=${MODEL:-$MODELS/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf}
TOKENIZER=${TOKENIZER:-$MODELS/smollm2-135m-instruct}
for ((i = 0; i < WORKERS / PER; i++)); do
  "$BIN" worker --engine mocker --model "$MODEL" --served-model-name bench --num-workers "$PER" \
    --kv-blocks "$KV_BLOCKS" --speedup "$SPEEDUP" > "$STATE/worker$i.log" 2>&1 & pids+=($!)
done
PORT=$(free_port)
"$BIN" frontend --port "$PORT" --router kv > "$STATE/frontend.log" 2>&1 & FPID=$!; pids+=($FPID)
wait_model "$PORT" bench
sleep 3
ticks() { awk '{print $14+$15}' "/proc/$FPID/stat"; }
T0=$(ticks); S0=$(date +%s.%N)
"$BIN" bench --url "http://127.0.0.1:$PORT" --model bench --workload synthetic --input-len "$ISL" \
  --output-len 1 --num-requests "$REQS" --concurrency "$CONC" --tokenizer "$TOKENIZER" --seed 11 \
  --no-progress --json "$STATE/bench.json" > "$STATE/bench.txt"
sleep 1
T1=$(ticks); S1=$(date +%s.%N)
curl -sf "http://127.0.0.1:$PORT/metrics" > "$STATE/metrics"
python3 - "$STATE/metrics" "$STATE/bench.json" "$T0" "$T1" "$S0" "$S1" "$(getconf CLK_TCK)" "$WORKERS" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
b = json.load(open(sys.argv[2]))["summary"]
t0, t1, s0, s1, hz = map(float, sys.argv[3:8])
def val(name):
    return sum(float(l.split()[-1]) for l in lines if l.startswith(name + " ") or l.startswith(name + "{"))
def q(name, p):
    # Upper bound of the histogram bucket holding the p-quantile.
    buckets = sorted((float(l.split('le="')[1].split('"')[0].replace("+Inf", "inf")), float(l.split()[-1]))
                     for l in lines if l.startswith(name + "_bucket"))
    count = val(name + "_count")
    for le, c in buckets:
        if c >= p * count:
            return le * 1e3
    return float("inf")
d, r = "ferrite_router_decision_seconds", "ferrite_router_roundtrip_seconds"
count = val(d + "_count")
wall = s1 - s0
events = val("ferrite_router_kv_events_total")
print(json.dumps({
  "workers": int(sys.argv[8]), "requests_ok": b["requests_ok"], "errors": b["requests_failed"],
  "indexed_blocks": val("ferrite_router_indexed_blocks"),
  "decisions": count,
  "decision_p50_le_ms": q(d, 0.5), "decision_p99_le_ms": q(d, 0.99),
  "decision_mean_us": round(val(d + "_sum") / max(count, 1) * 1e6, 1),
  "roundtrip_p50_le_ms": q(r, 0.5), "roundtrip_p99_le_ms": q(r, 0.99),
  "roundtrip_mean_us": round(val(r + "_sum") / max(val(r + "_count"), 1) * 1e6, 1),
  "first_error": b.get("first_error"),
  "kv_events": events, "kv_events_per_s": round(events / wall, 1),
  "frontend_cpu_share_of_one_core": round((t1 - t0) / hz / wall, 3),
  "wall_s": round(wall, 1), "requests_per_s": round(b["request_throughput"], 1)}))
PY
