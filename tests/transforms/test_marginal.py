"""marginal and normalize: unbiased density and reciprocal-density estimates, HVI ordering."""

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


@ppl.gen
def mixture(scale):
    u = ppl.sample("u", dist.Bernoulli(0.3))
    ppl.sample("x", dist.Normal(2.0 * u - 1.0, scale))


def mixture_log_density(x, scale):
    return jnp.logaddexp(
        jnp.log(0.3) + dist.Normal(1.0, scale).log_prob(x),
        jnp.log(0.7) + dist.Normal(-1.0, scale).log_prob(x),
    )


@ppl.gen
def flip_proposal(kept, scale):
    ppl.sample("u", dist.Bernoulli(jax.nn.sigmoid(kept["x"])))


@pytest.mark.parametrize("particles", [1, 4])
@pytest.mark.parametrize("proposal", [None, flip_proposal], ids=["internal", "custom"])
def test_marginal_density_estimate_is_unbiased(particles, proposal) -> None:
    q = T.marginal(mixture, keep="x", inference=T.sir(particles, proposal))
    x, scale = 0.4, 0.8
    estimates = vmapped(lambda k: jnp.exp(q.estimate_logpdf(k, {"x": x}, scale)), N)
    truth = jnp.exp(mixture_log_density(x, scale))
    assert_unbiased(estimates, truth, f"marginal/density/{particles}/{proposal is not None}")


@pytest.mark.parametrize("particles", [1, 4])
@pytest.mark.parametrize("proposal", [None, flip_proposal], ids=["internal", "custom"])
def test_marginal_reciprocal_density_estimate_is_unbiased(particles, proposal) -> None:
    """E[h(x) / p̂(x)] = ∫ h = 1 for a normalized h when 1/p̂ is unbiased for 1/p.

    h is narrower than the mixture's components so that the estimate has finite variance.
    """
    q = T.marginal(mixture, keep="x", inference=T.sir(particles, proposal))
    h = dist.Normal(0.0, 0.5)

    def one(key):
        trace = q.simulate(key, 0.8)
        return jnp.exp(h.log_prob(trace.choices["x"]) - trace.score)

    assert_unbiased(vmapped(one, N), 1.0, f"marginal/reciprocal/{particles}/{proposal is not None}")


def test_marginal_trace_keeps_only_the_kept_choices_and_sir1_score_is_exact_for_one_aux() -> None:
    q = T.marginal(mixture, keep=["x"])
    trace = q.simulate(jax.random.key(0), 0.8)
    assert set(trace.choices) == {"x"}
    # The joint score minus the kept-given-aux density is log q(u): with sir(1) the
    # score is log p(x | u) for the drawn u, one of the two component densities.
    x = trace.choices["x"]
    candidates = [dist.Normal(m, 0.8).log_prob(x) for m in (1.0, -1.0)]
    assert min(abs(float(trace.score - c)) for c in candidates) < 1e-5


@ppl.gen
def categorical_model():
    z = ppl.sample("z", dist.Categorical(jnp.array([0.2, 0.5, 0.3])))
    ppl.sample("x", dist.Normal(z.astype(jnp.float32), 1.0))


def test_normalize_density_estimate_sums_to_one_over_the_support() -> None:
    posterior = T.normalize(categorical_model, {"x": jnp.asarray(1.7)}, T.sir(3))

    def one(key):
        k1, k2 = jax.random.split(key)
        z = jax.random.randint(k1, (), 0, 3)
        return 3.0 * jnp.exp(posterior.estimate_logpdf(k2, {"z": z}))

    assert_unbiased(vmapped(one, N), 1.0, "normalize/density-total")


def test_normalize_reciprocal_estimate_is_unbiased() -> None:
    posterior = T.normalize(categorical_model, {"x": jnp.asarray(1.7)}, T.sir(3))

    def one(key):
        trace = posterior.simulate(key)
        return jnp.exp(-jnp.log(3.0) - trace.score)

    assert_unbiased(vmapped(one, N), 1.0, "normalize/reciprocal")


@pytest.mark.slow
def test_normalize_with_many_particles_approaches_the_exact_posterior() -> None:
    x = 1.7
    posterior = T.normalize(categorical_model, {"x": jnp.asarray(x)}, T.sir(200))
    zs = vmapped(lambda k: posterior.simulate(k).choices["z"], 4000)
    prior = np.array([0.2, 0.5, 0.3])
    lik = np.exp(-0.5 * (x - np.arange(3)) ** 2)
    exact = prior * lik / np.sum(prior * lik)
    freq = np.bincount(np.asarray(zs), minlength=3) / zs.shape[0]
    np.testing.assert_allclose(freq, exact, atol=0.03)


