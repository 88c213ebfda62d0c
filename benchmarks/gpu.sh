#!/usr/bin/env bash
# GPU checks and the XL/2 measurements of benchmarks/RESULTS.md, as one script for a CUDA machine.
# Run from the repository root:  bash benchmarks/gpu.sh [OUTDIR]   (PY=... picks a CUDA-enabled python)
# Ordered cheapest first, each step with its own timeout, so a short GPU session still gets the core
# numbers: the GPU tests, then cache vs recompute eager, with CUDA graphs, with compile + CUDA graphs.
set -uo pipefail
OUT=${1:-${OUT:-benchmarks/gpu}}
PY=${PY:-python}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor}
$PY -c "import torch; assert torch.cuda.is_available(); print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" \
    | tee "$OUT/env.txt" || exit 1
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit,memory.total --format=csv >> "$OUT/env.txt" 2>&1

# 1. sync-free loop, CUDA graphs == eager, compile + graphs == eager, flat memory (tests/test_gpu.py)
timeout 300 $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tail -20 | tee "$OUT/pytest-gpu.txt"

# 2. XL/2 256², 80 frames (1 given + 10 AR steps of 8), 100 IDDPM steps, bf16, random weights
bench() {  # name, timeout, extra flags
    local name=$1 limit=$2; shift 2
    timeout "$limit" $PY -m ca2vdm_cli bench --arch xl2-256 --device cuda --dtype bf16 --steps 100 --frames 80 \
        --json "$OUT/xl2-256-$name.json" "$@" 2> "$OUT/xl2-256-$name.txt"
    echo "$name: exit $?" | tee -a "$OUT/status.txt"
}
bench eager 300 --engines cache,recompute,recompute-full
bench graphs 240 --engines cache --cuda-graphs
bench compile-graphs 600 --engines cache,recompute --compile --cuda-graphs
bench compile 600 --engines cache --compile
