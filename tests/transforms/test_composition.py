"""Composition: nested scopes, deterministic factors, scan, particles, branching, nested calls."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import pytest

import ppl
from ppl import transforms as T
from tests.conftest import assert_unbiased, vmapped

N = 10_000


def test_nested_scopes_times_deterministic_factor() -> None:
    @T.expectation
    def inner(theta):
        x = ppl.sample("x", dist.Bernoulli(logits=theta))
        return 3.0 * x + 1.0

    @T.expectation
    def outer(theta):
        y = ppl.sample("y", dist.Normal(theta, 1.0))
        return jnp.exp(theta) * inner(theta) + y**2

    def exact(theta):
        return jnp.exp(theta) * (3.0 * jax.nn.sigmoid(theta) + 1.0) + theta**2 + 1.0

    for strategy in (T.reinforce(), T.mvd(), T.enum()):
        est = outer.estimator(strategies={"x": strategy})
        grads = vmapped(lambda k, est=est: est.grad(k, 0.3), N, seed=1)
        assert_unbiased(grads, jax.grad(exact)(0.3), f"nested/{type(strategy).__name__}")


def test_sum_of_independent_scopes_and_product() -> None:
    @T.expectation
    def a(theta):
        return ppl.sample("x", dist.Normal(theta, 1.0)) ** 2

    @T.expectation
    def b(theta):
        return ppl.sample("c", dist.Bernoulli(logits=theta)) + 1.0

    @T.expectation
    def combined(theta):
        return a(theta) * b(theta) + 2.0 * a(theta)

    def exact(theta):
        ea, eb = theta**2 + 1.0, jax.nn.sigmoid(theta) + 1.0
        return ea * eb + 2.0 * ea

    est = combined.estimator(default=T.reinforce())
    grads = vmapped(lambda k: est.grad(k, 0.5), N, seed=2)
    assert_unbiased(grads, jax.grad(exact)(0.5), "sum-product/reinforce")


def test_scan_sites_reparam_and_reinforce() -> None:
    """A random walk z_t ~ Normal(z_{t-1} + θ, 1), cost Σ z_t²; discrete kicks c_t ~ Bern(σ(θ))."""
    steps = 4

    @T.expectation
    def walk(theta):
        def step(z, _):
            c = ppl.sample("c", dist.Bernoulli(logits=theta))
            z = ppl.sample("z", dist.Normal(z + theta * c, 1.0))
            T.add_cost(z**2)
            return z, None

        ppl.scan(step, 0.0, None, length=steps)
        return 0.0

    def exact(theta):
        p = jax.nn.sigmoid(theta)
        mean_kick, var_kick = theta * p, theta**2 * p * (1 - p)
        ts = jnp.arange(1, steps + 1)
        return jnp.sum((ts * mean_kick) ** 2 + ts * (1.0 + var_kick))

    est = walk.estimator(strategies={"z": T.reparam(), "c": T.reinforce()})
    grads = vmapped(lambda k: est.grad(k, 0.4), N, seed=3)
    assert_unbiased(grads, jax.grad(exact)(0.4), "scan/reparam+reinforce")
    est = walk.estimator(default=T.reinforce())
    grads = vmapped(lambda k: est.grad(k, 0.4), 4 * N, seed=4)
    assert_unbiased(grads, jax.grad(exact)(0.4), "scan/reinforce")


def test_vmap_plate_inside_sim() -> None:
    @ppl.gen
    def point(theta):
        return ppl.sample("x", dist.Poisson(jnp.exp(theta)))

    @T.expectation
    def objective(theta):
        tr = T.sim(ppl.vmap(point, in_axes=None, axis_size=3), theta)
        return jnp.sum(tr.choices["x"] * jnp.arange(1.0, 4.0))

    est = objective.estimator(default=T.reinforce())
    grads = vmapped(lambda k: est.grad(k, 0.2), N, seed=5)
    assert_unbiased(grads, 6.0 * jnp.exp(0.2), "vmap-plate/reinforce")


def test_particles_with_leave_one_out() -> None:
    @T.expectation
    def objective(theta):
        n = ppl.sample("n", dist.Poisson(theta))
        return (n - 2.0) ** 2

    est = objective.estimator(strategies={"n": T.reinforce(T.leave_one_out())}, particles=8)
    grads = vmapped(lambda k: est.grad(k, 1.5), N, seed=6)
    # E = λ + (λ - 2)² → 1 + 2(λ - 2)
    assert_unbiased(grads, 1.0 + 2.0 * (1.5 - 2.0), "particles/leave-one-out")
    plain = objective.estimator(strategies={"n": T.reinforce()})
    plain_grads = vmapped(lambda k: plain.grad(k, 1.5), N, seed=6)
    assert jnp.std(grads) < jnp.std(plain_grads) / 2


def test_discrete_choice_selects_the_continuous_draw() -> None:
    locs = jnp.array([-2.0, 0.5, 3.0])

    @T.expectation
    def objective(theta):
        c = ppl.sample("c", dist.Categorical(logits=theta["logits"]))
        z = ppl.sample("z", dist.Normal(locs[c] * theta["scale"], 1.0))
        return z**2

    def exact(theta):
        p = jax.nn.softmax(theta["logits"])
        return jnp.sum(p * ((locs * theta["scale"]) ** 2 + 1.0))

    theta = {"logits": jnp.array([0.2, -0.1, 0.4]), "scale": jnp.array(0.8)}
    for name, strategy in (("enum", T.enum()), ("mvd", T.mvd()), ("reinforce", T.reinforce())):
        est = objective.estimator(strategies={"c": strategy, "z": T.reparam()})
        grads = vmapped(lambda k, est=est: est.grad(k, theta), N, seed=7)
        assert_unbiased(grads, jax.grad(exact)(theta), f"branch/{name}")


def test_generative_functions_calling_generative_functions() -> None:
    @ppl.gen
    def leaf(theta):
        return ppl.sample("b", dist.Bernoulli(logits=theta))

    @ppl.gen
    def family(theta):
        u = ppl.sample("u", dist.Normal(theta, 1.0))
        b = ppl.sample("inner", leaf, theta)
        return u + b

    @T.expectation
    def objective(theta):
        tr = T.sim(family, theta)
        assert set(tr.choices) == {"u", "inner"} and set(tr.choices["inner"]) == {"b"}
        return tr.retval**2

    def exact(theta):
        p = jax.nn.sigmoid(theta)
        return theta**2 + 1.0 + 2.0 * theta * p + p

    est = objective.estimator(strategies={"inner/b": T.enum()})
    grads = vmapped(lambda k: est.grad(k, 0.3), N, seed=8)
    assert_unbiased(grads, jax.grad(exact)(0.3), "nested-gen/enum")


def test_two_enumerated_sites_in_series() -> None:
    @T.expectation
    def objective(theta):
        a = ppl.sample("a", dist.Bernoulli(logits=theta))
        b = ppl.sample("b", dist.Bernoulli(logits=theta * (1.0 + a)))
        return 2.0 * a + 5.0 * b * a + b

    def exact(theta):
        pa, pb1, pb0 = jax.nn.sigmoid(theta), jax.nn.sigmoid(2 * theta), jax.nn.sigmoid(theta)
        return pa * (2.0 + 6.0 * pb1) + (1 - pa) * pb0

    est = objective.estimator(default=T.enum())
    grad = est.grad(jax.random.key(0), 0.6)
    assert jnp.allclose(grad, jax.grad(exact)(0.6), rtol=1e-5)


def test_strategies_inside_a_plate_are_chosen_by_full_address() -> None:
    @ppl.gen
    def unit(logit):
        return ppl.sample("z", dist.Bernoulli(logits=logit))

    @T.expectation
    def objective(logits):
        return jnp.sum(ppl.sample("units", ppl.vmap(unit), logits) * jnp.arange(1.0, 4.0))

    logits = jnp.array([0.3, -0.2, 0.5])
    est = objective.estimator(strategies={"units/z": T.reinforce()})
    grads = vmapped(lambda k: est.grad(k, logits), N, seed=8)
    p = jax.nn.sigmoid(logits)
    assert_unbiased(grads, jnp.arange(1.0, 4.0) * p * (1 - p), "vmap-plate/full-address")
    with pytest.raises(
        ValueError,
        match=re.escape(
            "strategies: no sample site or log_expectation at address 'z' in <expectation 'objective'>; "
            "its addresses are 'units/z'; did you mean 'units/z'?"
        ),
    ):
        objective.estimator(strategies={"z": T.reinforce()}).grad(jax.random.key(0), logits)