@ppl.gen
def gauss_model(params):  # no parameters of its own; params are the guide's scale
    x = ppl.sample("x", dist.Normal(0.0, 1.0))
    ppl.sample("y", dist.Normal(x, 1.0))


@ppl.gen
def aux_family(scale):
    u = ppl.sample("u", dist.Normal(0.0, 1.0))
    ppl.sample("x", dist.Normal(u, scale))


def exact_marginal_elbo(scale, y):
    """ELBO of the exact marginal family q(x) = N(0, 1 + scale²)."""
    var = 1.0 + scale**2
    expected_log_joint = -jnp.log(2 * jnp.pi) - 0.5 * var - 0.5 * (y**2 + var)
    return expected_log_joint + 0.5 * jnp.log(2 * jnp.pi * jnp.e * var)


def exact_hvi(scale, y):
    """HVI with the prior as reverse model: E[log p(x, y) - log q(x | u)]."""
    var = 1.0 + scale**2
    expected_log_joint = -jnp.log(2 * jnp.pi) - 0.5 * var - 0.5 * (y**2 + var)
    return expected_log_joint + 0.5 * jnp.log(2 * jnp.pi * scale**2) + 0.5


def test_hvi_below_the_exact_marginal_elbo_and_iwhvi_increases_toward_it() -> None:
    scale, y = 0.6, 0.9
    values = {}
    for m in (1, 4, 32):
        objective = T.iwhvi(gauss_model, aux_family, "x", m)
        v = vmapped(lambda k, objective=objective: objective.estimate(k, scale, {"y": y}), N)
        values[m] = (float(v.mean()), float(v.std() / np.sqrt(N)))
    bound = float(exact_marginal_elbo(scale, y))
    np.testing.assert_allclose(values[1][0], float(exact_hvi(scale, y)), atol=4 * values[1][1])
    assert values[1][0] < values[4][0] < values[32][0] < bound + 4 * values[32][1], (values, bound)
    assert bound - values[32][0] < 0.05


def test_hvi_gradient_is_unbiased() -> None:
    scale, y = 0.6, 0.9
    est = T.hvi(gauss_model, aux_family, "x").estimator()
    grads = vmapped(lambda k: est.grad(k, scale, {"y": y}), N)
    truth = jax.grad(exact_hvi)(scale, y)
    assert_unbiased(grads, truth, "hvi/grad")


def test_iwhvi_gradient_is_unbiased_against_enumeration_and_quadrature() -> None:
    """IWHVI(3) over the mixture family: enumerate u_1..u_3, integrate x by Gauss-Hermite."""
    m, y = 3, 0.4
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    nodes, weights = jnp.asarray(nodes), jnp.asarray(weights / weights.sum())

    def model_log_joint(x):
        return dist.Normal(0.0, 1.0).log_prob(x) + dist.Normal(x, 1.0).log_prob(y)

    def exact(scale):
        total = 0.0
        for bits in np.ndindex(*(2,) * m):
            u = jnp.asarray(bits, dtype=jnp.float32)
            prob = jnp.prod(jnp.where(u == 1.0, 0.3, 0.7))
            x = 2.0 * u[0] - 1.0 + scale * nodes
            log_q = jax.nn.logsumexp(
                dist.Normal(2.0 * u[:, None] - 1.0, scale).log_prob(x[None]), axis=0
            ) - jnp.log(m)
            total = total + prob * jnp.sum(weights * (model_log_joint(x) - log_q))
        return total

    objective = T.iwhvi(gauss_model, mixture, "x", m)
    est = objective.estimator(strategies={"_sir/u": T.reinforce()})  # u inside the particle block
    grads = vmapped(lambda k: est.grad(k, 0.8, {"y": y}), N)
    assert_unbiased(grads, jax.grad(exact)(0.8), "iwhvi/grad")
    values = vmapped(lambda k: objective.estimate(k, 0.8, {"y": y}), N)
    assert_unbiased(values, exact(0.8), "iwhvi/value")


