#!/usr/bin/env bash
# One prepared GPU session (device tool) for benchmarks/vae_overhead.py: ELBO and IWELBO(8)
# value-and-gradient, ours vs hand-written JAX vs NumPyro vs GenJAX 1.0.x (the peer).
# Needs the GenJAX 1.0.14 wheels in .whl/ (carry: [".whl"]; see docs/benchmarks.md for the
# download command). Writes to $OUT. Usage there: bash benchmarks/gpu_vae_overhead.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
# Two JAX processes share the GPU (ours, then the GenJAX peer): allocate on demand.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# $OUT is set by the device tool; elsewhere a fresh private folder (never a fixed /tmp path).
OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/ppl-gpu-vae.XXXXXXXX")}"; mkdir -p "$OUT"; echo "writing to $OUT"
# The GenJAX wheels' install target and the peer's launcher: a fresh private folder too.
PEER="$(mktemp -d "${TMPDIR:-/tmp}/ppl-genjax.XXXXXXXX")"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1

# GenJAX 1.0.14 and its dependencies from the carried wheels (no network there), for the peer only.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$PEER/site" .whl/*.whl > "$OUT/pip.txt" 2>&1 || echo "pip install of .whl failed" | tee -a "$OUT/pip.txt"
printf '#!/usr/bin/env bash\nPYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec python3 "$@"\n' "$PEER/site" \
  > "$PEER/genjax-python"
chmod +x "$PEER/genjax-python"
"$PEER/genjax-python" -c "import genjax, jax; from importlib import metadata; print('genjax', metadata.version('genjax'), 'jax', jax.__version__)" 2>&1 | tail -3 | tee -a "$OUT/pip.txt"

source benchmarks/gpu_setup.sh

# The issue's batches plus one compute-bound size; one compile per function (the whole script
# must fit one device command and leave budget to rerun it).
B="${VAE_BATCHES:-64,128,256,512,1024,65536}"
B_OFF="${VAE_BATCHES_OFF:-64,1024,65536}"
# 1. All systems, GenJAX included, runtime support checks on (the library default).
timeout 330 python3 benchmarks/vae_overhead.py --batches "$B" --repeats 200 --rounds 20 --compiles 1 \
  --genjax-python "$PEER/genjax-python" --genjax-timeout 200 \
  --json "$OUT/vae_overhead-gpu.json" 2>&1 | tee "$OUT/vae_overhead-gpu.txt"
# 2. Ours with runtime checks off (tuned training loops); GenJAX's figures do not change.
timeout 120 python3 benchmarks/vae_overhead.py --batches "$B_OFF" --repeats 200 --rounds 20 --compiles 1 \
  --runtime-checks off --json "$OUT/vae_overhead-gpu-nochecks.json" 2>&1 | tee "$OUT/vae_overhead-gpu-nochecks.txt"
