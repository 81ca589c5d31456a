"""unnormalized_nll and nce: objectives over one energy-model function.

Model: log p̃(x; θ, c) = −(x − θ)²/2 − c (Z = √(2π) e^{−c}); noise q = N(0, 1.5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest

from ppl import transforms as T
from tests.conftest import assert_unbiased, vmapped

NOISE = dist.Normal(0.0, 1.5)
DATA = jnp.array([0.9, 1.7, 0.2, 1.1, 2.3])
PARAMS = {"theta": jnp.asarray(0.6), "c": jnp.asarray(0.3)}
N = 4000


def log_density(params, x):
    return -0.5 * (x - params["theta"]) ** 2 - params["c"]


def exact_nll(params, data=DATA):
    log_z = 0.5 * jnp.log(2 * jnp.pi) - params["c"]
    return -jnp.mean(jax.vmap(lambda x: log_density(params, x))(data)) + log_z


def quadrature(fn, loc, scale, order=80):
    """E[fn(y)] for y ~ N(loc, scale) by Gauss–Hermite (probabilists')."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(order)
    y = loc + scale * jnp.asarray(nodes)
    return jnp.sum(jnp.asarray(weights) * jax.vmap(fn)(y)) / np.sqrt(2 * np.pi)


def population_nce(params, data=DATA, nu=2.0):
    def logit(x):
        return log_density(params, x) - NOISE.log_prob(x) - jnp.log(nu)

    data_term = jnp.mean(jax.nn.softplus(-jax.vmap(logit)(data)))
    return data_term + nu * quadrature(lambda y: jax.nn.softplus(logit(y)), 0.0, 1.5)


def test_nce_value_and_gradient_are_unbiased_for_the_population_loss() -> None:
    loss = T.nce(log_density, NOISE, noise_ratio=2.0)
    values, gs, _ = vmapped(lambda k: loss.value_and_grad(k, PARAMS, DATA), N)
    truth = (population_nce(PARAMS), jax.grad(population_nce)(PARAMS))
    assert_unbiased((values, gs), truth, "NCE value and gradient vs quadrature")


@pytest.mark.parametrize("estimator", [T.naive(), T.compositional(0.1), T.self_normalized_bound()])
def test_nll_value_is_data_term_plus_log_partition_estimate(estimator) -> None:
    nll = T.unnormalized_nll(log_density, NOISE, samples=64)
    est = nll.estimator(strategies={"log_partition": estimator})
    state = est.init(PARAMS, DATA)
    value, grad, _ = est.value_and_grad(jax.random.key(0), PARAMS, DATA, state=state)
    assert abs(value - exact_nll(PARAMS)) < 0.1  # 64 importance samples, first step
    assert jnp.allclose(grad["c"], 0.0, atol=1e-5)  # c cancels exactly


def test_nll_gradient_with_the_bound_at_log_z_is_unbiased_for_the_exact_nll_gradient() -> None:
    nll = T.unnormalized_nll(log_density, NOISE, samples=8)
    est = nll.estimator(strategies={"log_partition": T.self_normalized_bound()})
    state = est.init(PARAMS, DATA)
    log_z = 0.5 * jnp.log(2 * jnp.pi) - PARAMS["c"]
    state = {"log_partition": {**state["log_partition"], "offset": log_z, "count": jnp.ones((), jnp.int32)}}
    values, gs = vmapped(lambda k: est.value_and_grad(k, PARAMS, DATA, state=state)[:2], N)
    assert_unbiased((values, gs), (exact_nll(PARAMS), jax.grad(exact_nll)(PARAMS)), "NLL with bound at log Z")


@pytest.mark.parametrize("estimator", [T.compositional(0.1), T.self_normalized_bound()])
def test_training_with_far_off_noise_stays_finite_under_jit(estimator) -> None:
    """Data N(6, 1), noise N(0, 1): the importance weights span e^{±18}."""
    data = 6.0 + jax.random.normal(jax.random.key(1), (256,))
    nll = T.unnormalized_nll(log_density, dist.Normal(0.0, 1.0), samples=64)
    est = nll.estimator(strategies={"log_partition": estimator})
    opt = optax.adam(0.05)
    params = {"theta": jnp.zeros(()), "c": jnp.zeros(())}
    state, opt_state = est.init(params, data[:64]), opt.init(params)

    @jax.jit
    def step(i, params, state, opt_state):
        batch = jax.random.choice(jax.random.fold_in(jax.random.key(2), i), data, (64,))
        value, grad, state = est.value_and_grad(jax.random.key(i), params, batch, state=state)
        updates, opt_state = opt.update(grad, opt_state)
        return optax.apply_updates(params, updates), state, opt_state, value

    for i in range(400):
        params, state, opt_state, value = step(i, params, state, opt_state)
        assert jnp.isfinite(value) and jnp.isfinite(params["theta"]), (i, value, params)


def test_same_key_same_result() -> None:
    loss = T.nce(log_density, NOISE)
    a = loss.value_and_grad(jax.random.key(5), PARAMS, DATA)
    b = loss.value_and_grad(jax.random.key(5), PARAMS, DATA)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), a, b))


# -- bad input ---------------------------------------------------------------------------------


def test_noise_with_a_batch_shape_is_an_error() -> None:
    with pytest.raises(ValueError, match="noise at address 'noise' \\(Normal\\) has batch shape \\(2,\\)"):
        T.nce(log_density, dist.Normal(jnp.zeros(2), 1.0))


def test_noise_with_the_wrong_support_is_an_error() -> None:
    with pytest.raises(
        ValueError, match="noise at address 'log_partition/z' \\(Gamma\\) has support positive"
    ):
        T.unnormalized_nll(log_density, dist.Gamma(2.0, 1.0), samples=4)


def test_noise_of_the_wrong_dimension_is_an_error() -> None:
    noise = dist.MultivariateNormal(jnp.zeros(3), jnp.eye(3))
    nll = T.unnormalized_nll(lambda p, x: -jnp.sum(x**2), noise, samples=4)
    est = nll.estimator(strategies={"log_partition": T.naive()})
    with pytest.raises(
        ValueError, match="draws points of shape \\(3,\\), but the data batch has shape \\(5, 2\\)"
    ):
        est.value_and_grad(jax.random.key(0), 0.0, jnp.zeros((5, 2)))


def test_bad_noise_ratio_and_non_scalar_density() -> None:
    with pytest.raises(ValueError, match="noise_ratio must be positive"):
        T.nce(log_density, NOISE, noise_ratio=0.0)
    loss = T.nce(lambda p, x: jnp.stack([x, x]), NOISE)
    with pytest.raises(ValueError, match="log_density must return a scalar per datum"):
        loss.value_and_grad(jax.random.key(0), PARAMS, DATA)
