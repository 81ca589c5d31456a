"""normalize with MCMC inference: the independence-MH kernel leaves the posterior invariant,
moves as TRICE's kernel does under a 0/1 likelihood, and is a sampler the gradient ignores."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import ppl
from ppl import transforms as T
from tests.conftest import assert_unbiased, vmapped

N = 20_000
LOGITS = jnp.array([0.3, -0.2, 1.0, 0.0, -1.0])
MEANS = jnp.array([-2.0, -1.0, 0.0, 1.0, 2.0])


@ppl.gen
def soft_model(logits):
    """z ~ Categorical(logits), x | z ~ Normal(MEANS[z], 1): a general likelihood."""
    z = ppl.sample("z", dist.Categorical(logits=logits))
    ppl.sample("x", dist.Normal(MEANS[z], 1.0))


@ppl.gen
def hard_model(logits, target):
    """z ~ Categorical(logits), "hit" = 1[z ≤ target] observed as 1: a 0/1 likelihood."""
    z = ppl.sample("z", dist.Categorical(logits=logits))
    ppl.sample("hit", dist.Delta((z <= target).astype(jnp.float32)))


@ppl.gen
def tilted_proposal(observations, logits):
    ppl.sample("z", dist.Categorical(logits=-0.5 * logits))


def soft_posterior(x):
    log_joint = jax.nn.log_softmax(LOGITS) + dist.Normal(MEANS, 1.0).log_prob(x)
    return jax.nn.softmax(log_joint)


def hard_posterior(logits, target):
    log_prior = jax.nn.log_softmax(logits)
    return jax.nn.softmax(jnp.where(jnp.arange(logits.shape[0]) <= target, log_prior, -jnp.inf))


def one_hot_z(trace):
    return jax.nn.one_hot(trace.choices["z"], 5)


@pytest.mark.parametrize("proposal", [None, tilted_proposal], ids=["prior", "custom"])
def test_independence_mh_leaves_the_posterior_invariant(proposal) -> None:
    """z ~ π, one kernel step: z' ~ π (per-category frequencies against π, z-test)."""
    x = 0.7
    pi = soft_posterior(x)

    def one(key):
        start_key, step_key = jax.random.split(key)
        z0 = jax.random.categorical(start_key, jnp.log(pi))
        posterior = T.normalize(soft_model, {"x": x}, T.mcmc(T.independence_mh(proposal), {"z": z0}))
        return one_hot_z(posterior.simulate(step_key, LOGITS))

    assert_unbiased(vmapped(one, N), pi, f"mcmc/invariance/{proposal is not None}")


