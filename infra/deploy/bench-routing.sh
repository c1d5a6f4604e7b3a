#!/usr/bin/env bash
# KV-aware routing vs round-robin vs random on a shared-prefix workload: real etcd + NATS,
# WORKERS mocker workers (WORKERS_PER_PROC per process) serving SmolLM2-135M's tokenizer
# (8k context) with a small KV pool each, one frontend per policy, `ferrite bench` at a
# fixed Poisson rate. Prints one JSON line per policy (TTFT p50/p90, hit rate vs ideal).
#   usage: infra/deploy/bench-routing.sh [POLICIES] [RATE] [REQUESTS]
#   POLICIES: space-separated; "kv:W" runs the KV router with --kv-overlap-weight W
#   env: WORKERS (8) WORKERS_PER_PROC (4) NGROUPS (32) PREFIX (2000) SUFFIX (200) OSL (128)
#        KV_BLOCKS (1536) SPEEDUP (1) ENGINE (mocker) MODEL (SmolLM2 GGUF)
set -euo pipefail
source "$(dirname "$0")/bench-common.sh"
POLICIES=${1:-"kv round-robin random"}; RATE=${2:-16}; REQS=${3:-640}
WORKERS=${WORKERS:-8}; PER=${WORKERS_PER_PROC:-4}; NGROUPS=${NGROUPS:-32}
PREFIX=${PREFIX:-2000}; SUFFIX=${SUFFIX:-200}; OSL=${OSL:-128}
KV_BLOCKS=${KV_BLOCKS:-1536}; SPEEDUP=${SPEEDUP:-1}; ENGINE=${ENGINE:-mocker}
MODEL=${MODEL:-$MODELS/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf}
TOKENIZER=${TOKENIZER:-$MODELS/smollm2-135m-instruct}
for policy in $POLICIES; do
  # Fresh workers per policy: every run starts with empty caches.
  wpids=()
  for ((i = 0; i < WORKERS / PER; i++)); do
    extra=(--speedup "$SPEEDUP")
    [ "$ENGINE" = cpu ] && extra=()
    "$BIN" worker --engine "$ENGINE" --model "$MODEL" --served-model-name bench \
      --num-workers "$PER" --kv-blocks "$KV_BLOCKS" "${extra[@]}" \
      > "$STATE/worker-$policy-$i.log" 2>&1 & wpids+=($!); pids+=($!)
  done
  PORT=$(free_port)
  # "kv:W" is the KV router with --kv-overlap-weight W.
  router=(--router "${policy%%:*}")
  [ "$policy" != "${policy#*:}" ] && router+=(--kv-overlap-weight "${policy#*:}")
  "$BIN" frontend --port "$PORT" "${router[@]}" > "$STATE/frontend-$policy.log" 2>&1 & FPID=$!; pids+=($FPID)
  wait_model "$PORT" bench
  sleep 2  # every worker registered and reporting load
  "$BIN" bench --url "http://127.0.0.1:$PORT" --model bench --workload shared-prefix \
    --groups "$NGROUPS" --prefix-len "$PREFIX" --suffix-len "$SUFFIX" --output-len "$OSL" \
    --rate "$RATE" --num-requests "$REQS" --tokenizer "$TOKENIZER" --seed 7 --no-progress \
    --json "$STATE/$policy.json" > "$STATE/$policy.txt"
  curl -sf "http://127.0.0.1:$PORT/metrics" > "$STATE/$policy.metrics" || true
  python3 - "$STATE/$policy.json" "$STATE/$policy.metrics" "$policy" "$NGROUPS" "$PREFIX" "$SUFFIX" <<'PY'
import json, sys
b = json.load(open(sys.argv[1])); s = b.get("summary", b)
metrics = open(sys.argv[2]).read().splitlines()
def m(name):
    return sum(float(l.split()[-1]) for l in metrics if l.startswith(name + " ") or l.startswith(name + "{"))
policy, groups, prefix, suffix = sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
def get(*keys):
    for k in keys:
        v = s
        for part in k.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        if v is not None:
            return v
    return None
ok = get("requests_ok", "totals.requests_ok", "ok")
prompt = get("prompt_tokens", "totals.prompt_tokens")
cached = get("cached_tokens", "totals.cached_tokens")
# Ideal: every request but each group's first finds the whole prefix (in full blocks).
ideal = (ok - groups) / ok * (prefix // 16 * 16) / (prefix + suffix) if ok else 0
hit = cached / prompt if prompt else 0
print(json.dumps({"policy": policy,
  "ttft_ms_p50": get("ttft_ms.p50", "ttft.p50", "ttft_ms_p50"),
  "ttft_ms_p90": get("ttft_ms.p90", "ttft.p90", "ttft_ms_p90"),
  "itl_ms_p50": get("itl_ms.p50", "itl.p50", "itl_ms_p50"),
  "hit_rate": round(hit, 3), "ideal_hit_rate": round(ideal, 3),
  "hit_vs_ideal": round(hit / ideal, 3) if ideal else None,
  "router_predicted_hit": round(m("ferrite_router_overlap_blocks_total") / max(m("ferrite_router_prompt_blocks_total"), 1), 3),
  "requests_ok": ok, "errors": get("requests_failed", "totals.requests_failed", "failed")}))
PY
  kill "${wpids[@]}" "$FPID" 2>/dev/null || true; wait "${wpids[@]}" "$FPID" 2>/dev/null || true
done
