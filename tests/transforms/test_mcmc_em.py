"""mcmc_em: TRICE's basic, control-variate and subsampled estimators of ∇ mean log p_θ(y | x)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import ppl
from ppl import transforms as T
from tests.conftest import assert_unbiased, vmapped

TARGETS = jnp.array([0, 1, 2, 3])  # datum m is "correct" iff z ≤ TARGETS[m]
OBSERVED = {"hit": jnp.ones(4)}
LOGITS = jnp.array([0.3, -0.2, 1.0, 0.0, -1.0])
TRACES = 0


@ppl.gen
def model(logits, target):
    global TRACES
    TRACES += 1
    z = ppl.sample("z", dist.Categorical(logits=logits))
    ppl.sample("hit", dist.Delta((z <= target).astype(jnp.float32)))


def log_marginal(logits):
    """mean_m log p_θ(y_m | x_m), exactly."""
    log_prior = jax.nn.log_softmax(logits)
    inside = jnp.arange(5)[None, :] <= TARGETS[:, None]
    return jnp.mean(jax.nn.logsumexp(jnp.where(inside, log_prior, -jnp.inf), axis=1))


def stationary_memory(key, logits, targets=TARGETS):
    """One exact posterior draw per datum: the chains at stationarity."""
    log_prior = jax.nn.log_softmax(logits)
    inside = jnp.arange(5)[None, :] <= targets[:, None]
    return {"z": jax.random.categorical(key, jnp.where(inside, log_prior, -jnp.inf), axis=1)}


def estimator(name="control_variate", samples=None, **kw):
    if name == "basic":
        return T.mcmc_em(model).estimator(**kw)
    return T.mcmc_em_control_variate(model, samples).estimator(**kw)


def gradients(est, logits, n, seed=0, targets=TARGETS):
    def one(key):
        k1, k2 = jax.random.split(key)
        memory = stationary_memory(k1, logits, targets)
        return est.grad(k2, logits, targets, OBSERVED, memory)

    return vmapped(one, n, seed)


@pytest.mark.parametrize(
    ("name", "samples"), [("basic", None), ("control_variate", None), ("control_variate", 3)], ids=str
)
def test_unbiased_at_stationarity(name, samples) -> None:
    exact = jax.grad(log_marginal)(LOGITS)
    assert_unbiased(gradients(estimator(name, samples), LOGITS, 6000), exact, f"mcmc_em/{name}/{samples}")


@pytest.mark.slow
def test_control_variate_variance_vanishes_as_acceptance_nears_one() -> None:
    """The reference's toy: many correct rationales (z ≤ 3) whose scores differ. The basic
    estimator's variance stays put as p(y | x) → 1 (it is the spread of ∇ log p(z') over the
    posterior); the control variate's falls with 1 − p(y | x)."""
    targets = jnp.full(4, 3)
    ratios = []
    for logits in (jnp.array([0.0, 0.0, 0.0, 0.0, 1.5]), jnp.array([0.0, 0.0, 0.0, 0.0, -5.0])):
        basic = gradients(estimator("basic"), logits, 3000, seed=1, targets=targets)
        cv = gradients(estimator(), logits, 3000, seed=1, targets=targets)
        ratios.append(float(jnp.sum(jnp.var(basic, 0)) / jnp.sum(jnp.var(cv, 0))))
    assert ratios[1] > 5.0 and ratios[1] > 2 * ratios[0], ratios


def test_subsampling_concentrates_on_the_control_variate_estimate() -> None:
    """Same key (same chains): with L ≫ 2M the subsampled estimate is the full one up to the
    rounding of systematic counts (each count within 1 of L·P(i))."""
    memory = {"z": jnp.array([0, 1, 4, 2])}  # datum 2's memory misses its answer
    key = jax.random.key(7)
    full = estimator().grad(key, LOGITS, TARGETS, OBSERVED, memory)
    sub = estimator(samples=100_000).grad(key, LOGITS, TARGETS, OBSERVED, memory)
    np.testing.assert_allclose(sub, full, atol=1e-3)


def test_systematic_resampling_has_expected_counts_exactly() -> None:
    weights = jnp.array([0.5, 0.0, 2.0, 1.3, 0.0, 0.2])
    count = 7
    grid = (jnp.arange(200_000) + 0.5) / 200_000
    index = jax.vmap(lambda u: T.systematic_resample(u, weights, count))(grid)
    counts = jax.vmap(lambda i: jnp.zeros(6).at[i].add(1.0))(index)
    np.testing.assert_allclose(counts.mean(0), count * weights / weights.sum(), atol=1e-4)
    assert not np.any(np.isin(np.asarray(index), [1, 4]))  # zero weight: never drawn
    floor = np.floor(count * weights / weights.sum())
    assert np.all((counts >= floor) & (counts <= floor + 1))


