#!/usr/bin/env bash
# One prepared GPU session (device tool) for issue 4: the digits energy model at full scale
# (ppl.models.unnormalized --scale full), the 2D sets at full scale, and the step-time
# comparison of ours vs hand-written JAX at compute-bound sizes. Writes to $OUT.
# Usage there: bash benchmarks/gpu_unnormalized.sh   (no carry needed)
set -uo pipefail
export PYTHONUNBUFFERED=1
# $OUT is set by the device tool; elsewhere a fresh private folder (never a fixed /tmp path).
OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/ppl-gpu-unnormalized.XXXXXXXX")}"; mkdir -p "$OUT"; echo "writing to $OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1

source benchmarks/gpu_setup.sh

# 1. Step times, ours vs hand-written JAX (D = 2 and 64, batches up to 65536).
timeout 150 python3 benchmarks/unnormalized_overhead.py --dims 2,64 --batches 256,4096,65536 \
  --repeats 100 --rounds 10 --compiles 1 --json "$OUT/unnormalized_overhead-gpu.json" 2>&1 \
  | tee "$OUT/unnormalized_overhead-gpu.txt"
# 2. Digits at full scale (3 seeds, fitted and narrow noise), then the 2D sets at full scale.
# Full scale is unmeasured on the GPU: steps are capped so each call fits its timeout
# (the JSON is written only at the end of a call).
timeout 240 python3 -m ppl.models.unnormalized --scale full --sections digits --digits-noises fitted,narrow \
  --steps 5000 --no-progress --json "$OUT/unnormalized-digits-gpu.json" 2>&1 | tee "$OUT/unnormalized-digits-gpu.txt"
timeout 150 python3 -m ppl.models.unnormalized --scale full --sections toy --steps 3000 --no-progress \
  --json "$OUT/unnormalized-toy-gpu.json" 2>&1 | tee "$OUT/unnormalized-toy-gpu.txt"
