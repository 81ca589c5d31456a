"""The sigmoid belief net VAE: every estimator trains, the gradients are unbiased, bad input fails."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ppl.models import sbn

from tests.conftest import assert_unbiased, vmapped

N = 10_000


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return sbn.load_digits()


def tiny_params(seed: int = 3) -> sbn.Params:
    """3 latents, 4 pixels, weights large enough for a non-trivial posterior; no logit at 0."""
    params = sbn.init_params(jax.random.key(seed), latents=3, pixels=4)
    return {k: 50.0 * v if v.ndim == 2 else v + 0.3 for k, v in params.items()}


TINY_X = jnp.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
STATES = jnp.array(list(itertools.product([0.0, 1.0], repeat=3)))


def exact_iwelbo(params: sbn.Params, x: jax.Array, particles: int) -> jax.Array:
    """IWELBO(K) of one image by enumerating all (2**3)**K particle tuples."""
    logits = sbn.encoder_logits(params, x)
    log_q = jnp.sum(STATES * jax.nn.log_sigmoid(logits) + (1 - STATES) * jax.nn.log_sigmoid(-logits), -1)
    log_w = sbn.log_weights(params, x, STATES)
    tuples = jnp.array(list(itertools.product(range(STATES.shape[0]), repeat=particles)))
    bound = jax.nn.logsumexp(log_w[tuples], -1) - math.log(particles)
    return jnp.sum(jnp.exp(jnp.sum(log_q[tuples], -1)) * bound)


def test_data_are_binary_and_split_as_documented(digits) -> None:
    train, test = digits
    assert train.shape == (1437, 64) and test.shape == (360, 64)
    assert set(np.unique(train)) == {0.0, 1.0} and set(np.unique(test)) == {0.0, 1.0}
    again, _ = sbn.load_digits()
    np.testing.assert_array_equal(train, again)


_evaluate = jax.jit(lambda key, params, x: sbn.iwelbo(key, params, x, 100))


@pytest.mark.parametrize("name", sbn.ESTIMATORS)
def test_each_estimator_gives_finite_gradients_and_a_few_steps_improve_the_bound(digits, name) -> None:
    train, _ = digits
    x = jnp.asarray(train[:32])
    params = start = sbn.init_params(jax.random.key(0), train)
    trainer = sbn.Trainer(name, particles=3)
    state = trainer.init(params, x)
    optimizer = optax.adam(0.03)
    opt_state = optimizer.init(params)
    for i in range(60):  # the estimator is jitted; the optimizer runs eagerly (one compilation per test)
        value, grad, state = trainer.grad(jax.random.key(100 + i), params, x, state)
        if i == 0:
            assert jax.tree.structure(grad) == jax.tree.structure(params)
            for k, g in grad.items():
                assert g.shape == params[k].shape, k
                assert bool(jnp.all(jnp.isfinite(g))), f"{name}: non-finite gradient for {k}"
            assert bool(jnp.isfinite(value)) and float(value) < 0.0
        updates, opt_state = optimizer.update(jax.tree.map(jnp.negative, grad), opt_state, params)
        params = optax.apply_updates(params, updates)
    key = jax.random.key(7)  # common random numbers for the before/after comparison
    before, after = float(_evaluate(key, start, x)), float(_evaluate(key, params, x))
    assert after > before + 1.0, f"{name}: IWELBO(100) {before:.3f} -> {after:.3f} after 60 steps"


def test_rao_blackwellized_elbo_gradient_is_unbiased_against_enumeration() -> None:
    """The per-unit plate program (causal Rao-Blackwellization) against the exact ELBO gradient."""
    params = tiny_params()
    truth = jax.grad(lambda p: jnp.sum(jax.vmap(lambda xi: sbn.exact_elbo(p, xi))(TINY_X)))(params)
    trainer = sbn.Trainer("rb")
    grads = vmapped(lambda k: trainer.grad(k, params, TINY_X)[1], N, seed=11)
    assert_unbiased(grads, truth, "sbn/rb")


def test_vimco_gradient_is_unbiased_for_iwelbo() -> None:
    params, particles = tiny_params(), 2
    truth = jax.grad(lambda p: jnp.sum(jax.vmap(lambda xi: exact_iwelbo(p, xi, particles))(TINY_X)))(params)
    trainer = sbn.Trainer("vimco", particles=particles)
    grads = vmapped(lambda k: trainer.grad(k, params, TINY_X)[1], N, seed=12)
    assert_unbiased(grads, truth, "sbn/vimco")


@pytest.mark.slow
def test_the_numpyro_peer_estimates_the_same_gradient() -> None:
    """The benchmark's NumPyro rows optimize the same ELBO (z-test against the same truth).

    Slow (NumPyro's provenance tracing compiles for ~8 s): run with ``--runslow``.
    """
    params = tiny_params()
    truth = jax.grad(lambda p: jnp.sum(jax.vmap(lambda xi: sbn.exact_elbo(p, xi))(TINY_X)))(params)
    grads = vmapped(lambda k: sbn.numpyro_grad(k, params, TINY_X)[1], N, seed=13)
    assert_unbiased(grads, truth, "sbn/numpyro-peer")


def test_held_out_metric_brackets_the_exact_log_marginal() -> None:
    params = tiny_params()
    for x in TINY_X:
        exact = float(sbn.exact_log_marginal(params, x))
        elbo = float(sbn.exact_elbo(params, x))
        assert elbo < exact - 0.05  # a gap exists, so the next check means something
        bound = float(sbn.iwelbo(jax.random.key(0), params, x[None], 20_000))
        assert exact - 0.01 < bound < exact + 0.005, (bound, exact)


def test_bad_inputs_fail_with_clear_messages(digits) -> None:
    train, _ = digits
    params = sbn.init_params(jax.random.key(0), train)
    with pytest.raises(ValueError, match="unknown sbn estimator 'score'; choose one of reinforce,"):
        sbn.Trainer("score")
    with pytest.raises(ValueError, match="vimco needs particles >= 2, got 1"):
        sbn.Trainer("vimco", particles=1)
    broken = {**params, "encoder_w": params["encoder_w"][:, :5]}
    with pytest.raises(ValueError, match=r"'encoder_w' has shape \(64, 5\), expected \(64, 32\)"):
        sbn.iwelbo(jax.random.key(0), broken, jnp.asarray(train[:2]))
    with pytest.raises(ValueError, match="must be a dict with keys"):
        sbn.check_params({"decoder_w": params["decoder_w"]})
    with pytest.raises(ValueError, match="32 latents is too many"):
        sbn.exact_log_marginal(params, jnp.asarray(train[0]))
    # Data outside the Bernoulli support is rejected by the model's density, not silently scored.
    trainer = sbn.Trainer("reinforce")
    with pytest.raises(Exception, match="outside the support"):
        trainer.grad(jax.random.key(0), params, jnp.full((2, 64), 0.5))