@pytest.mark.slow
def test_diwhvi_gradient_is_unbiased_against_enumeration_and_quadrature() -> None:
    """DIWHVI(2, 2) over the mixture family: enumerate the four u's, 2-d Gauss-Hermite over x."""
    y, scale = 0.4, 0.8
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    nodes, weights = jnp.asarray(nodes), jnp.asarray(weights / weights.sum())

    def model_log_joint(x):
        return dist.Normal(0.0, 1.0).log_prob(x) + dist.Normal(x, 1.0).log_prob(y)

    def exact(scale):
        total = 0.0
        for bits in np.ndindex(2, 2, 2, 2):  # (u of particle 1, its extra u, u of particle 2, ...)
            u = jnp.asarray(bits, dtype=jnp.float32)
            prob = jnp.prod(jnp.where(u == 1.0, 0.3, 0.7))

            def log_weight(x, a, b):
                log_q = jnp.logaddexp(
                    dist.Normal(2 * a - 1, scale).log_prob(x), dist.Normal(2 * b - 1, scale).log_prob(x)
                )
                return model_log_joint(x) - (log_q - jnp.log(2.0))

            x1 = (2 * u[0] - 1 + scale * nodes)[:, None]
            x2 = (2 * u[2] - 1 + scale * nodes)[None, :]
            pair = jnp.logaddexp(log_weight(x1, u[0], u[1]), log_weight(x2, u[2], u[3])) - jnp.log(2.0)
            total = total + prob * jnp.sum(weights[:, None] * weights[None, :] * pair)
        return total

    objective = T.diwhvi(gauss_model, mixture, "x", 2, 2)
    est = objective.estimator(strategies={"particles/u": T.reinforce(), "particles/_sir/u": T.reinforce()})
    grads = vmapped(lambda k: est.grad(k, scale, {"y": y}), N)
    assert_unbiased(grads, jax.grad(exact)(scale), "diwhvi/grad")
    values = vmapped(lambda k: objective.estimate(k, scale, {"y": y}), N)
    assert_unbiased(values, exact(scale), "diwhvi/value")


def test_marginal_bad_inputs() -> None:
    with pytest.raises(ValueError, match="marginal: keep at least one address"):
        T.marginal(mixture, keep=[])
    with pytest.raises(ValueError, match="sir: particles must be a positive integer, got 0"):
        T.sir(0)
    q = T.marginal(mixture, keep="w")
    with pytest.raises(ValueError, match="address 'w' is never sampled by <generative function 'mixture'>"):
        q.simulate(jax.random.key(0), 0.8)
    q = T.marginal(mixture, keep="x")
    with pytest.raises(ValueError, match="density got address 'u', which is not kept"):
        q.estimate_logpdf(jax.random.key(0), {"x": 0.1, "u": 1.0}, 0.8)
    with pytest.raises(TypeError, match="has an estimated density, which needs random numbers"):
        q.assess({"x": 0.1}, 0.8)
    with pytest.raises(ValueError, match="normalize: give at least one observed address"):
        T.normalize(categorical_model, {})

    @ppl.gen
    def outer():
        ppl.sample("q", q, 0.8)

    with pytest.raises(TypeError, match="use it with sim/density inside an @expectation objective"):
        outer.simulate(jax.random.key(0))


@ppl.gen
def uniform_proposal(observations):
    ppl.sample("z", dist.Categorical(jnp.ones(3) / 3.0))


def test_normalize_with_a_custom_proposal_density_sums_to_one() -> None:
    posterior = T.normalize(categorical_model, {"x": jnp.asarray(1.7)}, T.sir(4, uniform_proposal))

    def one(key):
        k1, k2 = jax.random.split(key)
        z = jax.random.randint(k1, (), 0, 3)
        return 3.0 * jnp.exp(posterior.estimate_logpdf(k2, {"z": z}))

    assert_unbiased(vmapped(one, N), 1.0, "normalize/custom/density-total")


def test_generate_inside_an_objective_weights_by_the_constrained_density() -> None:
    @T.expectation
    def likelihood(scale):
        _, log_weight = T.generate(mixture, {"x": jnp.asarray(0.4)}, scale)
        return jnp.exp(log_weight)

    values = vmapped(lambda k: likelihood.estimate(k, 0.8), N)
    assert_unbiased(values, jnp.exp(mixture_log_density(0.4, 0.8)), "generate/weight")
    est = likelihood.estimator(strategies={"u": T.enum()})
    grad = est.grad(jax.random.key(0), 0.8)  # enum over u: exact
    exact = jax.value_and_grad(lambda s: jnp.exp(mixture_log_density(0.4, s)))(0.8)
    np.testing.assert_allclose(grad, exact[1], rtol=1e-5)

    @T.expectation
    def wrong(scale):
        return T.generate(mixture, {"w": 0.4}, scale)[1]

    with pytest.raises(ValueError, match="generate: the choice map has address 'w', which <generative"):
        wrong.estimate(jax.random.key(0), 0.8)

    @T.expectation
    def outside(scale):
        return T.generate(mixture, {"u": 2.0}, scale)[1]

    with pytest.raises(ValueError, match="address 'u'"):
        outside.estimate(jax.random.key(0), 0.8)


