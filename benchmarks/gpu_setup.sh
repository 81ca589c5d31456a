# Sourced by the GPU scripts: our package from the working tree, uninstalled, so the
# machine's preinstalled jax is used: ppl/ with transforms/ and models/ linked in as
# ppl.transforms and ppl.models (setuptools' package-dir mapping, by symlinks).
mkdir -p /tmp/pplroot/ppl
for f in "$PWD"/ppl/*; do ln -sfn "$f" /tmp/pplroot/ppl/; done
ln -sfn "$PWD/transforms" /tmp/pplroot/ppl/transforms
ln -sfn "$PWD/models" /tmp/pplroot/ppl/models
export PYTHONPATH="/tmp/pplroot${PYTHONPATH:+:$PYTHONPATH}"
(cd /tmp && python3 -c "import ppl.transforms, jax; print('ppl from', ppl.__file__, 'jax', jax.__version__, jax.devices())") 2>&1 | tail -3
