#!/usr/bin/env bash
# One prepared GPU session (device tool) for issue 5 section 4: the part-segmentation benchmark
# (python -m ppl.models.partseg) at full resolution, 512² renders, every row of pipeline.VARIANTS.
# Writes to $OUT. Usage there: bash benchmarks/gpu_partseg.sh   (no carry needed)
#
# Budget: about 8 minutes (two noise levels of at most 200 s each). The runtime at 512² there is unmeasured; on 2 CPU cores here one shape
# costs ≈ 0.35 s of data generation + ≈ 2.6 s for the 7 rows (em-converge ≈ 1.3 s of it), so
# 50 shapes × 3 categories of one seed take ≈ 7.5 min on such a CPU. The run goes seed by seed,
# category by category, shape by shape, and rewrites its JSON after every (seed, category) block
# and every 30 s within one, so the `timeout` keeps everything it finished (unfinished block marked
# "partial"); the report step prints the tables of whatever was saved.
# Overrides (for a dry run elsewhere): PARTSEG_SHAPES, PARTSEG_SEEDS, PARTSEG_RESOLUTION,
# PARTSEG_NOISES (default "heavy mild"), PARTSEG_TIMEOUT (per noise level), PARTSEG_CPU_SHAPES
# (0 skips step 1), PARTSEG_CPU_TIMEOUT.
# Nothing is written to or run from a fixed /tmp path: the package links live in a private
# mktemp -d folder, removed on exit; $OUT defaults to a new mktemp -d folder (printed).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-$(mktemp -d)}"; mkdir -p "$OUT"; echo "results in $OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
nproc >> "$OUT/gpu.txt"

# Our package from the working tree, uninstalled (benchmarks/gpu_setup.sh: links in a fresh
# mktemp -d folder, $PPL_ROOT), removed on exit.
source benchmarks/gpu_setup.sh || exit 1
trap 'rm -rf "$PPL_ROOT"' EXIT

SHAPES="${PARTSEG_SHAPES:-50}"
SEEDS="${PARTSEG_SEEDS:-3}"
RES="${PARTSEG_RESOLUTION:-512}"
CPU_SHAPES="${PARTSEG_CPU_SHAPES:-6}"

# 1. Baseline on the same host's CPU (JAX on CPU): the E/M seconds per shape at 512² for the EM
#    rows, to set beside the GPU's (one chair seed, a few shapes; about 30 s).
if [ "$CPU_SHAPES" -gt 0 ]; then
  JAX_PLATFORMS=cpu timeout "${PARTSEG_CPU_TIMEOUT:-60}" python3 -m ppl.models.partseg --shapes "$CPU_SHAPES" \
    --seeds 1 --resolution "$RES" --categories chair --variants heuristic,em-hard,em-soft,em-converge \
    --no-progress --json "$OUT/partseg-cpu-$RES.json" 2>&1 | tee "$OUT/partseg-cpu-$RES.txt"
fi

# 2. The full-resolution run on the GPU, once per mask-noise level (heavy first: the regime of
#    the reference's prototype): as many seeds of SHAPES shapes per category as fit.
for NOISE in ${PARTSEG_NOISES:-heavy mild}; do
  NAME="partseg-gpu-$RES-$NOISE"
  timeout "${PARTSEG_TIMEOUT:-200}" python3 -m ppl.models.partseg --shapes "$SHAPES" --seeds "$SEEDS" \
    --resolution "$RES" --noise "$NOISE" --no-progress --json "$OUT/$NAME.json" 2>&1 | tee "$OUT/$NAME.txt"
  status=${PIPESTATUS[0]}
  echo "python exit status $status (124: stopped by the timeout)" | tee -a "$OUT/$NAME.txt"
  # 3. Tables of what was saved (complete or partial).
  if [ -f "$OUT/$NAME.json" ]; then
    python3 -m ppl.models.partseg --report "$OUT/$NAME.json" 2>&1 | tee "$OUT/$NAME-report.txt"
  fi
done
