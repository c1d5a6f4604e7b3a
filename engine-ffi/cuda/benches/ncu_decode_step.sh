#!/bin/bash
# ncu durations of one eager decode step (after warm-up), grouped by kernel; run in gpu-bin/
# on the GPU machine with cuda_bench and models/ next to it (docs/benchmarks/cuda.md).
# Extra arguments are cuda_bench settings (e.g. invariant:0 pdl:0). Writes $OUT/ncu.csv.
set -u
TOK=models/llama3_1/tokenizer.json
/usr/local/cuda/bin/ncu --metrics gpu__time_duration.sum --launch-skip 4000 --launch-count 800 \
    --csv --page raw ./cuda_bench $TOK graphs:0 "$@" step:30 > $OUT/ncu.csv 2> $OUT/ncu.err
python3 - $OUT/ncu.csv <<'PY'
import csv, sys, collections, re
rows = list(csv.reader(open(sys.argv[1])))
hdr = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
h = rows[hdr]; ki, ti = h.index("Kernel Name"), h.index("gpu__time_duration.sum")
data = [r for r in rows[hdr + 2:] if len(r) > ti]
names = [r[ki] for r in data]
starts = [i for i, n in enumerate(names) if n.startswith("embed")]
a, b = starts[0], starts[1]
step = data[a:b]
agg = collections.defaultdict(lambda: [0, 0.0])
per = collections.defaultdict(list)
for r in step:
    n = re.sub(r"\(.*", "", r[ki])[:70]
    agg[n][0] += 1; agg[n][1] += float(r[ti].replace(",","")); per[n].append(float(r[ti].replace(",","")))
tot = sum(v[1] for v in agg.values())
print(f"one decode step = {len(step)} kernels, sum of kernel times {tot/1e6:.3f} ms")
for n, (c, t) in sorted(agg.items(), key=lambda x: -x[1][1]):
    print(f"  {t/1e6:7.3f} ms  {c:4d}x  {n}  first 6 (us): {[round(v/1e3,1) for v in per[n][:6]]}")
PY
