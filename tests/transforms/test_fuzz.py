"""Random small programs with random strategy maps: each runs and passes a z-test, or raises a
named error (a ValueError/TypeError naming an address). Never an internal error, a hang, or a
silent zero.

Program: sites ``x_i ~ D_i(θ_i)``, some inside a 2-copy ``ppl.vmap`` plate, and the cost
``Σ_i a_i s_i + Σ_{i<j} b_ij s_i s_j`` with ``s_i`` the (summed) value of site i. The sites are
independent, so the exact objective is the same polynomial of the means ``E[s_i]`` (closed forms
below), and its gradient the exact gradient.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ppl
from ppl import transforms as T
from tests.conftest import assert_unbiased, vmapped

# name: (distribution of θ, mean of one draw as a function of θ)
FAMILIES = {
    "normal": (lambda t: dist.Normal(t, 1.0), lambda t: t),
    "gamma": (lambda t: dist.Gamma(jnp.exp(t), 1.0), lambda t: jnp.exp(t)),
    "bernoulli": (lambda t: dist.Bernoulli(logits=t), jax.nn.sigmoid),
    "poisson": (lambda t: dist.Poisson(jnp.exp(t)), lambda t: jnp.exp(t)),
    "categorical": (
        lambda t: dist.Categorical(logits=jnp.stack([0.0 * t, t, -t])),
        lambda t: jnp.sum(jnp.arange(3.0) * jax.nn.softmax(jnp.stack([0.0 * t, t, -t]))),
    ),
}
STRATEGIES = {
    "reparam": T.reparam,
    "reinforce": T.reinforce,
    "reinforce+constant": lambda: T.reinforce(T.constant(1.0)),
    "enum": T.enum,
    "mvd": T.mvd,
    "auto": T.auto,
}
PROGRAMS: list[str] = []
OUTCOMES: dict[str, int] = {"z-tested": 0, "refused by name": 0}


def build(sites):
    """An objective over θ (one entry per site) and its exact value as a function of θ."""
    coefficients = [0.5 + 0.25 * i for i in range(len(sites))]

    def draw(name, family, theta, in_plate):
        make = FAMILIES[family][0]
        if not in_plate:
            return jnp.asarray(ppl.sample(name, make(theta)), jnp.float32)

        @ppl.gen
        def copy(t):
            return jnp.asarray(ppl.sample("x", make(t)), jnp.float32)

        return jnp.sum(ppl.sample(name, ppl.vmap(copy, in_axes=None, axis_size=2), theta))

    @T.expectation
    def objective(theta):
        values = [draw(f"s{i}", family, theta[i], in_plate) for i, (family, in_plate, _) in enumerate(sites)]
        cost = sum(a * v for a, v in zip(coefficients, values))
        for i in range(len(values) - 1):
            cost = cost + 0.3 * values[i] * values[i + 1]
        return cost

    def exact(theta):
        means = [FAMILIES[f][1](theta[i]) * (2.0 if p else 1.0) for i, (f, p, _) in enumerate(sites)]
        value = sum(a * m for a, m in zip(coefficients, means))
        for i in range(len(means) - 1):
            value = value + 0.3 * means[i] * means[i + 1]
        return value

    return objective, exact


site = st.tuples(st.sampled_from(sorted(FAMILIES)), st.booleans(), st.sampled_from(sorted(STRATEGIES)))


def check_unbiased_or_refused_by_name(sites) -> None:
    """One random program: its gradient passes the z-test, or it is refused naming an address."""
    objective, exact = build(sites)
    strategies = {f"s{i}" + ("/x" if p else ""): STRATEGIES[s]() for i, (_, p, s) in enumerate(sites)}
    theta = jnp.linspace(-0.4, 0.3, len(sites))
    est = objective.estimator(strategies=strategies)
    label = "fuzz/" + "+".join(f"{f}{'[plate]' if p else ''}:{s}" for f, p, s in sites)
    PROGRAMS.append(label)
    try:
        est.value_and_grad(jax.random.key(0), theta)
    except (ValueError, TypeError) as e:
        message = str(e)
        assert "address '" in message and "s" in message, f"{label}: an unnamed error: {message}"
        OUTCOMES["refused by name"] += 1
        return
    grads = vmapped(lambda k: est.grad(k, theta), 4000, seed=len(PROGRAMS))
    truth = jax.grad(exact)(theta)
    assert not (jnp.all(grads == 0) and jnp.any(truth != 0)), f"{label}: a silent zero gradient"
    assert_unbiased(grads, truth, label)
    values = vmapped(lambda k: est.estimate(k, theta), 4000, seed=len(PROGRAMS))
    assert math.isfinite(float(values.mean()))
    OUTCOMES["z-tested"] += 1


FUZZ = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
PROGRAM = st.lists(site, min_size=1, max_size=3)


@pytest.mark.filterwarnings("ignore::ppl.transforms.StrategyWarning")  # auto may pick baseline-free terms
@settings(max_examples=10, **FUZZ)
@given(PROGRAM)
def test_random_programs_are_unbiased_or_refused_by_name(sites) -> None:
    check_unbiased_or_refused_by_name(sites)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::ppl.transforms.StrategyWarning")
@settings(max_examples=30, **FUZZ)
@given(PROGRAM)
def test_more_random_programs_are_unbiased_or_refused_by_name(sites) -> None:
    check_unbiased_or_refused_by_name(sites)


def test_the_fuzz_covered_many_programs_both_ways() -> None:
    if PROGRAMS:  # run after the fuzz tests in the same session
        assert len(PROGRAMS) >= 10, OUTCOMES
        assert OUTCOMES["z-tested"] >= 3 and OUTCOMES["refused by name"] >= 3, OUTCOMES
        print(f"fuzz: {len(PROGRAMS)} programs, {OUTCOMES}")
