#!/usr/bin/env bash
# The causal Wan family on a CUDA machine, as one script (issues 13/14). Run from the repository root:
#   bash benchmarks/wan/gpu.sh [OUTDIR] [MODEL]      (PY=... picks a CUDA-enabled python)
# Cheapest first, each step with its own timeout, so a short GPU session still gets the core numbers:
#   1. random weights, the real 1.3B shape (no download): cache vs recompute, 21 latent frames (81 video
#      frames, global attention), then 63 latent frames (240 video frames) with a window of 12 and a
#      3-frame sink, eager and with --compile; denoise-only frames/s, KV bytes, peak memory per block;
#   2. with a downloaded preset MODEL (default self-forcing; skipped when it is not downloaded):
#      `ca2vdm generate` 81 and 240 frames end to end (JSON: frames/s, peak GPU memory), and
#      streaming vs whole-clip VAE decode (benchmarks/wan/decode.py), and TempCache + padding collapse
#      against dense at 240 frames (PSNR / SSIM per time segment, benchmarks/tempcache/compare_videos.py).
set -uo pipefail
OUT=${1:-${OUT:-benchmarks/wan/gpu}}
MODEL=${2:-self-forcing}
PY=${PY:-python}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor}
$PY -c "import torch; assert torch.cuda.is_available(); print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" \
    | tee "$OUT/env.txt" || exit 1
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit,memory.total --format=csv >> "$OUT/env.txt" 2>&1

bench() {  # name, timeout, extra flags
    local name=$1 limit=$2; shift 2
    timeout "$limit" $PY -m ca2vdm_cli bench --arch wan-1.3b --device cuda --dtype bf16 \
        --json "$OUT/wan-1.3b-$name.json" "$@" 2> "$OUT/wan-1.3b-$name.txt"
    echo "$name: exit $?" | tee -a "$OUT/status.txt"
}
bench 81-eager 300 --frames 21 --engines cache,recompute
bench 240-window-eager 300 --frames 63 --engines cache --window 12 --sink-frames 3
bench 240-window-relative 300 --frames 63 --engines cache --window 12 --sink-frames 3 --positions relative
bench 81-compile 600 --frames 21 --engines cache --compile

if $PY -m ca2vdm_cli models --json 2>/dev/null | grep -q "\"name\": \"$MODEL\".*\"cached\": \"yes\""; then
    gen() {  # name, timeout, extra flags
        local name=$1 limit=$2; shift 2
        timeout "$limit" $PY -m ca2vdm_cli generate --model "$MODEL" --device cuda --seed 0 --json \
            --prompt "a red fox running through fresh snow in a pine forest, cinematic" \
            --out "$OUT/$MODEL-$name.mp4" --overwrite "$@" > "$OUT/$MODEL-$name.json" 2> "$OUT/$MODEL-$name.txt"
        echo "generate $name: exit $?" | tee -a "$OUT/status.txt"
    }
    gen 81 600 --frames 81
    gen 240 600 --frames 240 --window 12 --sink-frames 3
    # issue 15 on real weights: same seed and noise, dense vs TempCache (capped groups) + padding collapse
    gen 240-tempcache 600 --frames 240 --window 12 --sink-frames 3 --kv-compress tempcache \
        --tempcache-max-count 4 --sparse-cross pad
    $PY benchmarks/tempcache/compare_videos.py "$OUT/$MODEL-240.mp4" "$OUT/$MODEL-240-tempcache.mp4" 4 \
        > "$OUT/tempcache-vs-dense-240.json" 2>> "$OUT/status.txt"
    timeout 300 $PY benchmarks/wan/decode.py "$MODEL" "$OUT/decode.json" 2> "$OUT/decode.txt"
    echo "decode: exit $?" | tee -a "$OUT/status.txt"
else
    echo "model $MODEL not downloaded: real-weight runs skipped (ca2vdm download $MODEL)" | tee -a "$OUT/status.txt"
fi