# -- regressions from review: blocks, nesting, hidden addresses, exact-density objectives -------
def test_a_plate_of_marginals_records_kept_choices_and_estimated_scores() -> None:
    q = T.marginal(mixture, keep="x", inference=T.sir(2))
    h = dist.Normal(0.0, 0.5)

    @T.expectation
    def identity():
        trace = T.sim(ppl.vmap(q, in_axes=None, axis_size=2), 0.8)
        assert set(trace.choices) == {"x"} and trace.choices["x"].shape == (2,)
        return jnp.exp(jnp.sum(h.log_prob(trace.choices["x"])) - trace.score)

    assert_unbiased(vmapped(lambda k: identity.estimate(k), N), 1.0, "marginal/plate-reciprocal")


def test_generate_given_a_nested_marginal_weights_by_its_density_estimate() -> None:
    q = T.marginal(mixture, keep="x", inference=T.sir(3))

    @ppl.gen
    def outer():
        x = ppl.sample("q", q, 0.8)
        ppl.sample("y", dist.Normal(0.0, 1.0))
        return x

    @T.expectation
    def likelihood():
        _, log_weight = T.generate(outer, {"q": {"x": jnp.asarray(0.3)}, "y": jnp.asarray(0.5)})
        return jnp.exp(log_weight)

    truth = jnp.exp(mixture_log_density(0.3, 0.8) + dist.Normal(0.0, 1.0).log_prob(0.5))
    assert_unbiased(vmapped(lambda k: likelihood.estimate(k), N), truth, "generate/nested-marginal")


def test_two_samples_of_one_normalized_posterior_in_one_objective() -> None:
    posterior = T.normalize(categorical_model, {"x": jnp.asarray(1.7)}, T.sir(3))

    @T.expectation
    def objective():
        return T.sim(posterior).choices["z"] + T.sim(posterior).choices["z"]

    assert np.isfinite(float(objective.estimate(jax.random.key(0))))


@ppl.gen
def point():
    z = ppl.sample("z", dist.Normal(0.0, 1.0))
    ppl.sample("x", dist.Normal(z, 1.0))


def test_normalize_density_of_a_plate_with_local_latents() -> None:
    plate = ppl.gen(lambda: ppl.sample("data", ppl.vmap(point, in_axes=None, axis_size=3)))
    xs, zs = jnp.array([0.1, -0.4, 1.2]), jnp.array([0.3, 0.2, -0.5])
    posterior = T.normalize(plate, {"data": {"x": xs}}, T.sir(1))
    # With one particle from the prior, the SIR density is the prior density exactly.
    estimate = posterior.estimate_logpdf(jax.random.key(0), {"data": {"z": zs}})
    np.testing.assert_allclose(estimate, jnp.sum(dist.Normal(0.0, 1.0).log_prob(zs)), rtol=1e-5)


def test_review_bad_inputs() -> None:
    q = T.marginal(mixture, keep="x")
    with pytest.raises(ValueError, match="density: no value for kept address 'x'"):
        q.estimate_logpdf(jax.random.key(0), {}, 0.8)
    with pytest.raises(TypeError, match="marginal: inference must be sir"):
        T.marginal(mixture, keep="x", inference=5)
    with pytest.raises(ValueError, match="elbo_stl needs the guide's exact log density"):
        T.elbo_stl(gauss_model, T.marginal(aux_family, "x", T.sir(3)))
    with pytest.raises(ValueError, match="iwelbo_dreg needs the guide's exact log density"):
        T.iwelbo_dreg(gauss_model, T.marginal(aux_family, "x", T.sir(3)), 2)
    with pytest.raises(ValueError, match="wake_q needs the guide's exact log density"):
        T.wake_q(gauss_model, T.marginal(aux_family, "x", T.sir(3)), 2)

    @ppl.gen
    def discrete_guide(p):
        ppl.sample("x", dist.Bernoulli(p))

    dreg = T.iwelbo_dreg(gauss_model, discrete_guide, 3).estimator()
    with pytest.raises(
        ValueError, match="needs reparameterized guide sites; address 'particles/x' uses Reinforce"
    ):
        dreg.grad(jax.random.key(0), 0.3, {"y": 0.5})
