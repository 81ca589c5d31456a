"""log_expectation: a log of an expectation inside an objective, with a chosen estimator.

Test target: log Z(θ) for the Gaussian energy log p̃(z) = −a z²/2 + m z, θ = (m, a),
estimated with noise q = N(0, 1.5): Z = √(2π/a) exp(m²/(2a)).
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest

import ppl
from ppl import transforms as T
from tests.conftest import assert_unbiased, vmapped

NOISE = dist.Normal(0.0, 1.5)
THETA = jnp.array([0.4, 1.3])  # (m, a)
M = 8
N = 4000


def log_unnormalized(theta, z):
    return -0.5 * theta[1] * z**2 + theta[0] * z


def exact_log_z(theta):
    m, a = theta
    return 0.5 * jnp.log(2 * jnp.pi / a) + m**2 / (2 * a)


def log_weight(theta):
    z = ppl.sample("z", NOISE)
    return log_unnormalized(theta, z) - NOISE.log_prob(z)


@T.expectation
def log_partition(theta):
    return T.log_expectation("log_Z", log_weight, theta, samples=M)


def hand_written_log_weights(key, theta, samples=M):
    z = NOISE.sample(key, (samples,))
    return log_unnormalized(theta, z) - NOISE.log_prob(z)


def frozen(estimator, **entries):
    """A state for ``estimator`` at address log_Z with the given entries (count 1)."""
    state = log_partition.estimator(strategies={"log_Z": estimator}).init(THETA)
    return {"log_Z": {**state["log_Z"], **entries, "count": jnp.ones((), jnp.int32)}}


def grads(estimator, state, theta=THETA, objective=log_partition, n=N, seed=0):
    est = objective.estimator(strategies={"log_Z": estimator})
    return vmapped(lambda k: est.value_and_grad(k, theta, state=state)[:2], n, seed)


# -- values ----------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", [T.naive(), T.compositional(0.1)], ids=["naive", "compositional"])
def test_value_is_the_plain_log_mean_exp(estimator) -> None:
    est = log_partition.estimator(strategies={"log_Z": estimator})
    state = est.init(THETA)
    for i in range(3):
        key = jax.random.key(i)
        value = est.estimate(key, THETA, state=state)
        assert jnp.allclose(value, log_partition.estimate(key, THETA), atol=1e-6)


def test_values_of_the_naive_term_match_hand_written_log_mean_exp_in_distribution() -> None:
    values = vmapped(lambda k: log_partition.estimate(k, THETA), N)
    hand = vmapped(lambda k: jax.nn.logsumexp(hand_written_log_weights(k, THETA)) - math.log(M), N, seed=1)
    assert_unbiased(values, hand.mean(), "log-mean-exp value vs hand-written")


def test_compositional_with_gamma_one_is_exactly_naive() -> None:
    naive = log_partition.estimator(strategies={"log_Z": T.naive()})
    full = log_partition.estimator(strategies={"log_Z": T.compositional(1.0)})
    state = full.init(THETA)
    for i in range(3):
        v1, g1, _ = naive.value_and_grad(jax.random.key(i), THETA, state={})
        v2, g2, state = full.value_and_grad(jax.random.key(i), THETA, state=state)
        assert jnp.allclose(v1, v2) and jnp.allclose(g1, g2, atol=1e-6)


# -- the self-normalized bound: unbiased for the bound -----------------------------------


@pytest.mark.parametrize("offset_shift", [0.0, 0.7, -0.5])
def test_bound_value_and_gradient_are_unbiased_for_the_bound(offset_shift) -> None:
    b = exact_log_z(THETA) + offset_shift
    state = frozen(T.self_normalized_bound(), offset=b)
    values, gs = grads(T.self_normalized_bound(), state)

    def bound(theta):
        return b + jnp.exp(exact_log_z(theta) - b) - 1.0

    assert_unbiased(
        (values, gs), (bound(THETA), jax.grad(bound)(THETA)), f"bound at b = log Z + {offset_shift}"
    )


def test_bound_is_tight_at_log_z_and_above_it_elsewhere() -> None:
    log_z = exact_log_z(THETA)
    for shift in (-1.0, -0.1, 0.1, 1.0):
        b = log_z + shift
        assert b + jnp.exp(log_z - b) - 1.0 > log_z + 1e-4
    values, gs = grads(T.self_normalized_bound(), frozen(T.self_normalized_bound(), offset=log_z))
    assert_unbiased((values, gs), (log_z, jax.grad(exact_log_z)(THETA)), "bound tight at b = log Z")


@pytest.mark.parametrize("offset_optimizer", [None, optax.adam(0.05)], ids=["mirror", "adam"])
def test_bound_offset_learns_log_z(offset_optimizer) -> None:
    est = log_partition.estimator(strategies={"log_Z": T.self_normalized_bound(0.02, offset_optimizer)})
    state = est.init(THETA)
    step = jax.jit(lambda k, s: est.value_and_grad(k, THETA, state=s)[2])
    for i in range(1500):
        state = step(jax.random.key(i), state)
    assert abs(state["log_Z"]["offset"] - exact_log_z(THETA)) < 0.05


# -- compositional: consistent as the tracker settles ---------------------------------------


def test_compositional_tracker_settles_and_gradient_approaches_the_exact_one() -> None:
    """Tolerance: |log u − log Z| < 0.05 after 3000 steps with γ = 0.02, and the mean gradient
    at the settled tracker within 4 standard errors plus 5% of ∇ log Z."""
    estimator = T.compositional(0.02)
    est = log_partition.estimator(strategies={"log_Z": estimator})
    state = est.init(THETA)
    step = jax.jit(lambda k, s: est.value_and_grad(k, THETA, state=s)[2])
    for i in range(3000):
        state = step(jax.random.key(i), state)
    log_z = exact_log_z(THETA)
    assert abs(state["log_Z"]["log_average"] - log_z) < 0.05
    _, gs = grads(estimator, state)
    truth = np.asarray(jax.grad(exact_log_z)(THETA))
    mean, se = np.asarray(gs.mean(0)), np.asarray(gs.std(0) / np.sqrt(N))
    assert np.all(np.abs(mean - truth) < 4 * se + 0.05 * np.abs(truth)), (mean, truth, se)


def test_compositional_gradient_matches_hand_written_meco_in_distribution() -> None:
    gamma, log_u = 0.1, exact_log_z(THETA) - 0.3
    state = frozen(T.compositional(gamma), log_average=log_u)
    _, gs = grads(T.compositional(gamma), state)

    def meco(key):
        ell = hand_written_log_weights(key, THETA)
        lme = jax.nn.logsumexp(ell) - math.log(M)
        tracked = jnp.logaddexp(math.log(1 - gamma) + log_u, math.log(gamma) + lme)
        c = jnp.exp(ell - tracked) / M
        return jax.grad(lambda th: jnp.sum(c * hand_written_log_weights(key, th)))(THETA)

    hand = vmapped(meco, N, seed=1)
    assert_unbiased(gs, hand.mean(0), "MECO vs hand-written (two-sample)")


def test_naive_is_biased_at_small_sample_sizes() -> None:
    """Documented: autodiff through log Ẑ with M = 2 misses ∇ log Z by many standard errors."""

    @T.expectation
    def two(theta):
        return T.log_expectation("log_Z", log_weight, theta, samples=2)

    _, gs = grads(T.naive(), {}, theta=jnp.array([1.5, 0.6]), objective=two, n=20000)
    truth = jax.grad(exact_log_z)(jnp.array([1.5, 0.6]))
    z = (gs.mean(0) - truth) / (gs.std(0) / jnp.sqrt(20000))
    assert jnp.max(jnp.abs(z)) > 6, z


# -- sites inside the term: reparameterized and score-function ------------------------------


def smooth_log_weight(theta):
    z = ppl.sample("z", dist.Normal(theta, 1.0))
    return -0.5 * z**2  # E[e^ℓ] = exp(−θ²/4)/√2


def discrete_log_weight(logits, f):
    k = ppl.sample("k", dist.Categorical(logits=logits))
    return f[k]


@pytest.mark.parametrize("strategy", [T.reparam(), T.reinforce(), T.reinforce(T.leave_one_out())])
def test_sites_inside_the_term_follow_their_strategy_unbiased_for_the_bound(strategy) -> None:
    @T.expectation
    def objective(theta):
        return T.log_expectation("log_Z", smooth_log_weight, theta, samples=4)

    theta = jnp.asarray(0.8)
    log_z = -(theta**2) / 4 - 0.5 * math.log(2.0)
    est = objective.estimator(strategies={"log_Z": T.self_normalized_bound(), "log_Z/z": strategy})
    state = est.init(theta)
    state = {"log_Z": {**state["log_Z"], "offset": log_z, "count": jnp.ones((), jnp.int32)}}
    values, gs = vmapped(lambda k: est.value_and_grad(k, theta, state=state)[:2], N)
    assert_unbiased((values, gs), (log_z, -theta / 2), f"inner site {strategy}")


@pytest.mark.parametrize("baseline", [T.none(), T.leave_one_out()], ids=["none", "leave_one_out"])
def test_discrete_score_function_site_inside_the_term(baseline) -> None:
    f = jnp.array([0.3, -1.0, 2.0])

    @T.expectation
    def objective(logits):
        return T.log_expectation("log_Z", discrete_log_weight, logits, f, samples=4)

    logits = jnp.array([0.2, -0.4, 0.1])

    def exact(logits):
        return jax.nn.logsumexp(jax.nn.log_softmax(logits) + f)

    strategies = {"log_Z": T.self_normalized_bound(), "log_Z/k": T.reinforce(baseline)}
    est = objective.estimator(strategies=strategies)
    state = est.init(logits)
    state = {"log_Z": {**state["log_Z"], "offset": exact(logits), "count": jnp.ones((), jnp.int32)}}
    _, gs = vmapped(lambda k: est.value_and_grad(k, logits, state=state)[:2], N)
    assert_unbiased(gs, jax.grad(exact)(logits), f"categorical site, {baseline}")


# -- composition, state, jit ------------------------------------------------------------------


def test_state_pools_all_runs_with_particles_and_in_axes() -> None:
    @T.expectation
    def batched(theta, shift):
        return shift + T.log_expectation("log_Z", log_weight, theta, samples=M)

    est = batched.estimator(
        strategies={"log_Z": T.compositional(0.5)}, particles=3, in_axes=(0,), reduce="mean"
    )
    shifts = jnp.arange(4.0)
    state = est.init(THETA, shifts)
    _, grad, state = est.value_and_grad(jax.random.key(0), THETA, shifts, state=state)
    assert state["log_Z"]["count"] == 1 and jnp.isfinite(state["log_Z"]["log_average"])
    assert abs(state["log_Z"]["log_average"] - exact_log_z(THETA)) < 0.3  # 96 samples pooled
    assert grad.shape == THETA.shape and jnp.all(jnp.isfinite(grad))


def test_jit_vmap_and_eager_agree_and_steps_compile_once() -> None:
    est = log_partition.estimator(strategies={"log_Z": T.compositional(0.1)}, jit=False)
    state = est.init(THETA)
    keys = jax.random.split(jax.random.key(3), 4)
    eager = [est.value_and_grad(k, THETA, state=state) for k in keys]
    batched = jax.jit(jax.vmap(lambda k: est.value_and_grad(k, THETA, state=state)))(keys)
    for i, (v, g, s) in enumerate(eager):
        assert jnp.allclose(v, batched.value[i], atol=1e-5)
        assert jnp.allclose(g, batched.grad[i], atol=1e-5)
        assert jnp.allclose(s["log_Z"]["log_average"], batched.state["log_Z"]["log_average"][i], atol=1e-5)
    jitted = log_partition.estimator(strategies={"log_Z": T.compositional(0.1)})
    state = jitted.init(THETA)
    for i in range(20):
        _, _, state = jitted.value_and_grad(jax.random.key(i), THETA, state=state)
    jitted.check()
    assert jitted._compiled[("value_and_grad", True)]._cache_size() == 1


def test_same_key_same_result() -> None:
    est = log_partition.estimator(strategies={"log_Z": T.self_normalized_bound()})
    state = est.init(THETA)
    a = est.value_and_grad(jax.random.key(7), THETA, state=state)
    b = est.value_and_grad(jax.random.key(7), THETA, state=state)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), a, b))


# -- bad input ---------------------------------------------------------------------------------


def test_no_estimator_chosen_is_an_error_naming_the_address() -> None:
    with pytest.raises(ValueError, match="log_expectation at address 'log_Z': the log of an expectation"):
        log_partition.value_and_grad(jax.random.key(0), THETA)


def test_estimator_kinds_are_not_interchangeable() -> None:
    with pytest.raises(ValueError, match="log_expectation at address 'log_Z': Reinforce is a sample-site"):
        log_partition.estimator(strategies={"log_Z": T.reinforce()}).value_and_grad(jax.random.key(0), THETA)
    est = log_partition.estimator(strategies={"log_Z": T.naive(), "log_Z/z": T.compositional(0.1)})
    with pytest.raises(ValueError, match="address 'log_Z/z' \\(Normal\\) is a sample site: Compositional"):
        est.value_and_grad(jax.random.key(0), THETA, state={})
    with pytest.raises(TypeError, match="default must be a sample-site Strategy"):
        log_partition.estimator(default=T.naive())


def test_missing_state_and_bad_arguments() -> None:
    est = log_partition.estimator(strategies={"log_Z": T.compositional(0.1)})
    with pytest.raises(ValueError, match="address 'log_Z' has a stateful estimator \\(Compositional\\)"):
        est.value_and_grad(jax.random.key(0), THETA)
    with pytest.raises(ValueError, match="gamma must be in \\(0, 1\\]"):
        T.compositional(0.0)
    with pytest.raises(ValueError, match="self_normalized_bound: gamma must be in \\(0, 1\\)"):
        T.self_normalized_bound(1.0)

    @T.expectation
    def no_samples(theta):
        return T.log_expectation("log_Z", log_weight, theta, samples=0)

    with pytest.raises(ValueError, match="samples must be a positive int"):
        no_samples.estimate(jax.random.key(0), THETA)
    with pytest.raises(RuntimeError, match="only available inside an @expectation"):
        T.log_expectation("log_Z", log_weight, THETA, samples=2)


def test_continuation_strategies_and_other_baselines_are_refused_inside_the_term() -> None:
    f = jnp.array([0.3, -1.0])

    @T.expectation
    def objective(logits):
        return T.log_expectation("log_Z", discrete_log_weight, logits, f, samples=2)

    logits = jnp.zeros(2)
    est = objective.estimator(strategies={"log_Z": T.naive(), "log_Z/k": T.enum()})
    with pytest.raises(ValueError, match="not available inside log_expectation at address 'log_Z'"):
        est.value_and_grad(jax.random.key(0), logits)
    est = objective.estimator(strategies={"log_Z": T.naive(), "log_Z/k": T.reinforce(T.running_average())})
    with pytest.raises(
        ValueError,
        match=re.escape(
            "address 'log_Z/k' (inside log_expectation at address 'log_Z'): stateful baselines are not "
            "available inside a log_expectation"
        ),
    ):
        est.value_and_grad(jax.random.key(0), logits, state={"log_Z/k": T.running_average().init()})


def test_non_scalar_log_weight_is_an_error() -> None:
    @T.expectation
    def objective(theta):
        return T.log_expectation("log_Z", lambda t: jnp.ones(3) * t, theta, samples=2)

    with pytest.raises(ValueError, match="the program's return value \\(the log weight\\) must be a scalar"):
        objective.estimator(strategies={"log_Z": T.naive()}).value_and_grad(jax.random.key(0), 1.0)
