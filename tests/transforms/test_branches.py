"""Strategies and exact elimination at the selector of ``ppl.switch``/``ppl.cond`` and inside branches.

References are closed forms written out by hand (Gaussian expectations, sums over the selector and
the branches' discrete sites), never our own elimination.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import ppl
from ppl import transforms as T
from tests.conftest import assert_unbiased, vmapped


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


# -- exact elimination --------------------------------------------------------------------------
@ppl.gen
def two_families(theta):
    """k selects a branch; each branch has a discrete site of its own, then x is observed."""
    k = ppl.sample("k", dist.Bernoulli(jax.nn.sigmoid(theta["k"])))
    loc = ppl.cond(
        k,
        lambda: ppl.sample("a", dist.Categorical(logits=theta["a"])).astype(jnp.float64),
        lambda: 2.0 * ppl.sample("b", dist.Bernoulli(jax.nn.sigmoid(theta["b"]))) - 1.0,
    )
    ppl.sample("x", dist.Normal(loc, 1.0))


THETA = {"k": np.float64(-0.4), "a": np.array([0.3, -0.2, 0.5]), "b": np.float64(0.8)}


def two_families_joint(theta, x):
    """(log p(k, a, x) for k = 1 and each a; log p(k, b, x) for k = 0 and each b), by hand."""
    pk = jax.nn.sigmoid(theta["k"])
    pa = jax.nn.softmax(theta["a"])
    pb = jax.nn.sigmoid(theta["b"])
    normal = lambda loc: -0.5 * (x - loc) ** 2 - 0.5 * jnp.log(2 * jnp.pi)
    true = jnp.log(pk) + jnp.log(pa) + normal(jnp.arange(3.0))
    false = jnp.log1p(-pk) + jnp.log(jnp.array([1 - pb, pb])) + normal(jnp.array([-1.0, 1.0]))
    return true, false


def two_families_log_marginal(theta, x):
    true, false = two_families_joint(theta, x)
    return jax.nn.logsumexp(jnp.concatenate([true, false]))


def test_exact_marginal_sums_the_selector_and_each_branch_s_sites():
    marginal = T.marginal(two_families, keep=["x"], inference=T.exact())
    value_and_grad = jax.jit(jax.value_and_grad(lambda t, x: marginal.assess({"x": x}, t)[0]))
    expected_grad = jax.jit(jax.grad(two_families_log_marginal))
    for x in [-1.3, 0.2, 2.5]:
        value, grad = value_and_grad(THETA, x)
        np.testing.assert_allclose(value, two_families_log_marginal(THETA, x), rtol=1e-12)
        expected = expected_grad(THETA, x)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10), grad, expected)


def test_infer_discrete_gives_the_selector_posterior_and_the_map():
    x = 0.6
    post = T.infer_discrete(two_families, {"x": x}, THETA)
    true, false = two_families_joint(THETA, x)
    total = jax.nn.logsumexp(jnp.concatenate([true, false]))
    np.testing.assert_allclose(
        post.marginals["k"],
        [jnp.exp(jax.nn.logsumexp(false) - total), jnp.exp(jax.nn.logsumexp(true) - total)],
        rtol=1e-10,
    )
    np.testing.assert_allclose(post.log_marginal, total, rtol=1e-12)
    # Within the selected branch, the branch site's posterior; uniform where not selected.
    p_true = np.exp(jax.nn.logsumexp(true) - total)
    a_given_true = np.exp(true - jax.nn.logsumexp(true))
    np.testing.assert_allclose(post.marginals["true/a"], p_true * a_given_true + (1 - p_true) / 3, rtol=1e-10)
    # MAP: the best joint assignment over both branches (an unselected branch's site weighs 1).
    best = int(np.argmax(np.concatenate([true, false])))
    assert int(post.map["k"]) == (1 if best < 3 else 0)
    if best < 3:
        assert int(post.map["true/a"]) == best
    else:
        assert int(post.map["false/b"]) == best - 3
    np.testing.assert_allclose(post.map_log_density, np.max(np.concatenate([true, false])), rtol=1e-12)


@ppl.gen
def robust_point(w, loc, scale):
    """Each point is an inlier (Normal) or an outlier (Student-t), chosen per element."""
    outlier = ppl.sample("outlier", dist.Bernoulli(w))
    return ppl.cond(
        outlier,
        lambda: ppl.sample("y", dist.StudentT(2.0, loc, 10.0 * scale)),
        lambda: ppl.sample("y", dist.Normal(loc, scale)),
    )


def test_a_branch_per_plate_element_is_summed_per_element_under_jit():
    ys = jnp.asarray(np.random.default_rng(0).standard_t(3, size=1000))
    plate = ppl.vmap(robust_point, in_axes=(None, None, None), axis_size=1000)
    given = {"true": {"y": ys}, "false": {"y": ys}}
    marginal = T.marginal(plate, keep=["true/y", "false/y"], inference=T.exact())

    def closed_form(w, loc, scale):
        out = jnp.log(w) + dist.StudentT(2.0, loc, 10.0 * scale).log_prob(ys)
        inl = jnp.log1p(-w) + dist.Normal(loc, scale).log_prob(ys)
        return jnp.sum(jnp.logaddexp(out, inl))

    ours = jax.jit(jax.value_and_grad(lambda *a: marginal.assess(given, *a)[0], argnums=(0, 1, 2)))
    value, grads = ours(0.1, 0.2, 0.8)
    np.testing.assert_allclose(value, closed_form(0.1, 0.2, 0.8), rtol=1e-12)
    np.testing.assert_allclose(grads, jax.grad(closed_form, argnums=(0, 1, 2))(0.1, 0.2, 0.8), rtol=1e-10)


def test_a_continuous_site_in_a_branch_must_be_kept():
    @ppl.gen
    def model():
        k = ppl.sample("k", dist.Bernoulli(0.5))
        y = ppl.cond(k, lambda: ppl.sample("y", dist.Normal(0.0, 1.0)), lambda: jnp.asarray(0.0))
        ppl.sample("x", dist.Normal(y, 1.0))

    with pytest.raises(ValueError, match=r"'true/y' \(Normal\) has no value given and no finite support"):
        T.marginal(model, keep=["x"], inference=T.exact()).assess({"x": 0.0})


# -- estimators ---------------------------------------------------------------------------------
C = 0.7
MU = {"theta": np.float64(0.3), "mu": np.array([-1.0, 2.0])}


@T.expectation
def branch_cost(params):
    """E_{k ~ Bernoulli(σ(θ))} E_{y ~ N(μ_k, 1)} (y − c)², y sampled inside the selected branch."""
    k = ppl.sample("k", dist.Bernoulli(jax.nn.sigmoid(params["theta"])))
    y = ppl.cond(
        k,
        lambda: ppl.sample("y", dist.Normal(params["mu"][1], 1.0)),
        lambda: ppl.sample("y", dist.Normal(params["mu"][0], 1.0)),
    )
    return (y - C) ** 2


def branch_cost_exact(params):
    p = jax.nn.sigmoid(params["theta"])
    return (1 - p) * ((params["mu"][0] - C) ** 2 + 1) + p * ((params["mu"][1] - C) ** 2 + 1)


@pytest.mark.parametrize(
    "strategy",
    [T.reinforce(), T.reinforce(T.leave_one_out()), T.mvd(), T.enum()],
    ids=["reinforce", "reinforce-loo", "mvd", "enum"],
)
def test_every_strategy_at_the_selector_with_reparam_inside_is_unbiased(strategy):
    particles = 2 if "LeaveOneOut" in repr(strategy) else 1
    est = branch_cost.estimator(strategies={"k": strategy}, particles=particles)
    grads = vmapped(lambda key: est.value_and_grad(key, MU)[1], 10_000, seed=3)
    assert_unbiased(grads, jax.grad(branch_cost_exact)(MU), f"branches/{strategy!r}")
    values = vmapped(lambda key: est.value_and_grad(key, MU)[0], 10_000, seed=4)
    assert_unbiased(values[:, None], jnp.array([branch_cost_exact(MU)]), f"branches/value/{strategy!r}")


@ppl.gen
def switching_model(params):
    k = ppl.sample("k", dist.Bernoulli(0.4))
    y = ppl.cond(
        k,
        lambda: ppl.sample("y", dist.Normal(2.0, 1.0)),
        lambda: ppl.sample("y", dist.Normal(-1.0, 0.5)),
    )
    ppl.sample("x", dist.Normal(y, 1.0))


@ppl.gen
def switching_guide(params):
    k = ppl.sample("k", dist.Bernoulli(jax.nn.sigmoid(params["phi"])))
    ppl.cond(
        k,
        lambda: ppl.sample("y", dist.Normal(params["m"][1], jnp.exp(params["log_s"][1]))),
        lambda: ppl.sample("y", dist.Normal(params["m"][0], jnp.exp(params["log_s"][0]))),
    )


GUIDE = {"phi": np.float64(0.2), "m": np.array([-0.5, 1.2]), "log_s": np.array([-0.6, -0.1])}
X = 0.5


def switching_elbo_exact(params):
    """Σ_k q(k) [log p(k) − log q(k) + E_q(y|k) log p(y|k) p(x|y) + H(q(y|k))], by hand."""
    q1 = jax.nn.sigmoid(params["phi"])
    total = 0.0
    for k, (qk, pk, mu, sigma) in enumerate([(1 - q1, 0.6, -1.0, 0.5), (q1, 0.4, 2.0, 1.0)]):
        m, s = params["m"][k], jnp.exp(params["log_s"][k])
        prior = -0.5 * jnp.log(2 * jnp.pi * sigma**2) - ((m - mu) ** 2 + s**2) / (2 * sigma**2)
        like = -0.5 * jnp.log(2 * jnp.pi) - ((X - m) ** 2 + s**2) / 2
        entropy = 0.5 * jnp.log(2 * jnp.pi * jnp.e * s**2)
        total = total + qk * (jnp.log(pk) - jnp.log(qk) + prior + like + entropy)
    return total


@pytest.mark.parametrize("strategy", [T.reinforce(), T.mvd(), T.enum()], ids=["reinforce", "mvd", "enum"])
def test_elbo_with_branches_in_model_and_guide_is_unbiased(strategy):
    est = T.elbo(switching_model, switching_guide).estimator(strategies={"k": strategy})
    out = vmapped(lambda key: est.value_and_grad(key, GUIDE, {"x": X})[:2], 10_000, seed=7)
    assert_unbiased(out[1], jax.grad(switching_elbo_exact)(GUIDE), f"branches/elbo/{strategy!r}")
    assert_unbiased(
        out[0][:, None], jnp.array([switching_elbo_exact(GUIDE)]), f"branches/elbo-value/{strategy!r}"
    )


def test_elbo_of_an_exact_marginal_over_the_branches_equals_the_log_evidence_gap():
    """An exact marginal of the switching model, trained as a maximum-likelihood target."""
    marginal = T.marginal(switching_model, keep=["x", "true/y", "false/y"], inference=T.exact())

    def by_hand(y_true, y_false):
        log_true = np.log(0.4) + dist.Normal(2.0, 1.0).log_prob(y_true) + dist.Normal(y_true, 1.0).log_prob(X)
        log_false = (
            np.log(0.6) + dist.Normal(-1.0, 0.5).log_prob(y_false) + dist.Normal(y_false, 1.0).log_prob(X)
        )
        return np.logaddexp(log_true, log_false)

    choices = {"x": X, "true": {"y": 0.9}, "false": {"y": -0.3}}
    np.testing.assert_allclose(marginal.assess(choices, {})[0], by_hand(0.9, -0.3), rtol=1e-12)


def test_a_chain_whose_emission_family_depends_on_the_state_matches_a_forward_algorithm():
    """Along a scan: the state selects the branch (Normal or Laplace emission) at every step."""
    trans = np.array([[0.9, 0.1], [0.3, 0.7]])
    ys = np.array([0.1, 2.5, -0.3, 3.1, 0.4, 1.9])

    @ppl.gen
    def chain(ys):
        def step(z, y):
            z = ppl.sample("z", dist.Categorical(jnp.asarray(trans)[z]))
            ppl.switch(
                z,
                [
                    lambda: ppl.sample("y", dist.Normal(0.0, 1.0)),
                    lambda: ppl.sample("y", dist.Laplace(2.0, 0.5)),
                ],
            )
            return z, None

        ppl.scan(step, 0, ys)

    marginal = T.marginal(chain, keep=["0/y", "1/y"], inference=T.exact())
    ours = marginal.assess({"0": {"y": ys}, "1": {"y": ys}}, ys)[0]
    emit = np.stack(
        [np.asarray(dist.Normal(0.0, 1.0).log_prob(ys)), np.asarray(dist.Laplace(2.0, 0.5).log_prob(ys))], 1
    )
    alpha = np.log(trans[0]) + emit[0]
    for t in range(1, len(ys)):
        alpha = np.logaddexp.reduce(alpha[:, None] + np.log(trans), axis=0) + emit[t]
    np.testing.assert_allclose(ours, np.logaddexp.reduce(alpha), rtol=1e-12)
