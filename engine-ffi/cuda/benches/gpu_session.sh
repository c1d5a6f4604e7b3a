#!/bin/bash
# One GPU session in two steps, so a lease's device time goes to runs, not setup
# (docs/benchmarks/cuda.md, "How to reproduce").
#
#   engine-ffi/cuda/benches/gpu_session.sh prepare   # here: build, fill gpu-bin/ (no CUDA needed)
#   # device tool, carry ["gpu-bin"], command:
#   cd gpu-bin && ./gpu_session.sh run [quick]       # there: checks first, then the benchmarks
#
# `run` writes each part's log to $OUT (check.log, bench.log, torch.log) and prints the
# lines that matter last. `quick` runs cuda_check and the batch-1 decode section only.
set -u

prepare() {
    cd "$(dirname "$0")/../../.." || exit 1
    local models=${FERRITE_TEST_MODELS:-../shared/models}
    CARGO_TARGET_DIR=target/gpu cargo build --release -p ferrite-cuda --features testing --examples || exit 1
    rm -rf gpu-bin && mkdir -p gpu-bin/models/llama3_1 || exit 1
    cp target/gpu/release/examples/cuda_check target/gpu/release/examples/cuda_bench gpu-bin/
    strip gpu-bin/cuda_check gpu-bin/cuda_bench
    cp -r "$models/stories260k" "$models/reference" gpu-bin/models/
    cp "$models/tokenizers/llama3_1/tokenizer.json" gpu-bin/models/llama3_1/
    cp engine-ffi/cuda/benches/{gpu_session.sh,torch_baseline.py,ncu_decode_step.sh,ncu_gemm.sh} gpu-bin/
    grep -qx '/gpu-bin' .gitignore || echo "warning: gpu-bin/ is not in .gitignore" >&2
    du -sh gpu-bin
}

run() {
    local out=${OUT:-.} tok=models/llama3_1/tokenizer.json
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
    # Correctness first: two commits after v9 never ran on a GPU.
    ./cuda_check models "$tok" 2>&1 | tee "$out/check.log"
    if [ "${PIPESTATUS[0]}" -ne 0 ]; then
        echo "cuda_check did not pass: benchmarks skipped"
        return 1
    fi
    if [ "${1:-}" = quick ]; then
        ./cuda_bench "$tok" decode 2>&1 | tee "$out/bench.log"
    else
        ./cuda_bench "$tok" decode prefill invariant:0 decode prefill serve:128:128:512 \
            serve:1024:256:512 invariant:1 serve:128:128:512 2>&1 | tee "$out/bench.log"
        PYTHONUNBUFFERED=1 python3 torch_baseline.py static decode batch:256:128:128 \
            batch:64:1024:256 2>&1 | tee "$out/torch.log"
    fi
    echo "== summary"
    cat "$out/gpu.txt"
    grep -h "RESULT" "$out/check.log"
    grep -hiE "tok/s|ms/step|ITL" "$out"/bench.log "$out"/torch.log 2>/dev/null | tail -n 30
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    *) sed -n 2,10p "$0"; exit 2 ;;
esac
