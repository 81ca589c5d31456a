"""``T.fit``: training, failures stopped at their step, checkpoints that resume bit-identically."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest

import ppl
from ppl import transforms as T


@T.expectation
def objective(params, target):
    x = ppl.sample("x", dist.Normal(params["loc"], jnp.exp(params["log_scale"])))
    return -((x - target) ** 2)


PARAMS = {"loc": jnp.zeros(()), "log_scale": jnp.zeros(())}


def run(steps=60, **kw):
    return T.fit(
        objective.estimator(), PARAMS, optax.adam(0.05), steps=steps, key=jax.random.key(0), data=(2.0,), **kw
    )


def test_fit_maximizes_the_objective_and_records_every_value() -> None:
    result = run(steps=300)
    assert abs(float(result.params["loc"]) - 2.0) < 0.3
    assert result.values.shape == (300,) and np.all(np.isfinite(result.values))
    assert result.values[-50:].mean() > result.values[:50].mean()


def test_minimize_and_minibatches_and_evaluations() -> None:
    @T.expectation
    def loss(params, target):
        return (ppl.sample("x", dist.Normal(params, 1.0)) - target) ** 2

    seen = []
    result = T.fit(
        loss.estimator(),
        jnp.zeros(()),
        optax.sgd(0.05),
        steps=100,
        key=jax.random.key(1),
        data=lambda step: (jnp.asarray(1.0 + (step % 2)),),
        maximize=False,
        evaluate=lambda step, params: seen.append(step) or float(params),
        evaluate_every=25,
    )
    assert seen == [25, 50, 75, 100]
    assert [s for s, _ in result.evaluations] == seen
    assert abs(float(result.params) - 1.5) < 0.3


def test_a_diverging_learning_rate_stops_with_the_step_and_the_last_finite_params() -> None:
    with pytest.raises(T.FitError) as info:
        T.fit(objective.estimator(), PARAMS, optax.sgd(1e6), steps=50, key=jax.random.key(0), data=(2.0,))
    error = info.value
    assert 0 < error.step < 50
    assert str(error).startswith(f"fit: step {error.step}: ")
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(error.params))
    assert error.values.shape == (error.step,)


def test_a_bad_parameter_stops_with_the_site_message() -> None:
    @T.expectation
    def scaled(params):
        return ppl.sample("x", dist.Normal(0.0, params["scale"])) ** 2

    # Minimizing E[x²] = scale² with large sgd steps overshoots the scale through zero.
    with pytest.raises(T.FitError, match=re.escape("address 'x' (Normal): parameter scale = ")):
        T.fit(
            scaled.estimator(),
            {"scale": jnp.asarray(1.0)},
            optax.sgd(0.8),
            steps=40,
            key=jax.random.key(0),
            maximize=False,
        )


def test_a_non_finite_gradient_with_valid_numbers_stops_naming_the_leaf() -> None:
    @T.expectation
    def rooted(params):
        return jnp.sqrt(params["a"]) + ppl.sample("z", dist.Normal(params["b"], 1.0))

    with pytest.raises(
        T.FitError, match=re.escape("fit: step 0: the gradient of params['a'] has a non-finite entry")
    ):
        T.fit(rooted.estimator(), {"a": 0.0, "b": 1.0}, optax.sgd(0.1), steps=3, key=jax.random.key(0))


def test_a_value_that_overflows_stops_saying_so() -> None:
    target = T.expectation(lambda p: -((ppl.sample("x", dist.Normal(p, 1.0)) - 3.0) ** 2))
    with pytest.raises(T.FitError, match="is not finite while every distribution parameter"):
        T.fit(target.estimator(), 0.0, optax.sgd(1e4), steps=100, key=jax.random.key(0))


def test_a_finite_gradient_whose_entries_sum_past_float32_trains_on() -> None:
    # The step screens its gradient by the sum of the entries, which overflows here (2 x 2e38):
    # every entry is finite, so the screen is confirmed entry by entry and training goes on.
    @T.expectation
    def steep(params):
        z = ppl.sample("z", dist.Normal(0.0, 1.0))
        return 2e38 * (params["a"][0] - 1.0) + 2e38 * (params["b"][0, 0] - 1.0) + z * params["a"][1]

    params = {"a": jnp.ones(2), "b": jnp.ones((2, 2))}
    # A zero learning rate keeps the value finite (any step would overflow it).
    result = T.fit(steep.estimator(), params, optax.sgd(0.0), steps=3, key=jax.random.key(0))
    assert np.isfinite(result.values).all()
    assert float(result.params["a"][0]) == 1.0


class Interrupted(Exception):
    pass


def interrupt_at(stop):
    def evaluate(step, params):
        if step == stop:
            raise Interrupted
        return float(params["loc"])

    return evaluate


def fit_with_checkpoint(path, config=None, evaluate=None, steps=40, key=0):
    return T.fit(
        objective.estimator(),
        PARAMS,
        optax.adam(0.05),
        steps=steps,
        key=jax.random.key(key),
        data=(2.0,),
        checkpoint=path,
        checkpoint_every=10,
        config=config or {"lr": 0.05},
        evaluate=evaluate,
        evaluate_every=5,
    )


def test_a_resumed_run_equals_an_uninterrupted_one_bit_for_bit(tmp_path) -> None:
    whole = fit_with_checkpoint(tmp_path / "whole.npz")
    with pytest.raises(Interrupted):  # stops at step 25; the checkpoint holds step 20
        fit_with_checkpoint(tmp_path / "part.npz", evaluate=interrupt_at(25))
    resumed = fit_with_checkpoint(tmp_path / "part.npz")
    for a, b in zip(jax.tree_util.tree_leaves(whole.params), jax.tree_util.tree_leaves(resumed.params)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.array_equal(whole.values, resumed.values)
    for a, b in zip(jax.tree_util.tree_leaves(whole.opt_state), jax.tree_util.tree_leaves(resumed.opt_state)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_a_checkpoint_of_another_run_is_refused_naming_what_differs(tmp_path) -> None:
    path = tmp_path / "run.npz"
    fit_with_checkpoint(path, steps=10)
    with pytest.raises(
        ValueError,
        match=re.escape("belongs to another run (config: stored {'lr': 0.05}, this run {'lr': 0.1})"),
    ):
        fit_with_checkpoint(path, config={"lr": 0.1}, steps=10)
    with pytest.raises(ValueError, match="belongs to another run \\(key: stored"):
        fit_with_checkpoint(path, key=1, steps=10)


def test_a_tampered_checkpoint_is_refused(tmp_path) -> None:
    path = tmp_path / "run.npz"
    fit_with_checkpoint(path, steps=10)
    tree = (PARAMS, jnp.arange(3.0))
    T.save_checkpoint(path, tree, {"run": 1})
    loaded = T.load_checkpoint(path, tree, {"run": 1})
    assert np.array_equal(np.asarray(loaded[1]), np.arange(3.0))
    # A modified value in an otherwise well-formed archive: the checksum refuses it.
    with np.load(path) as archive:
        arrays = dict(archive)
    arrays["leaf_00002"] = arrays["leaf_00002"] + np.float32(1e-6)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match="checksum mismatch, the file is corrupt or was modified"):
        T.load_checkpoint(path, tree, {"run": 1})
    # A flipped bit in the archive itself.
    T.save_checkpoint(path, tree, {"run": 1})
    raw = bytearray(path.read_bytes())
    offset = raw.find(np.asarray(2.0, np.float32).tobytes())
    raw[offset + 3] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"cannot be read as a ppl checkpoint|checksum mismatch"):
        T.load_checkpoint(path, tree, {"run": 1})
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read as a ppl checkpoint"):
        T.load_checkpoint(path, tree, {"run": 1})
    # Cut short (a crash mid-copy), and an npz that is not ours (metadata of another shape).
    T.save_checkpoint(path, tree, {"run": 1})
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match="cannot be read as a ppl checkpoint"):
        T.load_checkpoint(path, tree, {"run": 1})
    with open(path, "wb") as f:
        np.savez(f, meta=np.frombuffer(b"[1, 2]", np.uint8))
    with pytest.raises(ValueError, match="its metadata lacks 'leaves', 'identity' or 'sha256'"):
        T.load_checkpoint(path, tree, {"run": 1})


def test_checkpoints_hold_keys_and_refuse_another_structure(tmp_path) -> None:
    path = tmp_path / "keys.npz"
    tree = {"key": jax.random.key(3), "w": jnp.ones(2)}
    T.save_checkpoint(path, tree, {})
    loaded = T.load_checkpoint(path, tree, {})
    assert jnp.array_equal(jax.random.key_data(loaded["key"]), jax.random.key_data(tree["key"]))
    with pytest.raises(ValueError, match=re.escape("array 1 is float32[2], this run's state has float32[3]")):
        T.load_checkpoint(path, {"key": jax.random.key(3), "w": jnp.ones(3)}, {})


def test_bad_arguments_and_paths_fail_before_training(tmp_path) -> None:
    est = objective.estimator()
    with pytest.raises(ValueError, match="fit: steps must be a positive integer, got 0"):
        T.fit(est, PARAMS, optax.adam(0.1), steps=0, key=jax.random.key(0), data=(2.0,))
    with pytest.raises(ValueError, match=r"the folder .* does not exist"):
        T.fit(
            est,
            PARAMS,
            optax.adam(0.1),
            steps=5,
            key=jax.random.key(0),
            data=(2.0,),
            checkpoint=tmp_path / "missing" / "run.npz",
        )
    with pytest.raises(TypeError, match="fit: estimator must be an Estimator"):
        T.fit(objective, PARAMS, optax.adam(0.1), steps=5, key=jax.random.key(0))
