# Sourced by the GPU scripts: our package from the working tree, uninstalled, so the
# machine's preinstalled jax is used: ppl/ with transforms/ and models/ linked in as
# ppl.transforms and ppl.models (setuptools' package-dir mapping, by symlinks), in a fresh
# private folder (mktemp -d), never a fixed /tmp path. Exports PPL_ROOT (that folder).
PPL_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/pplroot.XXXXXXXX")" || { echo "gpu_setup.sh: mktemp failed" >&2; return 1; }
export PPL_ROOT
mkdir -p "$PPL_ROOT/ppl"
for f in "$PWD"/ppl/*; do ln -sfn "$f" "$PPL_ROOT/ppl/"; done
ln -sfn "$PWD/transforms" "$PPL_ROOT/ppl/transforms"
ln -sfn "$PWD/models" "$PPL_ROOT/ppl/models"
export PYTHONPATH="$PPL_ROOT${PYTHONPATH:+:$PYTHONPATH}"
(cd "$PPL_ROOT" && python3 -c "import ppl.transforms, jax; print('ppl from', ppl.__file__, 'jax', jax.__version__, jax.devices())") 2>&1 | tail -3
