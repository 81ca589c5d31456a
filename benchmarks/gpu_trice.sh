#!/usr/bin/env bash
# One prepared GPU session (device tool) for issue 6 section 5: the TRICE benchmark in a larger
# configuration than the CPU default (python -m ppl.models.trice), both tasks. Writes to $OUT
# (default: a new folder from mktemp -d, printed). Usage there: bash benchmarks/gpu_trice.sh
# (no carry needed: pretraining runs there, ~1 min).
#
# Budget: about 8 minutes. Per task: 4096 training questions, 200 steps of M = 128, 3 seeds,
# every method; the JSON is rewritten after each seed, so the timeout keeps finished seeds.
# Overrides: TRICE_TASKS (default "chain-sum pointer"), TRICE_STEPS, TRICE_SEEDS, TRICE_TRAIN,
# TRICE_BATCH, TRICE_TIMEOUT (per task, default 220 s).
#
# Nothing is written to or run from a fixed /tmp path: the package links and the pretraining
# cache live in private mktemp -d folders, removed on exit.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-$(mktemp -d)}"; mkdir -p "$OUT"; echo "results in $OUT"
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT  # the pretraining cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1

# Our package from the working tree, uninstalled (benchmarks/gpu_setup.sh: links in a fresh
# mktemp -d folder, $PPL_ROOT), removed on exit with the cache.
source benchmarks/gpu_setup.sh || exit 1
trap 'rm -rf "$WORK" "$PPL_ROOT"' EXIT
export PPL_CACHE="$WORK/cache"

for TASK in ${TRICE_TASKS:-chain-sum pointer}; do
  NAME="trice-gpu-$TASK"
  timeout "${TRICE_TIMEOUT:-220}" python3 -m ppl.models.trice --task "$TASK" --steps "${TRICE_STEPS:-200}" \
    --seeds "${TRICE_SEEDS:-3}" --train-questions "${TRICE_TRAIN:-4096}" --batch-size "${TRICE_BATCH:-128}" \
    --json "$OUT/$NAME.json" --figures "$OUT/figures-$TASK" 2>&1 | tee "$OUT/$NAME.txt"
  echo "python exit status ${PIPESTATUS[0]} (124: stopped by the timeout)" | tee -a "$OUT/$NAME.txt"
  if [ -f "$OUT/$NAME.json" ]; then
    python3 -m ppl.models.trice --report "$OUT/$NAME.json" 2>&1 | tee "$OUT/$NAME-report.txt"
  fi
done