def test_beta_leaves_each_datum_out() -> None:
    """β_m reads neither c̃_m nor v_m: changing datum m's own values leaves β_m unchanged."""
    rng = np.random.default_rng(0)
    valid = jnp.asarray(rng.random(8) < 0.8, jnp.float32)
    accepted = valid * jnp.asarray(rng.random(8) < 0.6, jnp.float32)
    beta = T.leave_one_out_mean(accepted, weights=valid)
    for m in range(8):
        for c, v in ((0.0, 0.0), (0.0, 1.0), (1.0, 1.0)):
            changed = T.leave_one_out_mean(accepted.at[m].set(c), weights=valid.at[m].set(v))
            np.testing.assert_allclose(changed[m], beta[m])
    others = [(accepted.sum() - accepted[m]) / (valid.sum() - valid[m]) for m in range(8)]
    np.testing.assert_allclose(beta, others, rtol=1e-6)


def test_value_memory_and_chain_statistics() -> None:
    memory = {"z": jnp.array([4, 1, 0, 4])}  # data 0 and 3 start from memories that miss
    (value, step), grad, _ = estimator().value_and_grad(jax.random.key(3), LOGITS, TARGETS, OBSERVED, memory)
    z, proposal = step.state["z"], step.proposal["z"]
    hit = proposal <= TARGETS
    np.testing.assert_array_equal(step.accepted, hit)
    np.testing.assert_array_equal(z, jnp.where(hit, proposal, memory["z"]))
    np.testing.assert_array_equal(step.valid, z <= TARGETS)
    log_prior = jax.nn.log_softmax(LOGITS)
    expected = jnp.sum(jnp.where(step.valid, log_prior[z], 0.0)) / jnp.sum(step.valid)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    c, v = hit.astype(jnp.float32), step.valid.astype(jnp.float32)
    np.testing.assert_allclose(step.beta, [(c.sum() - c[m]) / (v.sum() - v[m]) for m in range(4)], rtol=1e-6)
    assert np.all(np.isfinite(grad))


def test_no_valid_memory_gives_zero_gradient_not_nan() -> None:
    memory = {"z": jnp.array([4, 4, 4, 4])}
    far = jnp.array([-9.0, -9.0, -9.0, -9.0, 9.0])  # proposals almost surely z = 4: all rejected
    for samples in (None, 4):
        (value, step), grad, _ = estimator(samples=samples).value_and_grad(
            jax.random.key(0), far, TARGETS, OBSERVED, memory
        )
        assert not np.any(step.valid)
        np.testing.assert_array_equal(grad, jnp.zeros(5))
        assert value == 0.0


def test_jit_matches_eager_and_compiles_once() -> None:
    global TRACES
    memory = stationary_memory(jax.random.key(1), LOGITS)
    key = jax.random.key(2)
    eager = estimator(samples=4, jit=False).value_and_grad(key, LOGITS, TARGETS, OBSERVED, memory)
    est = estimator(samples=4)
    jitted = est.value_and_grad(key, LOGITS, TARGETS, OBSERVED, memory)
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    TRACES = 0
    for seed in range(3):
        (_, step), _, _ = est.value_and_grad(jax.random.key(seed), LOGITS + seed, TARGETS, OBSERVED, memory)
        memory = step.state
    assert TRACES == 0  # the compiled step is reused across new parameters and memories


def test_bad_input() -> None:
    with pytest.raises(
        ValueError, match="mcmc_em_control_variate: samples must be a positive integer, got 0"
    ):
        T.mcmc_em_control_variate(model, samples=0)
    with pytest.raises(TypeError, match="mcmc_em expects a generative function"):
        T.mcmc_em(lambda: None)
    with pytest.raises(TypeError, match="mcmc_em_control_variate expects a generative function"):
        T.mcmc_em_control_variate(lambda: None)
    one = (LOGITS, TARGETS[:1], {"hit": jnp.ones(1)}, {"z": jnp.zeros(1, jnp.int32)})
    with pytest.raises(ValueError, match="mcmc_em: the batch needs at least 2 data, got 1"):
        estimator().value_and_grad(jax.random.key(0), *one)
    with pytest.raises(ValueError, match="returns \\(value, aux\\): it cannot be nested"):

        @T.expectation
        def outer(logits):
            return T.mcmc_em(model)(logits, TARGETS, OBSERVED, {"z": jnp.zeros(4, jnp.int32)})

        outer.estimator().value_and_grad(jax.random.key(0), LOGITS)
