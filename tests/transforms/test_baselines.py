"""Baselines keep reinforce unbiased, reduce variance, and thread state the Optax way."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import optax
import pytest

import ppl
from ppl import transforms as T
from tests.conftest import assert_unbiased, vmapped

N = 10_000


@T.expectation
def objective(theta):
    n = ppl.sample("n", dist.Poisson(theta))
    return (n - 2.0) ** 2 + 10.0


def exact_grad(theta):
    return 1.0 + 2.0 * (theta - 2.0)


def test_constant_baseline_is_unbiased() -> None:
    est = objective.estimator(strategies={"n": T.reinforce(T.constant(10.5))})
    grads = vmapped(lambda k: est.grad(k, 1.5), N)
    assert_unbiased(grads, exact_grad(1.5), "baseline/constant")


def test_running_average_is_unbiased_and_updates_its_state() -> None:
    est = objective.estimator(strategies={"n": T.reinforce(T.running_average(0.8))})
    state = est.init(1.5)
    assert set(state) == {"n"}
    for i in range(30):
        _, _, state = est.value_and_grad(jax.random.key(i), 1.5, state=state)
    b = T.running_average(0.8).value(state["n"], ())
    assert abs(b - (1.5 + 0.25 + 10.0)) < 1.5  # tracks E[k] = λ + (λ - 2)² + 10
    grads = vmapped(lambda k: est.grad(k, 1.5, state=state), N)
    assert_unbiased(grads, exact_grad(1.5), "baseline/running-average")
    plain = objective.estimator(strategies={"n": T.reinforce()})
    assert jnp.std(grads) < jnp.std(vmapped(lambda k: plain.grad(k, 1.5), N)) / 2


def test_learned_baseline_fits_and_stays_unbiased() -> None:
    est = objective.estimator(
        strategies={"n": T.reinforce(T.learned(lambda p, theta: p["b"], {"b": 0.0}, optax.sgd(0.1)))}
    )
    state = est.init(1.5)
    for i in range(100):
        _, _, state = est.value_and_grad(jax.random.key(i), 1.5, state=state)
    assert abs(state["n"]["params"]["b"] - 11.75) < 1.5
    grads = vmapped(lambda k: est.grad(k, 1.5, state=state), N)
    assert_unbiased(grads, exact_grad(1.5), "baseline/learned")


def test_leave_one_out_matches_a_direct_computation() -> None:
    particles = 4
    est = objective.estimator(strategies={"n": T.reinforce(T.leave_one_out())}, particles=particles)
    key = jax.random.key(7)
    grad = est.grad(key, 1.5)
    keys = jax.random.split(key, particles)
    ns = jnp.stack([dist.Poisson(1.5).sample(jax.random.fold_in(k, 0)) for k in keys]).astype(float)
    costs = (ns - 2.0) ** 2 + 10.0
    b = (costs.sum() - costs) / (particles - 1)
    direct = jnp.mean((costs - b) * (ns / 1.5 - 1.0))  # ∂λ log Poisson(n; λ) = n/λ − 1
    assert jnp.allclose(grad, direct, rtol=1e-5), (grad, direct)


def test_leave_one_out_mean() -> None:
    x = jnp.array([[1.0, 2.0], [3.0, 6.0], [5.0, 1.0]])
    assert jnp.allclose(T.leave_one_out_mean(x), jnp.array([[4.0, 3.5], [3.0, 1.5], [2.0, 4.0]]))
    with pytest.raises(ValueError, match="at least 2 entries"):
        T.leave_one_out_mean(jnp.ones((1, 3)))
