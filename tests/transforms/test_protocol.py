"""The extension protocol: user strategies work wherever built-in ones do, and wrong ones are caught.

A user strategy subclasses :class:`T.Strategy` (any rule) or :class:`T.ScoreFunction` (the
estimator then owns its baseline: constant, running average, leave-one-out across particles).
Its :class:`T.Site` carries the site's distribution and key everywhere, inside ``ppl.vmap``
blocks, particle blocks and ``log_expectation`` terms too (there one element at a time).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import pytest

import ppl
from ppl import transforms as T
from tests.conftest import _Z_RECORD, assert_unbiased, vmapped

N = 10_000
LOGITS = jnp.array([0.3, -0.5, 0.8])
WEIGHTS = jnp.array([1.0, 2.0, 3.0])


@dataclasses.dataclass(frozen=True)
class MyScore(T.ScoreFunction):
    """A user's score-function rule: the built-in surrogate, inherited."""


@dataclasses.dataclass(frozen=True)
class ScoreFromDist(T.Strategy):
    """A user's rule that recomputes the log density from ``site.dist`` (one element in blocks)."""

    shapes: list = dataclasses.field(default_factory=list, compare=False)

    def surrogate(self, site: T.Site) -> jax.Array:
        self.shapes.append(tuple(site.dist.batch_shape))
        lp = jnp.sum(site.dist.log_prob(site.value))
        return jax.lax.stop_gradient(site.downstream) * (lp - jax.lax.stop_gradient(lp))


@dataclasses.dataclass(frozen=True)
class Overconfident(T.ScoreFunction):
    """A planted bug: the signal is scaled by 1.2, so the gradient is 20% too large."""

    def signal(self, site: T.Site) -> jax.Array:
        return 1.2 * site.downstream


@ppl.gen
def unit(logit):
    return ppl.sample("c", dist.Bernoulli(logits=logit))


@T.expectation
def plate(logits):
    return jnp.sum(ppl.sample("units", ppl.vmap(unit), logits) * WEIGHTS)


def exact_plate_gradient(logits=LOGITS):
    p = jax.nn.sigmoid(logits)
    return WEIGHTS * p * (1 - p)


@pytest.mark.parametrize(
    ("strategy", "particles"),
    [(MyScore(), 1), (MyScore(T.constant(2.0)), 1), (MyScore(T.leave_one_out()), 3), (ScoreFromDist(), 1)],
    ids=["plain", "constant", "leave-one-out", "from-dist"],
)
def test_user_strategies_inside_a_plate_are_unbiased(strategy, particles) -> None:
    est = plate.estimator(strategies={"units/c": strategy}, particles=particles)
    grads = vmapped(lambda k: est.grad(k, LOGITS), N, seed=3)
    assert_unbiased(grads, exact_plate_gradient(), f"protocol/plate/{type(strategy).__name__}")
    if isinstance(strategy, ScoreFromDist):
        assert set(strategy.shapes) == {()}  # one element's Bernoulli, not the stacked block


def test_a_user_score_function_with_a_running_average_keeps_state() -> None:
    est = plate.estimator(strategies={"units/c": MyScore(T.running_average(0.5))})
    state = est.init(LOGITS)
    for i in range(5):
        _, _, state = est.value_and_grad(jax.random.key(i), LOGITS, state=state)
    assert int(state["units/c"]["count"]) == 5
    grads = vmapped(lambda k: est.grad(k, LOGITS, state=state), N, seed=4)
    assert_unbiased(grads, exact_plate_gradient(), "protocol/plate/running-average")


def test_user_strategies_inside_particle_blocks_of_the_objective_library() -> None:
    @ppl.gen
    def model(params):
        z = ppl.sample("z", dist.Bernoulli(0.4))
        ppl.sample("y", dist.Normal(2.0 * z - 1.0, 1.0))

    @ppl.gen
    def guide(params):
        ppl.sample("z", dist.Bernoulli(logits=params))

    def exact_iwelbo2(logit, y=0.3):
        q1 = jax.nn.sigmoid(logit)
        log_p = jnp.log(jnp.array([0.6, 0.4])) + dist.Normal(jnp.array([-1.0, 1.0]), 1.0).log_prob(y)
        log_q = jnp.log(jnp.array([1 - q1, q1]))
        log_w = log_p - log_q
        total = 0.0
        for a in range(2):
            for b in range(2):
                total = total + jnp.exp(log_q[a] + log_q[b]) * (
                    jnp.logaddexp(log_w[a], log_w[b]) - jnp.log(2.0)
                )
        return total

    for strategy in (MyScore(), ScoreFromDist()):
        est = T.iwelbo(model, guide, 2).estimator(strategies={"particles/z": strategy})
        grads = vmapped(lambda k, est=est: est.grad(k, 0.2, {"y": 0.3}), N, seed=5)
        assert_unbiased(grads, jax.grad(exact_iwelbo2)(0.2), f"protocol/iwelbo/{type(strategy).__name__}")


def test_user_strategies_inside_log_expectation() -> None:
    """``log E_q[exp ℓ]`` with a discrete site; the naive estimator's gradient is ``Σ w_j ∇…/Σ w``."""

    def log_weight(logits):
        k = ppl.sample("k", dist.Categorical(logits=logits))
        return jnp.array([0.5, -1.0, 0.2])[k]

    @T.expectation
    def objective(logits):
        return T.log_expectation("log_Z", log_weight, logits, samples=4)

    logits = jnp.array([0.1, -0.3, 0.4])

    def run(strategy):
        est = objective.estimator(strategies={"log_Z": T.self_normalized_bound(0.5), "log_Z/k": strategy})
        state = est.init(logits)
        return vmapped(lambda key: est.grad(key, logits, state=state), N, seed=6)

    # The user rules are the built-in ones written by hand: the same keys give the same gradients.
    assert jnp.allclose(run(MyScore(T.leave_one_out())), run(T.reinforce(T.leave_one_out())), atol=1e-5)
    assert jnp.allclose(run(ScoreFromDist()), run(T.reinforce()), atol=1e-5)


def test_a_planted_bias_fails_the_suites_own_z_test() -> None:
    est = plate.estimator(strategies={"units/c": Overconfident()})
    grads = vmapped(lambda k: est.grad(k, LOGITS), N, seed=7)
    with pytest.raises(AssertionError, match="z = "):
        assert_unbiased(grads, exact_plate_gradient(), "protocol/planted-bias")
    # The z-scores of this deliberate failure stay out of the suite's summary.
    _Z_RECORD[:] = [record for record in _Z_RECORD if not record[0].startswith("protocol/planted-bias")]


def test_a_user_strategy_must_have_a_baseline_object() -> None:
    with pytest.raises(TypeError, match=r"MyScore: baseline must be a Baseline, got 0\.0"):
        MyScore(0.0)
