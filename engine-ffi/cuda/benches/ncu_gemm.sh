#!/bin/bash
# Why a decode GEMM misses the bandwidth roofline: ncu metrics of the tensor-core GEMM on the
# five Llama-3.1-8B decode shapes at one row (the `gemm` section of cuda_bench runs them).
# Run in gpu-bin/ on the GPU machine (docs/benchmarks/cuda.md); writes $OUT/ncu_gemm.csv.
set -u
TOK=models/llama3_1/tokenizer.json
METRICS=gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,\
sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread,\
launch__occupancy_limit_registers,smsp__average_warp_latency_issue_stalled_long_scoreboard,\
smsp__average_warp_latency_issue_stalled_barrier
/usr/local/cuda/bin/ncu --metrics "$METRICS" --kernel-name regex:gemm_mma --launch-count 60 \
    --csv --page raw ./cuda_bench $TOK gemm > $OUT/ncu_gemm.csv 2> $OUT/ncu_gemm.err
python3 - $OUT/ncu_gemm.csv <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
hdr = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
h = rows[hdr]
for r in rows[hdr + 2:]:
    if len(r) < len(h):
        continue
    d = dict(zip(h, r))
    print(d["Kernel Name"][:24], d.get("Grid Size", ""), {k.split("__")[-1][:40]: d[k] for k in h if "__" in k})
PY
