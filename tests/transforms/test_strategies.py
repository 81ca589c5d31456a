"""Every strategy × distribution is unbiased against the exact gradient (z-test, N ≥ 10,000).

Each case is E_{x ~ p(θ)}[f(x)] with a closed-form expectation; the truth is
``jax.grad`` of the closed form.
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import pytest

import ppl
from ppl import transforms as T
from tests.conftest import assert_unbiased, vmapped

N = 10_000


def _case(make_dist, f, exact, theta):
    return make_dist, f, exact, theta


def _dirichlet_mean_sq(a):
    a0 = jnp.sum(a)
    return a[0] * (a[0] + 1) / (a0 * (a0 + 1)) + a[1] / a0


CASES = {
    "Normal": _case(
        lambda t: dist.Normal(t["loc"], t["scale"]),
        lambda x: x**2 + x,
        lambda t: t["loc"] ** 2 + t["scale"] ** 2 + t["loc"],
        {"loc": 0.7, "scale": 1.3},
    ),
    "MultivariateNormal(diag)": _case(
        lambda t: dist.MultivariateNormal(t["loc"], scale_tril=jnp.diag(t["scale"])),
        lambda x: jnp.sum(x**2) + x[0],
        lambda t: jnp.sum(t["loc"] ** 2) + jnp.sum(t["scale"] ** 2) + t["loc"][0],
        {"loc": jnp.array([0.5, -1.0]), "scale": jnp.array([0.8, 1.2])},
    ),
    "MultivariateNormal(full)": _case(
        lambda t: dist.MultivariateNormal(t["loc"], scale_tril=jnp.tril(t["tril"])),
        lambda x: jnp.sum(x**2) + x[1],
        lambda t: jnp.sum(t["loc"] ** 2) + jnp.sum(jnp.tril(t["tril"]) ** 2) + t["loc"][1],
        {"loc": jnp.array([0.5, -1.0]), "tril": jnp.array([[1.0, 0.0], [0.6, 0.9]])},
    ),
    "Uniform": _case(
        lambda t: dist.Uniform(t["low"], t["high"]),
        lambda x: x**2,
        lambda t: (t["low"] ** 2 + t["low"] * t["high"] + t["high"] ** 2) / 3,
        {"low": -0.5, "high": 1.5},
    ),
    "Gamma": _case(
        lambda t: dist.Gamma(t["concentration"], t["rate"]),
        lambda x: x**2,
        lambda t: t["concentration"] * (t["concentration"] + 1) / t["rate"] ** 2,
        {"concentration": 2.5, "rate": 1.5},
    ),
    "Beta": _case(
        lambda t: dist.Beta(t["a"], t["b"]),
        lambda x: x**2,
        lambda t: t["a"] * (t["a"] + 1) / ((t["a"] + t["b"]) * (t["a"] + t["b"] + 1)),
        {"a": 2.0, "b": 3.0},
    ),
    "Dirichlet": _case(
        lambda t: dist.Dirichlet(t["alpha"]),
        lambda x: x[0] ** 2 + x[1],
        lambda t: _dirichlet_mean_sq(t["alpha"]),
        {"alpha": jnp.array([1.5, 2.0, 3.0])},
    ),
    "Bernoulli": _case(
        lambda t: dist.Bernoulli(logits=t["logits"]),
        lambda x: (x - 0.3) ** 2 + 2 * x,
        lambda t: jax.nn.sigmoid(t["logits"]) * (0.49 + 2) + (1 - jax.nn.sigmoid(t["logits"])) * 0.09,
        {"logits": 0.4},
    ),
    "Bernoulli(batched)": _case(
        lambda t: dist.Bernoulli(probs=t["probs"]),
        lambda x: jnp.prod(1.0 + x) + x[0],
        lambda t: jnp.prod(1.0 + t["probs"]) + t["probs"][0],
        {"probs": jnp.array([0.2, 0.6, 0.7])},
    ),
    "Categorical": _case(
        lambda t: dist.Categorical(logits=t["logits"]),
        lambda x: jnp.array([1.0, -2.0, 0.5, 3.0])[x],
        lambda t: jnp.sum(jax.nn.softmax(t["logits"]) * jnp.array([1.0, -2.0, 0.5, 3.0])),
        {"logits": jnp.array([0.1, -0.4, 0.3, 0.0])},
    ),
    "Poisson": _case(
        lambda t: dist.Poisson(t["rate"]),
        lambda x: jnp.asarray(x, jnp.float32) ** 2,
        lambda t: t["rate"] + t["rate"] ** 2,
        {"rate": 1.7},
    ),
    "Geometric": _case(
        lambda t: dist.Geometric(probs=t["probs"]),
        lambda x: jnp.asarray(x, jnp.float32),
        lambda t: (1 - t["probs"]) / t["probs"],
        {"probs": 0.45},
    ),
    "Binomial": _case(
        lambda t: dist.Binomial(4, probs=t["probs"]),
        lambda x: jnp.asarray(x, jnp.float32) ** 2,
        lambda t: 4 * t["probs"] * (1 - t["probs"]) + (4 * t["probs"]) ** 2,
        {"probs": 0.35},
    ),
}

COVERAGE = {
    "reparam": [
        "Normal",
        "MultivariateNormal(diag)",
        "MultivariateNormal(full)",
        "Uniform",
        "Gamma",
        "Beta",
        "Dirichlet",
    ],
    # Uniform's support moves with θ: reinforce is rejected there (see test_errors).
    "reinforce": [c for c in CASES if c != "Uniform"],
    "enum": ["Bernoulli", "Bernoulli(batched)", "Categorical", "Binomial"],
    "mvd": ["Bernoulli", "Bernoulli(batched)", "Categorical", "Normal", "Poisson", "Geometric"],
}
STRATEGIES = {"reparam": T.reparam, "reinforce": T.reinforce, "enum": T.enum, "mvd": T.mvd}


def objective_for(make_dist, f):
    @T.expectation
    def objective(theta):
        x = ppl.sample("x", make_dist(theta))
        return f(x)

    return objective


def to_float(theta):
    return jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), theta)


@pytest.mark.parametrize(("strategy", "case"), [(s, c) for s, cases in COVERAGE.items() for c in cases])
def test_gradient_is_unbiased(strategy: str, case: str) -> None:
    make_dist, f, exact, theta = CASES[case]
    theta = to_float(theta)
    estimator = objective_for(make_dist, f).estimator(strategies={"x": STRATEGIES[strategy]()})
    grads = vmapped(lambda k: estimator.grad(k, theta), N, seed=zlib.crc32(case.encode()) % 1000)
    assert_unbiased(grads, jax.grad(exact)(theta), f"{strategy}/{case}")


@pytest.mark.parametrize(("strategy", "case"), [(s, c) for s, cases in COVERAGE.items() for c in cases])
def test_value_is_the_plain_monte_carlo_value(strategy: str, case: str) -> None:
    make_dist, f, _, theta = CASES[case]
    theta = to_float(theta)
    objective = objective_for(make_dist, f)
    estimator = objective.estimator(strategies={"x": STRATEGIES[strategy]()})
    keys = jax.random.split(jax.random.key(3), 16)
    values = jax.vmap(lambda k: estimator.value_and_grad(k, theta)[0])(keys)
    plain = jax.vmap(lambda k: objective.estimate(k, theta))(keys)
    assert jnp.allclose(values, plain, rtol=1e-5, atol=1e-5), (values, plain)


@pytest.mark.parametrize("case", ["Bernoulli", "Categorical"])
def test_strategies_agree_with_each_other(case: str) -> None:
    """reparam-free discrete case: enum is exact; reinforce and mvd means match it."""
    make_dist, f, _, theta = CASES[case]
    theta = to_float(theta)
    objective = objective_for(make_dist, f)
    exact = objective.estimator(strategies={"x": T.enum()}).grad(jax.random.key(0), theta)
    for name in ("reinforce", "mvd"):
        est = objective.estimator(strategies={"x": STRATEGIES[name]()})
        grads = vmapped(lambda k, est=est: est.grad(k, theta), N, seed=11)
        assert_unbiased(grads, exact, f"agree/{name}-vs-enum/{case}")


def test_continuous_strategies_agree_on_normal() -> None:
    make_dist, f, _, theta = CASES["Normal"]
    theta = to_float(theta)
    objective = objective_for(make_dist, f)
    means = {}
    for name in ("reparam", "reinforce", "mvd"):
        est = objective.estimator(strategies={"x": STRATEGIES[name]()})
        grads = vmapped(lambda k, est=est: est.grad(k, theta), N, seed=5)
        means[name] = grads
    for name in ("reinforce", "mvd"):
        diff = jax.tree.map(lambda a, b: a - b, means[name], means["reparam"])
        assert_unbiased(diff, jax.tree.map(jnp.zeros_like, theta), f"agree/{name}-vs-reparam")


def test_auto_policy_picks_by_distribution() -> None:
    policy = T.auto()

    def pick(d, in_block=False, particles=1, cost=1):
        return policy.choose(("x",), d, in_block, particles, cost)[0]

    assert isinstance(pick(dist.Normal(0.0, 1.0)), T.Reparam)
    assert isinstance(pick(dist.Gamma(2.0, 1.0)), T.Reparam)
    assert isinstance(pick(dist.Bernoulli(0.3)), T.Enum)
    assert isinstance(pick(dist.Bernoulli(0.3), in_block=True), T.Reinforce)
    poisson = pick(dist.Poisson(2.0), particles=4)
    assert isinstance(poisson, T.Reinforce)
    assert poisson.baseline == T.leave_one_out()
    big = dist.Bernoulli(jnp.full(10, 0.3))  # 2**10 joint values > 64
    assert isinstance(pick(big), T.Reinforce)
    assert isinstance(pick(dist.Bernoulli(0.3), cost=64), T.Reinforce)  # the budget is for all sites