@pytest.mark.slow
def test_chain_converges_from_a_bad_start() -> None:
    """From z = 0 (far from x = 1.5), 30 steps reach π."""
    x = 1.5
    pi = soft_posterior(x)
    posterior = T.normalize(soft_model, {"x": x}, T.mcmc(T.independence_mh(), {"z": 0}, steps=30))
    frequencies = vmapped(lambda k: one_hot_z(posterior.simulate(k, LOGITS)), N // 4)
    assert_unbiased(frequencies, pi, "mcmc/convergence")


def test_zero_one_likelihood_moves_iff_the_proposal_satisfies_it() -> None:
    target = 1

    def one(key, z0):
        posterior = T.normalize(hard_model, {"hit": 1.0}, T.mcmc(T.independence_mh(), {"z": z0}))
        trace = posterior.simulate(key, LOGITS, target)
        return trace.choices["z"], trace.retval

    keys = jax.random.split(jax.random.key(1), 2000)
    for z0 in (0, 4):  # a memory that satisfies the observation, and one that does not
        z, info = jax.vmap(lambda k, z0=z0: one(k, z0))(keys)
        proposal = info.proposal["z"]
        hit = proposal <= target
        np.testing.assert_array_equal(info.accepted, hit)
        np.testing.assert_array_equal(z, jnp.where(hit, proposal, z0))
        np.testing.assert_array_equal(info.proposal_log_weight, jnp.where(hit, 0.0, -jnp.inf))
        expected_state = jnp.where(hit | (z0 <= target), 0.0, -jnp.inf)
        np.testing.assert_array_equal(info.log_weight, expected_state)
        prior = jax.nn.log_softmax(LOGITS)
        np.testing.assert_allclose(info.proposal_log_prob, prior[proposal], rtol=1e-6)


def test_the_kernel_is_not_differentiated_but_the_new_state_is() -> None:
    """The Fisher identity: the objective log p_θ(z', y) has gradient ∇ log p_θ(z', y) at the
    sampled z', with no score term for the kernel's own random choices (reinforce there). With
    auto (enum on the proposal) the proposal is summed out: Σ_v q(v) ∇ log p_θ(z'(v), y)."""
    z0, target = jnp.array(0), 1

    @T.expectation
    def q_function(logits):
        posterior = T.normalize(hard_model, {"hit": 1.0}, T.mcmc(T.independence_mh(), {"z": z0}))
        trace = T.sim(posterior, logits, target)
        return trace.score, trace.choices["z"]

    log_prior = jax.nn.log_softmax(LOGITS)
    scores = jax.jacobian(jax.nn.log_softmax)(LOGITS)  # row z: ∇ log p_θ(z)
    single = q_function.estimator(default=T.reinforce(), has_aux=True)
    for seed in range(5):
        (value, z), grad, _ = single.value_and_grad(jax.random.key(seed), LOGITS)
        np.testing.assert_allclose(value, log_prior[z], rtol=1e-6)
        np.testing.assert_allclose(grad, scores[z], atol=1e-6)
    (_, z), summed, _ = q_function.estimator(has_aux=True).value_and_grad(jax.random.key(0), LOGITS)
    moved_to = jnp.where(jnp.arange(5) <= target, jnp.arange(5), z0)
    expected = jnp.sum(jax.nn.softmax(LOGITS)[:, None] * scores[moved_to], axis=0)
    np.testing.assert_allclose(summed, expected, atol=1e-5)


def test_posterior_samples_are_unbiased_for_fisher_identity_at_stationarity() -> None:
    """Memory z ~ p(z | y), one step, ∇ log p_θ(z', y): mean = ∇ log p_θ(y) (z-test)."""
    target = 2
    pi = hard_posterior(LOGITS, target)

    @T.expectation
    def q_function(logits, z0):
        posterior = T.normalize(hard_model, {"hit": 1.0}, T.mcmc(T.independence_mh(), {"z": z0}))
        return T.sim(posterior, logits, target).score

    est = q_function.estimator()

    def one(key):
        k1, k2 = jax.random.split(key)
        return est.grad(k2, LOGITS, jax.random.categorical(k1, jnp.log(pi)))

    exact = jax.grad(lambda lg: jax.nn.logsumexp(jax.nn.log_softmax(lg)[: target + 1]))(LOGITS)
    assert_unbiased(vmapped(one, 8000), exact, "mcmc/fisher")


def test_steps_and_jit_vmap_agree() -> None:
    posterior = T.normalize(soft_model, {"x": 0.2}, T.mcmc(T.independence_mh(), {"z": 3}, steps=3))
    keys = jax.random.split(jax.random.key(3), 8)
    eager = [posterior.simulate(k, LOGITS).choices["z"] for k in keys]
    mapped = jax.jit(jax.vmap(lambda k: posterior.simulate(k, LOGITS).choices["z"]))(keys)
    np.testing.assert_array_equal(np.array(eager), mapped)
    again = jax.vmap(lambda k: posterior.simulate(k, LOGITS).choices["z"])(keys)
    np.testing.assert_array_equal(again, mapped)


def test_bad_input() -> None:
    kernel = T.independence_mh()
    with pytest.raises(TypeError, match=r"mcmc: kernel must be independence_mh\(...\), got 'mh'"):
        T.mcmc("mh", {"z": 0})
    with pytest.raises(ValueError, match="mcmc: steps must be a positive int, got 0"):
        T.mcmc(kernel, {"z": 0}, steps=0)
    with pytest.raises(ValueError, match="mcmc: init must hold the chain's state"):
        T.mcmc(kernel, {})
    with pytest.raises(TypeError, match="independence_mh's proposal expects a generative function"):
        T.independence_mh(lambda: None)
    with pytest.raises(
        TypeError, match=r"marginal: inference must be sir\(K\), sir\(K, proposal\) or exact\(\), got"
    ):
        T.marginal(soft_model, keep="x", inference=T.mcmc(kernel, {"z": 0}))
    key = jax.random.key(0)
    missing = T.normalize(soft_model, {"x": 0.0}, T.mcmc(kernel, {"w": 0}))
    with pytest.raises(ValueError, match=r"the chain state \(mcmc init\) has no value for 'z'"):
        missing.simulate(key, LOGITS)
    extra = T.normalize(soft_model, {"x": 0.0}, T.mcmc(kernel, {"z": 0, "w": 1}))
    with pytest.raises(ValueError, match="has address 'w', which is not a latent choice"):
        extra.simulate(key, LOGITS)
    shaped = T.normalize(soft_model, {"x": 0.0}, T.mcmc(kernel, {"z": jnp.zeros(3, jnp.int32)}))
    with pytest.raises(
        ValueError, match=r"the chain state at 'z' has shape \(3,\), the model samples shape \(\)"
    ):
        shaped.simulate(key, LOGITS)
    ok = T.normalize(soft_model, {"x": 0.0}, T.mcmc(kernel, {"z": 0}))
    with pytest.raises(ValueError, match="MCMC inference gives no estimate of the posterior's density"):
        ok.estimate_logpdf(key, {"z": 1}, LOGITS)
