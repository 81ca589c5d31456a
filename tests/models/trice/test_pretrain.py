"""Pretraining the TRICE base model (ppl.models.trice.pretrain): data mixture, disk cache, accuracy."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from ppl.models.trice import pretrain, tasks
from ppl.models.trice import transformer as tf

TINY = pretrain.PretrainConfig(
    steps=4,
    batch_size=8,
    warmup=1,
    pool_size=48,
    chunk=2,
    model=tf.Config(d_model=16, heads=2, mlp=32, layers=1, soft_prompt=2),
)


def _same(a: tf.Params, b: tf.Params) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
def test_cache_saves_reloads_and_retrains(tmp_path, monkeypatch):
    calls = []
    real = pretrain.pretrain
    monkeypatch.setattr(pretrain, "pretrain", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = pretrain.load_or_pretrain("chain-sum", 0, tmp_path, TINY)
    path = pretrain.cache_path("chain-sum", 0, TINY, tmp_path)
    assert len(calls) == 1 and path.exists() and path.with_suffix(".json").exists()
    assert path.parent == tmp_path and path.name.startswith("chain-sum-seed0-")
    again = pretrain.load_or_pretrain("chain-sum", 0, tmp_path, TINY)
    assert len(calls) == 1 and _same(first, again)  # loaded, not retrained
    # The parameters moved from their initialization.
    assert not _same(first, tf.init(jax.random.split(jax.random.key(0))[0], TINY.model))
    # Another configuration, seed or task is another file, trained afresh.
    changed = dataclasses.replace(TINY, corruption=0.2)
    assert pretrain.cache_path("chain-sum", 0, changed, tmp_path) != path
    assert pretrain.cache_path("chain-sum", 1, TINY, tmp_path) != path
    assert pretrain.cache_path("pointer", 0, TINY, tmp_path) != path
    other = pretrain.load_or_pretrain("chain-sum", 0, tmp_path, changed)
    assert len(calls) == 2 and not _same(first, other)
    # A corrupted file retrains (deterministically: the same parameters), with a warning, and is
    # overwritten.
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(
        RuntimeWarning, match="retraining the base model: .*cannot be read as a ppl checkpoint"
    ):
        fixed = pretrain.load_or_pretrain("chain-sum", 0, tmp_path, TINY)
    assert len(calls) == 3 and _same(first, fixed)
    assert _same(pretrain.load_params(path, "chain-sum", 0, TINY), first)
    # The record beside it is strict JSON.
    assert json.loads(path.with_suffix(".json").read_text())["seed"] == 0
    # The default directory honours $PPL_CACHE.
    monkeypatch.setenv("PPL_CACHE", str(tmp_path / "env"))
    assert pretrain.cache_path("pointer", 2, TINY).parent == tmp_path / "env"


def test_a_modified_cache_file_is_never_loaded(tmp_path, monkeypatch):
    """The cached parameters carry a SHA-256 checksum and their identity (task, seed, whole
    configuration): a modified file, or one renamed to another configuration's path, is refused
    and retrained, never loaded."""
    first = pretrain.load_or_pretrain("chain-sum", 0, tmp_path, TINY)
    path = pretrain.cache_path("chain-sum", 0, TINY, tmp_path)
    original = path.read_bytes()
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    name = max((n for n in arrays if n != "meta"), key=lambda n: arrays[n].size)
    weights = arrays[name]
    arrays[name] = weights + np.float32(1e31)  # consistent zip, wrong weights
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match="checksum mismatch, the file is corrupt or was modified"):
        pretrain.load_params(path, "chain-sum", 0, TINY)
    data = bytearray(original)
    at = bytes(data).index(weights.tobytes()[:64])  # the largest weight array's first bytes
    data[at + 5] ^= 0x10  # one bit flipped in the weights
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"Bad CRC-32|checksum mismatch"):
        pretrain.load_params(path, "chain-sum", 0, TINY)
    calls = []
    real = pretrain.pretrain
    monkeypatch.setattr(pretrain, "pretrain", lambda *a, **k: calls.append(a) or real(*a, **k))
    with pytest.warns(RuntimeWarning, match="retraining the base model"):
        again = pretrain.load_or_pretrain("chain-sum", 0, tmp_path, TINY)
    assert len(calls) == 1 and _same(again, first)
    # Another configuration's file under this configuration's name: its identity differs.
    other = dataclasses.replace(TINY, corruption=0.2)
    pretrain.load_or_pretrain("chain-sum", 0, tmp_path, other)
    path.write_bytes(pretrain.cache_path("chain-sum", 0, other, tmp_path).read_bytes())
    with pytest.raises(ValueError, match=r"belongs to another run \(config: stored"):
        pretrain.load_params(path, "chain-sum", 0, TINY)
    with pytest.raises(FileNotFoundError, match="no cached parameters"):
        pretrain.load_params(tmp_path / "missing.npz", "chain-sum", 0, TINY)


@pytest.mark.parametrize("task", tasks.TASKS)
def test_mixture_batch(task):
    pool = tasks.make_split(task, 40, seed=0, split="pretrain")
    config = dataclasses.replace(pretrain.DEFAULT, batch_size=400)
    batch = pretrain.mixture_batch
    prompts, z = batch(task, pool, jax.random.key(0), config, pretrain.noise_of(task, config))
    assert prompts.shape == (400, tasks.PROMPT_LEN) and z.shape == (400, tasks.MAX_RATIONALE)
    hinted = np.asarray((prompts == tasks.HINT).any(-1))
    assert not hinted[:200].any() and hinted[200:].all()
    answers = np.asarray(prompts[:, -2])  # the hinted prompt ends in "HINT y SEP"
    assert bool(tasks.correct(z[200:], answers[200:]).all())  # hinted: clean gold rationales
    assert bool((tf.after_eos(z) == (z == tasks.PAD)).all())  # unhinted: same layout, k steps
    clean = pretrain.noise_of(task, dataclasses.replace(config, corruption=0.0, slip_fraction=0.0))
    p_clean, z_clean = batch(task, pool, jax.random.key(0), config, clean)
    np.testing.assert_array_equal(p_clean, prompts)
    wrong = ~np.asarray(z_clean == z)[:200].all(-1)
    assert 0.15 < wrong.mean() < 0.8  # some scratchpads corrupted, most not everywhere


def test_evaluate_accuracy_and_bad_config():
    params = tf.init(jax.random.key(0))
    split = tasks.make_split("pointer", 8, seed=0, split="heldout", ks=[3, 5])
    greedy = pretrain.evaluate_accuracy(jax.random.key(0), params, split)
    assert set(greedy) == {3, 5} and all(0.0 <= v <= 1.0 for v in greedy.values())
    assert greedy == pretrain.evaluate_accuracy(jax.random.key(1), params, split)  # greedy ignores the key
    sampled = pretrain.evaluate_accuracy(
        jax.random.key(0), params, split, hinted=True, greedy=False, samples=3
    )
    assert set(sampled) == {3, 5}
    assert pretrain.mean_accuracy({3: 0.5, 4: 0.25}) == 0.375
    with pytest.raises(ValueError, match=r"corruption must be in \[0, 1\], got 1.5"):
        pretrain.PretrainConfig(corruption=1.5)
    with pytest.raises(ValueError, match="unknown task 'sum'"):
        pretrain.cache_path("sum", 0)


@pytest.mark.slow
@pytest.mark.parametrize("task", tasks.TASKS)
def test_real_pretraining_reaches_the_target_accuracy(task, tmp_path):
    result = pretrain.pretrain(task, 0)
    heldout = tasks.make_split(task, 1200, seed=0, split="heldout")
    key = jax.random.key(0)
    greedy = pretrain.evaluate_accuracy(key, result.params, heldout)
    sampled = pretrain.evaluate_accuracy(key, result.params, heldout, greedy=False, samples=4)
    guide = pretrain.evaluate_accuracy(key, result.params, heldout, hinted=True, greedy=False, samples=4)
    for per_k in (greedy, sampled):
        assert 0.25 <= pretrain.mean_accuracy(per_k) <= 0.7, per_k
        assert per_k[3] > per_k[8] + 0.1, per_k  # harder with more steps
    assert pretrain.mean_accuracy(guide) > pretrain.mean_accuracy(sampled) + 0.3, (guide, sampled)
    assert result.wall_s < 240
