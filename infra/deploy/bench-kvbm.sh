#!/usr/bin/env bash
# KV offload tiers (issue 9): TTFT of turns 2+ of an interleaved multi-turn workload with
# G1 only, G1+G2 and G1+small G2+G3, each on a fresh `ferrite serve` (embedded, one
# worker). Prints one JSON line per configuration (TTFT p50/p90 of turns 2+ and of turn 1,
# hit rate, onboarded blocks and bandwidth per tier).
#   usage: infra/deploy/bench-kvbm.sh ENGINE [CONFIGS]
#   ENGINE: cpu (SmolLM2-135M Q4_1) or mocker (H100 timing fit, SmolLM2's bf16 KV size)
#   CONFIGS: space-separated of g1 g2 g2small g3 (default: all four)
#   env: CONVS TURNS FIRST ISL OSL CONC KV_BLOCKS (defaults per engine, below) MODEL TOKENIZER
#   FIRST: tokens of each conversation's first message (later turns: ISL)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BIN=${FERRITE_BIN:-target/release/ferrite}
[ -x "$BIN" ] || cargo build --release -p ferrite
MODELS=${FERRITE_TEST_MODELS:-../shared/models}
MODEL=${MODEL:-$MODELS/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf}
TOKENIZER=${TOKENIZER:-$MODELS/smollm2-135m-instruct}
ENGINE=${1:?usage: bench-kvbm.sh cpu|mocker [CONFIGS]}
CONFIGS=${2:-"g1 g2 g2small g3"}
STATE=$(mktemp -d)
DISK_DIR=${DISK_DIR:-$STATE/g3}
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$STATE"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
if [ "$ENGINE" = cpu ]; then
  # 720 KiB per 16-token block (f32 KV of SmolLM2-135M).
  CONVS=${CONVS:-12} TURNS=${TURNS:-6} FIRST=${FIRST:-64} ISL=${ISL:-64} OSL=${OSL:-32} CONC=${CONC:-2}
  KV_BLOCKS=${KV_BLOCKS:-128}; G2=0.5; G2SMALL=0.1; G3=1; extra=()
else
  # Simulated bf16 blocks of 360 KiB, copies at 25 GB/s; timing fit of an H100.
  CONVS=${CONVS:-24} TURNS=${TURNS:-4} FIRST=${FIRST:-4096} ISL=${ISL:-128} OSL=${OSL:-32} CONC=${CONC:-4}
  KV_BLOCKS=${KV_BLOCKS:-1536}; G2=4; G2SMALL=1; G3=4; extra=(--max-batched-tokens 8192)
fi
for cfg in $CONFIGS; do
  case $cfg in
    g1) tiers=() ;;
    g2) tiers=(--kv-host-cache-gb "$G2") ;;
    g2small) tiers=(--kv-host-cache-gb "$G2SMALL") ;;
    g3) tiers=(--kv-host-cache-gb "$G2SMALL" --kv-disk-cache-gb "$G3" --kv-disk-cache-dir "$DISK_DIR") ;;
    *) echo "unknown config $cfg" >&2; exit 2 ;;
  esac
  PORT=$(free_port)
  "$BIN" serve --engine "$ENGINE" --model "$MODEL" --port "$PORT" --kv-blocks "$KV_BLOCKS" \
    "${extra[@]}" "${tiers[@]}" > "$STATE/serve-$cfg.log" 2>&1 & pid=$!
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null 2>&1 && break; sleep 0.2; done
  "$BIN" bench --url "http://127.0.0.1:$PORT" --workload multi-turn --turn-order interleaved \
    --conversations "$CONVS" --turns "$TURNS" --first-input-len "$FIRST" --input-len "$ISL" --output-len "$OSL" \
    --concurrency "$CONC" --seed 7 --tokenizer "$TOKENIZER" --no-progress \
    --json "$STATE/$cfg.json" > "$STATE/$cfg.txt"
  curl -sf "http://127.0.0.1:$PORT/metrics" > "$STATE/$cfg.metrics" || true
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  python3 - "$STATE/$cfg.json" "$STATE/$cfg.metrics" "$cfg" "$ENGINE" "$KV_BLOCKS" <<'PY'
import json, re, sys
rep, met, cfg, engine, g1 = json.load(open(sys.argv[1])), open(sys.argv[2]).read(), *sys.argv[3:]
s = rep["summary"]
def m(name, tier=None):
    tot = 0.0
    for line in met.splitlines():
        if line.startswith(name) and (tier is None or f'tier="{tier}"' in line):
            tot += float(line.rsplit(" ", 1)[1])
    return tot
recs = rep["requests"]
cached = sum(r.get("cached_tokens") or 0 for r in recs if r["turn"] > 0)
prompt = sum(r.get("prompt_tokens") or 0 for r in recs if r["turn"] > 0)
out = {
    "engine": engine, "config": cfg, "g1_blocks": int(g1), "load": s["load"],
    "ok": s["requests_ok"], "failed": s["requests_failed"],
    "ttft_later_p50_ms": round(s["ttft_later_turns_ms"]["p50"], 1),
    "ttft_later_p90_ms": round(s["ttft_later_turns_ms"]["p90"], 1),
    "ttft_first_p50_ms": round(s["ttft_first_turn_ms"]["p50"], 1),
    "later_turn_prompt_tokens": prompt, "later_turn_cached_share": round(cached / max(prompt, 1), 3),
}
for tier in ("g2", "g3"):
    b, sec = m("ferrite_kvbm_onboard_bytes_total", tier), m("ferrite_kvbm_onboard_seconds_sum", tier)
    if b:
        out[f"onboard_{tier}_MB"] = round(b / 1e6, 1)
        out[f"onboard_{tier}_GBps"] = round(b / sec / 1e9, 2) if sec else None
print(json.dumps(out))
PY
done
