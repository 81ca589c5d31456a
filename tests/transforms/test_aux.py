"""Objectives with auxiliary outputs (has_aux): stacked per datum and particle, gradient stopped."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import ppl
from ppl import transforms as T


@T.expectation(has_aux=True)
def squared_error(theta, x):
    z = ppl.sample("z", dist.Normal(theta, 1.0))
    return (z - x) ** 2, {"z": z}


def test_aux_is_stacked_per_datum_and_particle_and_matches_the_value() -> None:
    xs = jnp.arange(4.0)
    est = squared_error.estimator(particles=3, in_axes=(0,))
    (value, aux), grad, _ = est.value_and_grad(jax.random.key(0), 0.5, xs)
    assert aux["z"].shape == (4, 3)
    np.testing.assert_allclose(value, jnp.mean((aux["z"] - xs[:, None]) ** 2), rtol=1e-6)
    np.testing.assert_allclose(grad, jnp.mean(2 * (aux["z"] - xs[:, None])), rtol=1e-5)  # reparam: dz/dθ = 1
    again = est.estimate(jax.random.key(0), 0.5, xs)
    np.testing.assert_allclose(again[1]["z"], aux["z"])


def test_aux_under_a_continuation_strategy_is_the_sampled_run() -> None:
    @T.expectation(has_aux=True)
    def coin(p):
        b = ppl.sample("b", dist.Bernoulli(p))
        return b * 2.0, b

    for seed in range(4):
        (value, b), grad, _ = coin.estimator(default=T.enum()).value_and_grad(jax.random.key(seed), 0.3)
        np.testing.assert_allclose(value, 2.0 * b)
        np.testing.assert_allclose(grad, 2.0, rtol=1e-6)  # enum: d/dp E[2b] exactly


def test_has_aux_needs_a_pair() -> None:
    @T.expectation
    def plain(theta):
        return ppl.sample("z", dist.Normal(theta, 1.0))

    with pytest.raises(TypeError, match="is estimated with has_aux=True: return \\(value, aux\\), got"):
        plain.estimator(has_aux=True).value_and_grad(jax.random.key(0), 0.0)
