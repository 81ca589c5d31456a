#!/usr/bin/env bash
# One prepared GPU session (device tool): overhead benchmark with and without
# runtime support checks, then the strategy unbiasedness suite on the GPU.
# Usage there: bash benchmarks/gpu_run.sh  (writes to $OUT)
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# $OUT is set by the device tool; elsewhere a fresh private folder (never a fixed /tmp path).
OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/ppl-gpu-run.XXXXXXXX")}"; mkdir -p "$OUT"; echo "writing to $OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
B=64,128,256,512,1024,8192,65536,262144
python3 benchmarks/overhead.py --batches $B --repeats 200 --json "$OUT/overhead-gpu.json" 2>&1 | tee "$OUT/overhead-gpu.txt"
python3 benchmarks/overhead.py --batches $B --repeats 200 --compiles 1 --runtime-checks off \
  --json "$OUT/overhead-gpu-nochecks.json" 2>&1 | tee "$OUT/overhead-gpu-nochecks.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/transforms/test_strategies.py \
  tests/transforms/test_composition.py 2>&1 | tail -5 | tee "$OUT/pytest-gpu.txt"
