"""marginal(..., exact()): discrete sites summed out exactly, per plate element and along scans.

Every value is checked against brute force (the model's own ``assess`` summed over every joint
assignment), or for long chains against an independent forward algorithm in NumPy, at float64.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import ppl
from ppl import transforms as T
from ppl._choice_map import unflatten


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def choice_map(flat):
    """A nested choice map from {"a/b": value}."""
    return unflatten({tuple(a.split("/")): v for a, v in flat.items()})


def joint_scores(model, given, latents, *args):
    """Every joint assignment of ``latents`` ({address: (shape, support size)}), one row each, and
    the model's own ``assess`` of each (with ``given``): the brute-force reference."""
    sizes = [math.prod(shape) for shape, _ in latents.values()]
    ranges = [range(k) for (shape, k), n in zip(latents.values(), sizes) for _ in range(n)]
    combos = np.array(list(itertools.product(*ranges)))

    def one(combo):
        choices, start = dict(given), 0
        for name, (shape, _), n in zip(latents, latents.values(), sizes):
            choices[name] = combo[start : start + n].reshape(shape)
            start += n
        return model.assess(choice_map(choices), *args)[0]

    return combos, jax.vmap(one)(jnp.asarray(combos, dtype=jnp.int32))


def brute_force(model, given, latents, *args):
    """log Σ over every joint assignment of ``latents`` of the model's density."""
    return jax.nn.logsumexp(joint_scores(model, given, latents, *args)[1])


def brute_posterior_probs(model, given, latents, *args):
    """The assignments, their log densities and their posterior probabilities (NumPy)."""
    combos, scores = joint_scores(model, given, latents, *args)
    scores = np.asarray(scores)
    probs = np.exp(scores - scores.max())
    return combos, scores, probs / probs.sum()


def exact_log_marginal(model, keep, given, *args):
    marg = T.marginal(model, keep=keep, inference=T.exact())
    return marg.assess(choice_map(given), *args)[0]


def assert_close(a, b, tol=1e-9):
    jax.tree_util.tree_map(
        lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol), a, b
    )


# -- plates ----------------------------------------------------------------------------


@ppl.gen
def point(logits, mu):
    z = ppl.sample("z", dist.Categorical(logits=logits))
    ppl.sample("x", dist.Normal(mu[z], 1.0))


@ppl.gen
def mixture(logits, mu, n):
    ppl.sample("xs", ppl.vmap(point, in_axes=None, axis_size=n), logits, mu)


with jax.enable_x64(True):  # the tests run at float64 (the fixture above)
    X4 = jnp.array([0.1, -1.5, 2.2, 0.7])
    LOGITS = jnp.array([0.2, -0.4, 0.5])
    MU = jnp.array([-1.0, 0.0, 2.0])


def test_a_mixture_sums_each_point_separately() -> None:
    """log p(x) = Σ_i log Σ_k w_k N(x_i; μ_k, 1), equal to the 3^4-term brute-force sum, with its gradient."""

    def ours(logits, mu):
        return exact_log_marginal(mixture, ["xs/x"], {"xs/x": X4}, logits, mu, 4)

    def truth(logits, mu):
        return brute_force(mixture, {"xs/x": X4}, {"xs/z": ((4,), 3)}, logits, mu, 4)

    closed = jnp.sum(
        jax.nn.logsumexp(jax.nn.log_softmax(LOGITS) + dist.Normal(MU, 1.0).log_prob(X4[:, None]), axis=1)
    )
    assert_close(jax.jit(ours)(LOGITS, MU), jax.jit(truth)(LOGITS, MU))
    assert_close(jax.jit(ours)(LOGITS, MU), closed)
    assert_close(jax.jit(jax.grad(ours, (0, 1)))(LOGITS, MU), jax.jit(jax.grad(truth, (0, 1)))(LOGITS, MU))


def test_a_large_plate_costs_linear_in_its_size() -> None:
    """N = 100,000 points, K = 5: the element-wise sum (N·K terms), under jit, equals the closed form."""
    key = jax.random.key(0)
    x = jax.random.normal(key, (100_000,)) * 2.0
    logits, mu = jnp.zeros(5), jnp.linspace(-2.0, 2.0, 5)
    ours = jax.jit(lambda x: exact_log_marginal(mixture, ["xs/x"], {"xs/x": x}, logits, mu, x.shape[0]))(x)
    closed = jnp.sum(
        jax.nn.logsumexp(jax.nn.log_softmax(logits) + dist.Normal(mu, 1.0).log_prob(x[:, None]), 1)
    )
    assert_close(ours, closed, 1e-9)


@ppl.gen
def two_level_point(w, p, mu, d):
    z1 = ppl.sample("z1", dist.Categorical(probs=w))
    z2 = ppl.sample("z2", dist.Bernoulli(p[z1]))
    ppl.sample("x", dist.Normal(mu[z1] + d[z2], 1.0))


@ppl.gen
def two_level(w, p, mu, d):
    ppl.sample("xs", ppl.vmap(two_level_point, in_axes=None, axis_size=3), w, p, mu, d)


def test_two_summed_sites_in_one_element() -> None:
    args = (jnp.array([0.3, 0.7]), jnp.array([0.2, 0.9]), jnp.array([-1.0, 1.0]), jnp.array([0.0, 0.5]))
    x = jnp.array([0.3, -1.2, 1.9])

    def ours(*args):
        return exact_log_marginal(two_level, ["xs/x"], {"xs/x": x}, *args)

    def truth(*args):
        return brute_force(two_level, {"xs/x": x}, {"xs/z1": ((3,), 2), "xs/z2": ((3,), 2)}, *args)

    assert_close(jax.jit(ours)(*args), jax.jit(truth)(*args))
    assert_close(jax.jit(jax.grad(ours, (0, 1, 2)))(*args), jax.jit(jax.grad(truth, (0, 1, 2)))(*args))


@ppl.gen
def inner_cell(z, q, m):
    w = ppl.sample("w", dist.Categorical(probs=q[z]))
    ppl.sample("y", dist.Normal(m[w] + z, 0.7))


@ppl.gen
def outer_row(p, q, m):
    z = ppl.sample("z", dist.Bernoulli(p))
    ppl.sample("cols", ppl.vmap(inner_cell, in_axes=None, axis_size=2), z, q, m)


@ppl.gen
def nested(p, q, m):
    ppl.sample("rows", ppl.vmap(outer_row, in_axes=None, axis_size=3), p, q, m)


def test_nested_plates_sum_the_inner_elements_inside_each_outer_element() -> None:
    """z_i in the outer plate, w_ij in the inner one (w_ij depends on z_i): 2^3 · 3^6 assignments."""
    args = (0.35, jnp.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]]), jnp.array([-1.0, 0.5, 2.0]))
    y = jnp.array([[0.1, 1.8], [-0.9, 0.4], [2.5, 1.1]])
    given = {"rows/cols/y": y}

    def ours(*args):
        return exact_log_marginal(nested, ["rows/cols/y"], given, *args)

    def truth(*args):
        return brute_force(nested, given, {"rows/z": ((3,), 2), "rows/cols/w": ((3, 2), 3)}, *args)

    assert_close(jax.jit(ours)(*args), jax.jit(truth)(*args))
    assert_close(jax.jit(jax.grad(ours, (0, 1, 2)))(*args), jax.jit(jax.grad(truth, (0, 1, 2)))(*args))


@ppl.gen
def local(g, p, c):
    z = ppl.sample("z", dist.Bernoulli(p[g]))
    ppl.sample("x", dist.Normal(c[g] + z, 1.0))


@ppl.gen
def global_then_plate(p, c):
    g = ppl.sample("g", dist.Categorical(probs=jnp.array([0.5, 0.3, 0.2])))
    ppl.sample("xs", ppl.vmap(local, in_axes=None, axis_size=4), g, p, c)
    ppl.sample("s", dist.Normal(c[g], 2.0))


def test_a_global_site_before_a_plate_and_local_sites_inside_it() -> None:
    args = (jnp.array([0.1, 0.5, 0.8]), jnp.array([-1.0, 0.0, 1.5]))
    given = {"xs/x": jnp.array([0.2, 1.4, -0.8, 2.1]), "s": 0.3}

    def ours(*args):
        return exact_log_marginal(global_then_plate, ["xs/x", "s"], given, *args)

    def truth(*args):
        return brute_force(global_then_plate, given, {"g": ((), 3), "xs/z": ((4,), 2)}, *args)

    assert_close(jax.jit(ours)(*args), jax.jit(truth)(*args))
    assert_close(jax.jit(jax.grad(ours, (0, 1)))(*args), jax.jit(jax.grad(truth, (0, 1)))(*args))


# -- scans -----------------------------------------------------------------------------

with jax.enable_x64(True):
    A = jnp.array([[0.9, 0.1], [0.2, 0.8]])
    PI = jnp.array([0.6, 0.4])
    M = jnp.array([-1.0, 1.0])


@ppl.gen
def hmm(A, pi, m, ys):
    z0 = ppl.sample("z0", dist.Categorical(probs=pi))

    def step(z, y):
        z = ppl.sample("z", dist.Categorical(probs=A[z]))
        ppl.sample("y", dist.Normal(m[z], 1.0))
        return z, None

    ppl.scan(step, z0, ys, addr="t")


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 6])
def test_a_hidden_markov_model_equals_brute_force(length) -> None:
    ys = jnp.array([-0.5, 0.3, 1.2, -1.1, 0.9, 0.2])[:length]
    given = {"t/y": ys}

    def ours(A, pi, m):
        return exact_log_marginal(hmm, ["t/y"], given, A, pi, m, ys)

    def truth(A, pi, m):
        return brute_force(hmm, given, {"z0": ((), 2), "t/z": ((length,), 2)}, A, pi, m, ys)

    assert_close(jax.jit(ours)(A, PI, M), jax.jit(truth)(A, PI, M))
    assert_close(jax.jit(jax.grad(ours, (0, 1, 2)))(A, PI, M), jax.jit(jax.grad(truth, (0, 1, 2)))(A, PI, M))


def test_the_t5_chain_where_numpyro_scan_enumeration_is_wrong() -> None:
    """NumPyro's TraceEnum_ELBO over ``contrib.control_flow.scan`` is wrong on chains (the issue's T = 5,
    two-state HMM: −11.42 where the forward algorithm gives −7.88). On this model (start state 0, stay
    with probability 0.9/0.8, N(±1, 1) emissions) it gives −12.08 where the exact value is −7.27
    (tests/transforms/test_exact_numpyro.py checks −7.27 against NumPyro's correct routes); we must
    give the exact value."""
    ys = jnp.array([-1.2, -0.8, 0.9, 1.3, 0.7])

    @ppl.gen
    def chain(ys):
        def step(z, y):
            z = ppl.sample("z", dist.Categorical(probs=A[z]))
            ppl.sample("y", dist.Normal(M[z], 1.0))
            return z, None

        ppl.scan(step, 0, ys, addr="t")

    ours = exact_log_marginal(chain, ["t/y"], {"t/y": ys}, ys)
    truth = brute_force(chain, {"t/y": ys}, {"t/z": ((5,), 2)}, ys)
    assert_close(ours, truth)
    assert_close(ours, -7.265199370827, 1e-9)


def numpy_forward(log_pi, log_A, log_emit):
    alpha = log_pi + log_emit[0]
    for t in range(1, log_emit.shape[0]):
        m = alpha.max()
        alpha = np.log(np.exp(alpha - m) @ np.exp(log_A)) + m + log_emit[t]
    m = alpha.max()
    return m + np.log(np.exp(alpha - m).sum())


def test_a_long_chain_equals_an_independent_forward_algorithm() -> None:
    """T = 2,000, K = 3, under jit, against a NumPy forward pass (float64)."""
    rng = np.random.default_rng(0)
    K, length = 3, 2000
    A3 = jnp.asarray(rng.dirichlet(np.ones(K) * 2, size=K))
    pi3 = jnp.asarray(rng.dirichlet(np.ones(K)))
    m3 = jnp.array([-2.0, 0.0, 2.0])
    ys = jnp.asarray(rng.normal(size=length) * 2)

    @ppl.gen
    def first_in_scan(A, pi, m, ys):
        def step(carry, y):
            probs = jnp.where(carry < 0, pi, A[jnp.maximum(carry, 0)])
            z = ppl.sample("z", dist.Categorical(probs=probs))
            ppl.sample("y", dist.Normal(m[z], 1.0))
            return z, None

        ppl.scan(step, -1, ys, addr="t")

    ours = jax.jit(lambda A: exact_log_marginal(first_in_scan, ["t/y"], {"t/y": ys}, A, pi3, m3, ys))(A3)
    log_emit = np.asarray(dist.Normal(m3, 1.0).log_prob(ys[:, None]))
    assert_close(ours, numpy_forward(np.log(np.asarray(pi3)), np.log(np.asarray(A3)), log_emit), 1e-9)


@ppl.gen
def two_chains(A, B, ma, mb, ys):
    def step(carry, y):
        a_prev, b_prev = carry
        a = ppl.sample("a", dist.Categorical(probs=A[a_prev]))
        b = ppl.sample("b", dist.Categorical(probs=B[b_prev]))
        ppl.sample("y", dist.Normal(ma[a] + mb[b], 0.8))
        return (a, b), None

    ppl.scan(step, (0, 1), ys, addr="t")


def test_two_chains_in_one_scan_eliminate_their_joint_state() -> None:
    B = jnp.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    ma, mb = jnp.array([-1.0, 1.0]), jnp.array([0.0, 0.5, -0.5])
    ys = jnp.array([0.4, -1.3, 0.8, 1.6])
    given = {"t/y": ys}

    def ours(A, ma):
        return exact_log_marginal(two_chains, ["t/y"], given, A, B, ma, mb, ys)

    def truth(A, ma):
        return brute_force(two_chains, given, {"t/a": ((4,), 2), "t/b": ((4,), 3)}, A, B, ma, mb, ys)

    assert_close(jax.jit(ours)(A, ma), jax.jit(truth)(A, ma))
    assert_close(jax.jit(jax.grad(ours, (0, 1)))(A, ma), jax.jit(jax.grad(truth, (0, 1)))(A, ma))


@ppl.gen
def sequence(A, m, ys):
    def step(z, y):
        z = ppl.sample("z", dist.Categorical(probs=A[z]))
        ppl.sample("y", dist.Normal(m[z], 1.0))
        return z, None

    ppl.scan(step, 0, ys, addr="t")


@ppl.gen
def sequences(A, m, ys):
    ppl.sample("seqs", ppl.vmap(sequence, in_axes=(None, None, 0)), A, m, ys)


def test_chains_inside_a_plate_of_sequences() -> None:
    ys = jnp.array([[0.4, -1.3, 0.8], [1.2, 1.1, -0.2], [-0.7, -0.9, 0.1]])
    given = {"seqs/t/y": ys}

    def ours(A, m):
        return exact_log_marginal(sequences, ["seqs/t/y"], given, A, m, ys)

    def truth(A, m):
        return brute_force(sequences, given, {"seqs/t/z": ((3, 3), 2)}, A, m, ys)

    assert_close(jax.jit(ours)(A, M), jax.jit(truth)(A, M))
    assert_close(jax.jit(jax.grad(ours, (0, 1)))(A, M), jax.jit(jax.grad(truth, (0, 1)))(A, M))


@ppl.gen
def observation(z, r, m):
    w = ppl.sample("w", dist.Bernoulli(r[z]))
    ppl.sample("y", dist.Normal(m[w], 1.0))


@ppl.gen
def chain_of_plates(A, r, m, ys):
    def step(z, y):
        z = ppl.sample("z", dist.Categorical(probs=A[z]))
        ppl.sample("obs", ppl.vmap(observation, in_axes=None, axis_size=2), z, r, m)
        return z, None

    ppl.scan(step, 0, ys, addr="t")


def test_a_plate_inside_each_step_of_a_chain() -> None:
    r, m = jnp.array([0.2, 0.7]), jnp.array([-0.5, 1.5])
    ys = jnp.array([[0.1, 1.2], [-0.6, 2.0], [1.1, 0.3]])
    given = {"t/obs/y": ys}

    def ours(A, r):
        return exact_log_marginal(chain_of_plates, ["t/obs/y"], given, A, r, m, ys)

    def truth(A, r):
        return brute_force(chain_of_plates, given, {"t/z": ((3,), 2), "t/obs/w": ((3, 2), 2)}, A, r, m, ys)

    assert_close(jax.jit(ours)(A, r), jax.jit(truth)(A, r))
    assert_close(jax.jit(jax.grad(ours, (0, 1)))(A, r), jax.jit(jax.grad(truth, (0, 1)))(A, r))


# -- use ---------------------------------------------------------------------------------


def test_assess_under_jit_and_vmap_over_datasets() -> None:
    marg = T.marginal(mixture, keep=["xs/x"], inference=T.exact())
    data = jnp.stack([X4, X4 + 1.0, -X4])
    batched = jax.jit(jax.vmap(lambda x: marg.assess({"xs": {"x": x}}, LOGITS, MU, 4)[0]))(data)
    for x, value in zip(data, batched):
        assert_close(value, brute_force(mixture, {"xs/x": x}, {"xs/z": ((4,), 3)}, LOGITS, MU, 4))


@ppl.gen
def shared_mean_mixture(params, x):
    shift = ppl.sample("shift", dist.Normal(0.0, 1.0))
    ppl.sample("xs", ppl.vmap(point, in_axes=None, axis_size=4), LOGITS, MU + shift)


@ppl.gen
def point_guide(params, x):
    ppl.sample("shift", dist.Delta(params["shift"]))


def test_an_elbo_over_the_exact_marginal_of_a_model() -> None:
    """With a point-mass guide the ELBO is log p(x, shift) with the assignments summed out: its value
    and gradient equal brute force (model-side enumeration, as NumPyro's config_enumerate)."""
    marg = T.marginal(shared_mean_mixture, keep=["shift", "xs/x"], inference=T.exact())
    est = T.elbo(marg, point_guide).estimator()
    value, grad, _ = est.value_and_grad(jax.random.key(0), {"shift": 0.3}, {"xs": {"x": X4}}, X4)

    def truth(shift):
        return brute_force(shared_mean_mixture, {"xs/x": X4, "shift": shift}, {"xs/z": ((4,), 3)}, {}, X4)

    assert_close(value, jax.jit(truth)(0.3))
    assert_close(grad["shift"], jax.grad(truth)(0.3))


@ppl.gen
def normal_guide(params, x):
    ppl.sample("shift", dist.Normal(params["loc"], jnp.exp(params["log_scale"])))


@pytest.mark.slow
def test_a_reparameterized_elbo_over_the_exact_marginal_is_unbiased() -> None:
    """z-test (N = 10,000) of the ELBO gradient against Gauss-Hermite quadrature over the shift."""
    from tests.conftest import assert_unbiased, vmapped

    marg = T.marginal(shared_mean_mixture, keep=["shift", "xs/x"], inference=T.exact())
    est = T.elbo(marg, normal_guide).estimator()
    params = {"loc": 0.2, "log_scale": -0.5}
    obs = {"xs": {"x": X4}}
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)

    def expected(params):
        scale = jnp.exp(params["log_scale"])
        shift = params["loc"] + scale * nodes
        log_p = jax.vmap(lambda s: marg.assess({"shift": s, "xs": {"x": X4}}, params, X4)[0])(shift)
        log_q = dist.Normal(params["loc"], scale).log_prob(shift)
        return jnp.sum(weights * (log_p - log_q)) / jnp.sqrt(2 * jnp.pi)

    grads = vmapped(lambda k: est.value_and_grad(k, params, obs, X4)[1], 10_000)
    assert_unbiased(grads, jax.grad(expected)(params), "exact/elbo-reparam")


def test_maximum_marginal_likelihood_of_a_chain_learns_its_emissions() -> None:
    """Gradient ascent on the exact log likelihood of one long sequence recovers the emission means."""
    rng = np.random.default_rng(1)
    states = [0]
    for _ in range(599):
        states.append(rng.choice(2, p=np.asarray(A)[states[-1]]))
    true_m = np.array([-2.0, 2.0])
    ys = jnp.asarray(true_m[np.array(states)] + rng.normal(size=600))
    marg = T.marginal(sequence, keep=["t/y"], inference=T.exact())

    @jax.jit
    def step(m):
        value, grad = jax.value_and_grad(lambda m: marg.assess({"t": {"y": ys}}, A, m, ys)[0])(m)
        return m + 1e-3 * grad, value

    m = jnp.array([-0.5, 0.5])
    for _ in range(300):
        m, _ = step(m)
    np.testing.assert_allclose(np.asarray(m), true_m, atol=0.15)


# -- infer_discrete ----------------------------------------------------------------------


def brute_posterior(model, given, latents, *args):
    """Posterior marginals and the MAP assignment, by enumerating every joint assignment."""
    combos, scores, probs = brute_posterior_probs(model, given, latents, *args)
    marginals, best, start = {}, {}, 0
    for name, (shape, k) in latents.items():
        n = math.prod(shape)
        cols = combos[:, start : start + n]
        marginals[name] = np.stack([(probs[:, None] * (cols == j)).sum(0) for j in range(k)], -1).reshape(
            (*shape, k)
        )
        best[name] = cols[np.argmax(scores)].reshape(shape)
        start += n
    return marginals, best, scores.max()


def test_infer_discrete_gives_smoothed_marginals_and_the_viterbi_path() -> None:
    ys = jnp.array([-0.5, 0.3, 1.2, -1.1, 0.9])
    given = {"t/y": ys}
    post = T.infer_discrete(hmm, unflatten({("t", "y"): ys}), A, PI, M, ys)
    marginals, best, top = brute_posterior(hmm, given, {"z0": ((), 2), "t/z": ((5,), 2)}, A, PI, M, ys)
    for name in marginals:
        assert_close(post.marginals[name], marginals[name])
        np.testing.assert_array_equal(np.asarray(post.map[name]), best[name])
        assert_close(post.mean[name], marginals[name] @ np.arange(2))
    assert_close(post.map_log_density, top)
    assert_close(post.log_marginal, brute_force(hmm, given, {"z0": ((), 2), "t/z": ((5,), 2)}, A, PI, M, ys))


def test_infer_discrete_gives_responsibilities_in_nested_plates() -> None:
    args = (0.35, jnp.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]]), jnp.array([-1.0, 0.5, 2.0]))
    y = jnp.array([[0.1, 1.8], [-0.9, 0.4], [2.5, 1.1]])
    given = {"rows/cols/y": y}
    post = jax.jit(lambda y: T.infer_discrete(nested, unflatten({("rows", "cols", "y"): y}), *args))(y)
    marginals, best, _ = brute_posterior(
        nested, given, {"rows/z": ((3,), 2), "rows/cols/w": ((3, 2), 3)}, *args
    )
    for name in marginals:
        assert post.marginals[name].shape == marginals[name].shape
        assert_close(post.marginals[name], marginals[name])
        np.testing.assert_array_equal(np.asarray(post.map[name]), best[name])


# -- bad input ------------------------------------------------------------------------------


def test_a_summed_out_value_leaving_its_element_is_refused_where_it_is_used() -> None:
    @ppl.gen
    def element(w):
        return ppl.sample("z", dist.Categorical(probs=w))

    @ppl.gen
    def coupled(w):
        zs = ppl.sample("xs", ppl.vmap(element, in_axes=None, axis_size=3), w)
        ppl.sample("total", dist.Normal(jnp.sum(zs), 1.0))

    marg = T.marginal(coupled, keep=["total"], inference=T.exact())
    with pytest.raises(ValueError, match=r"depends on the summed-out 'xs/z'.*cannot leave its plate element"):
        marg.assess({"total": 1.0}, jnp.array([0.5, 0.5]))


def test_a_site_without_a_value_or_a_finite_support_is_named() -> None:
    marg = T.marginal(shared_mean_mixture, keep=["xs/x"], inference=T.exact())
    with pytest.raises(
        ValueError, match=r"address 'shift' \(Normal\) has no value given and no finite support"
    ):
        marg.assess({"xs": {"x": X4}}, {}, X4)


def test_a_chain_that_is_not_markov_in_its_state_is_exact_when_short_and_refused_when_long() -> None:
    @ppl.gen
    def counting(ys):
        def step(count, y):
            z = ppl.sample("z", dist.Bernoulli(0.5))
            ppl.sample("y", dist.Normal(count + z, 1.0))
            return count + z, None

        ppl.scan(step, 0, ys, addr="t")

    marg = T.marginal(counting, keep=["t/y"], inference=T.exact())
    # A short chain is summed over every path of its carries (2^T rows, at most max_states).
    ys = jnp.array([0.3, 1.2, 0.8, 2.1])
    truth = brute_force(counting, {"t/y": ys}, {"t/z": ((4,), 2)}, ys)
    for assess in (marg.assess, jax.jit(marg.assess)):  # the same answer eagerly and under jit
        assert_close(assess({"t": {"y": ys}}, ys)[0], truth)
    # A long one never repeats its carries: refused.
    ys = jnp.zeros(40)
    for assess in (marg.assess, jax.jit(marg.assess)):
        with pytest.raises(
            ValueError, match=r"ppl.scan at 't'.*carry after a step depends on the previous step's carry"
        ):
            assess({"t": {"y": ys}}, ys)


def test_too_many_joint_values_in_one_element_are_refused() -> None:
    @ppl.gen
    def flips():
        for i in range(20):
            ppl.sample(f"b{i}", dist.Bernoulli(0.5))
        ppl.sample("x", dist.Normal(0.0, 1.0))

    marg = T.marginal(flips, keep=["x"], inference=T.exact(max_states=1024))
    with pytest.raises(ValueError, match=r"more than max_states=1024.*ppl.vmap plate"):
        jax.eval_shape(lambda: marg.assess({"x": 0.0}))  # refused while tracing


def test_kept_and_given_addresses_must_agree() -> None:
    marg = T.marginal(mixture, keep=["xs/x"], inference=T.exact())
    with pytest.raises(ValueError, match="no value for kept address 'xs/x'"):
        marg.assess({}, LOGITS, MU, 4)
    with pytest.raises(ValueError, match="got address 'xs/z', which is not kept"):
        marg.assess({"xs": {"x": X4, "z": jnp.zeros(4, int)}}, LOGITS, MU, 4)
    extra = T.marginal(mixture, keep=["xs/x", "xs/y"], inference=T.exact())
    with pytest.raises(ValueError, match="'xs/y', which the program never samples"):
        extra.assess({"xs": {"x": X4, "y": X4}}, LOGITS, MU, 4)
    with pytest.raises(ValueError, match="max_states must be a positive int"):
        T.exact(0)


def test_simulate_keeps_the_kept_choices_scored_by_the_exact_marginal() -> None:
    marg = T.marginal(mixture, keep=["xs/x"], inference=T.exact())
    trace = marg.simulate(jax.random.key(3), LOGITS, MU, 4)
    assert set(trace.choices) == {"xs"} and set(trace.choices["xs"]) == {"x"}
    x = trace.choices["xs"]["x"]
    assert_close(trace.score, brute_force(mixture, {"xs/x": x}, {"xs/z": ((4,), 3)}, LOGITS, MU, 4))


def test_an_exact_marginal_sampled_inside_an_objective_is_scored_exactly() -> None:
    """sim(marginal) draws every site of the model by its strategy and keeps the kept choices; the
    trace's score is their exact log marginal (a plain objective returning it)."""
    marg = T.marginal(mixture, keep=["xs/x"], inference=T.exact())

    @T.expectation
    def score(params):
        trace = T.sim(marg, LOGITS, params, 4)
        return trace.score - jax.lax.stop_gradient(marg.assess(trace.choices, LOGITS, params, 4)[0])

    est = score.estimator(strategies={"xs/z": T.reinforce()})
    value, _, _ = est.value_and_grad(jax.random.key(0), MU)
    assert_close(value, 0.0)


def test_bad_data_inside_a_plate_is_named_eagerly_and_refused_under_jit() -> None:
    """Checks inside plates and chains poison the sum; called eagerly the failure is re-run and
    named (address, distribution, value); under jit one host check refuses the NaN result."""
    marg = T.marginal(mixture, keep=["xs/x"], inference=T.exact())
    bad = X4.at[2].set(jnp.nan)
    with pytest.raises(ValueError, match=r"address 'xs/x' \(Normal\): the value given to .* is nan"):
        marg.assess({"xs": {"x": bad}}, LOGITS, MU, 4)
    with pytest.raises(Exception, match="the log marginal is NaN"):
        jax.block_until_ready(jax.jit(lambda x: marg.assess({"xs": {"x": x}}, LOGITS, MU, 4)[0])(bad))


def joint_frequencies_fit(samples, model, given, latents, *args):
    """Chi-square goodness of fit of joint draws ({address: (N, *shape)}) to the exact posterior."""
    from scipy.stats import chisquare

    combos, _, probs = brute_posterior_probs(model, given, latents, *args)
    count = len(samples[next(iter(latents))])
    flat = np.concatenate([np.asarray(samples[name]).reshape(count, -1) for name in latents], 1)
    index = {tuple(c): i for i, c in enumerate(combos)}
    observed = np.bincount([index[tuple(row)] for row in flat], minlength=len(combos))
    return chisquare(observed, probs * observed.sum()).pvalue


def test_infer_discrete_draws_joint_posterior_samples() -> None:
    """With a key, `sample` is one joint draw from the exact posterior (backward sampling along the
    chain, per element in plates): 8,000 draws fit the enumerated posterior (chi-square p > 1e-3)."""
    ys = jnp.array([-0.5, 0.3, 1.2, -1.1])
    keys = jax.random.split(jax.random.key(0), 8_000)
    draw = jax.jit(jax.vmap(lambda k: T.infer_discrete(hmm, {"t": {"y": ys}}, A, PI, M, ys, key=k).sample))
    latents = {"z0": ((), 2), "t/z": ((4,), 2)}
    assert joint_frequencies_fit(draw(keys), hmm, {"t/y": ys}, latents, A, PI, M, ys) > 1e-3

    args = (0.35, jnp.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]]), jnp.array([-1.0, 0.5, 2.0]))
    y = jnp.array([[0.1, 1.8], [-0.9, 0.4]])

    @ppl.gen
    def two_rows(p, q, m):
        ppl.sample("rows", ppl.vmap(outer_row, in_axes=None, axis_size=2), p, q, m)

    draw = jax.jit(
        jax.vmap(lambda k: T.infer_discrete(two_rows, {"rows": {"cols": {"y": y}}}, *args, key=k).sample)
    )
    latents = {"rows/z": ((2,), 2), "rows/cols/w": ((2, 2), 3)}
    assert joint_frequencies_fit(draw(keys), two_rows, {"rows/cols/y": y}, latents, *args) > 1e-3
    assert T.infer_discrete(two_rows, {"rows": {"cols": {"y": y}}}, *args).sample is None


@ppl.gen
def autoregressive(A, m, ys):
    def step(carry, y):
        z_prev, y_prev = carry
        z = ppl.sample("z", dist.Categorical(probs=A[z_prev]))
        y = ppl.sample("y", dist.Normal(m[z] + 0.5 * y_prev, 1.0))
        return (z, y), None

    ppl.scan(step, (0, 0.0), ys, addr="t")


def test_a_carry_that_changes_along_the_chain_is_eliminated_step_by_step() -> None:
    """An autoregressive HMM carries the previous observation: the carry table changes with each
    step's inputs, so the chain takes the sequential path; equal to brute force."""
    ys = jnp.array([0.4, -1.3, 0.8, 1.6, -0.2])
    given = {"t/y": ys}

    def ours(A, m):
        return exact_log_marginal(autoregressive, ["t/y"], given, A, m, ys)

    def truth(A, m):
        return brute_force(autoregressive, given, {"t/z": ((5,), 2)}, A, m, ys)

    assert_close(jax.jit(ours)(A, M), jax.jit(truth)(A, M))
    assert_close(jax.jit(jax.grad(ours, (0, 1)))(A, M), jax.jit(jax.grad(truth, (0, 1)))(A, M))


@ppl.gen
def second_order(A2, m, ys):
    """A second-order HMM: each state depends on the two before it (the carry is a tuple)."""

    def step(carry, y):
        z1, z2 = carry
        z = ppl.sample("z", dist.Categorical(probs=jnp.asarray(A2)[z1, z2]))
        ppl.sample("y", dist.Normal(jnp.asarray(m)[z], 1.0))
        return (z.astype(jnp.int32), z1), None

    ppl.scan(step, (jnp.int32(0), jnp.int32(0)), ys, addr="t")


_W = np.random.default_rng(1).normal(size=(3, 3, 3))
A2 = np.exp(_W) / np.exp(_W).sum(-1, keepdims=True)  # A2[z_{t−1}, z_{t−2}]: p(z_t)
M3 = np.array([-1.0, 0.5, 2.0])


@pytest.mark.parametrize("length", [1, 2, 5])
def test_a_second_order_chain_equals_brute_force(length) -> None:
    """A tuple carry of the last two states: the chain's states are its distinct carries (K² pairs),
    eliminated by the same backward recursion; value, gradient and posterior equal brute force."""
    ys = jnp.array([0.4, -1.3, 0.8, 1.6, -0.2])[:length]
    given = {"t/y": ys}
    latents = {"t/z": ((length,), 3)}

    def ours(A2, m):
        return exact_log_marginal(second_order, ["t/y"], given, A2, m, ys)

    def truth(A2, m):
        return brute_force(second_order, given, latents, A2, m, ys)

    assert_close(jax.jit(ours)(A2, M3), truth(A2, M3))
    assert_close(jax.jit(jax.grad(ours, (0, 1)))(A2, M3), jax.jit(jax.grad(truth, (0, 1)))(A2, M3))
    post = jax.jit(lambda ys: T.infer_discrete(second_order, {"t": {"y": ys}}, A2, M3, ys))(ys)
    marginals, best, top = brute_posterior(second_order, given, latents, A2, M3, ys)
    assert_close(post.marginals["t/z"], marginals["t/z"])
    np.testing.assert_array_equal(np.asarray(post.map["t/z"]), best["t/z"])
    assert_close(post.map_log_density, top)


def test_a_second_order_chain_draws_joint_posterior_samples() -> None:
    ys = jnp.array([0.4, -1.3, 0.8, 1.6])
    keys = jax.random.split(jax.random.key(2), 8_000)
    draw = jax.jit(
        jax.vmap(lambda k: T.infer_discrete(second_order, {"t": {"y": ys}}, A2, M3, ys, key=k).sample)
    )
    latents = {"t/z": ((4,), 3)}
    assert joint_frequencies_fit(draw(keys), second_order, {"t/y": ys}, latents, A2, M3, ys) > 1e-3


def test_a_long_second_order_chain_equals_a_forward_algorithm_over_pairs() -> None:
    """T = 2,000: against an independent NumPy forward algorithm over the pair states (z_{t−1}, z_t)."""
    length = 2000
    ys = np.random.default_rng(3).normal(size=length) + 0.5
    ours = jax.jit(lambda ys: exact_log_marginal(second_order, ["t/y"], {"t/y": ys}, A2, M3, ys))(ys)
    a2, m, y = np.asarray(A2), np.asarray(M3), np.asarray(ys)
    emit = -0.5 * (y[:, None] - m[None, :]) ** 2 - 0.5 * np.log(2 * np.pi)  # (T, K)
    # alpha[i, j]: log p(y_<=t, z_{t−1} = i, z_t = j), starting from the carry (0, 0).
    alpha = np.full((3, 3), -np.inf)
    alpha[0, :] = np.log(a2[0, 0]) + emit[0]
    for t in range(1, length):
        # z_t = k given (z_{t−1}, z_{t−2}) = (j, i): A2[j, i, k]
        terms = alpha[:, :, None] + np.log(np.transpose(a2, (1, 0, 2)))  # [i, j, k]
        alpha = np.logaddexp.reduce(terms, axis=0) + emit[t][None, :]
    np.testing.assert_allclose(ours, np.logaddexp.reduce(alpha.ravel()), rtol=1e-10)


@ppl.gen
def third_order(A3, m, ys):
    def step(carry, y):
        z1, z2, z3 = carry
        z = ppl.sample("z", dist.Categorical(probs=jnp.asarray(A3)[z1, z2, z3]))
        ppl.sample("y", dist.Normal(jnp.asarray(m)[z], 1.0))
        return (z.astype(jnp.int32), z1, z2), None

    ppl.scan(step, (jnp.int32(0), jnp.int32(1), jnp.int32(0)), ys, addr="t")


@pytest.mark.parametrize("length", [1, 2, 3, 5])
def test_a_third_order_chain_equals_brute_force(length) -> None:
    """The first two steps' carries still hold a part of the initial carry: those steps run from
    their rows, the later ones from the 8 states."""
    w = np.random.default_rng(4).normal(size=(2, 2, 2, 2))
    a3 = np.exp(w) / np.exp(w).sum(-1, keepdims=True)
    m = np.array([-0.5, 1.5])
    ys = jnp.array([0.4, -1.3, 0.8, 1.6, -0.2])[:length]
    given, latents = {"t/y": ys}, {"t/z": ((length,), 2)}

    def ours(a3, m):
        return exact_log_marginal(third_order, ["t/y"], given, a3, m, ys)

    def truth(a3, m):
        return brute_force(third_order, given, latents, a3, m, ys)

    assert_close(jax.jit(ours)(a3, m), truth(a3, m))
    assert_close(jax.jit(jax.grad(ours))(a3, m), jax.jit(jax.grad(truth))(a3, m))
    post = T.infer_discrete(third_order, {"t": {"y": ys}}, a3, m, ys)
    marginals, best, _ = brute_posterior(third_order, given, latents, a3, m, ys)
    assert_close(post.marginals["t/z"], marginals["t/z"])
    np.testing.assert_array_equal(np.asarray(post.map["t/z"]), best["t/z"])


def test_a_higher_order_chain_with_more_states_than_max_states_is_refused() -> None:
    ys = jnp.array([0.4, -1.3, 0.8])
    marg = T.marginal(second_order, keep=["t/y"], inference=T.exact(max_states=8))  # 9 pairs
    with pytest.raises(ValueError, match=r"ppl.scan at 't'.*more than max_states=8"):
        marg.assess({"t": {"y": ys}}, A2, M3, ys)


def test_a_carry_that_does_not_close_over_discrete_values_is_exact_when_short_and_refused_when_long() -> None:
    """A carry that accumulates a continuous function of the states has no finite state set: a short
    chain is summed over all its paths, a long one is refused."""

    @ppl.gen
    def accumulating(ys):
        def step(carry, y):
            z_prev, total = carry
            z = ppl.sample("z", dist.Bernoulli(0.3 + 0.4 * z_prev))
            ppl.sample("y", dist.Normal(total, 1.0))
            return (z, total + 0.5 * z), None

        ppl.scan(step, (jnp.asarray(0), jnp.asarray(0.0)), ys, addr="t")

    ys = jnp.array([0.2, 1.1, 0.7])
    ours = jax.jit(lambda ys: exact_log_marginal(accumulating, ["t/y"], {"t/y": ys}, ys))(ys)
    assert_close(ours, brute_force(accumulating, {"t/y": ys}, {"t/z": ((3,), 2)}, ys))  # 2^3 paths
    ys = jnp.zeros(20)  # 2^19 paths, more than max_states
    with pytest.raises(ValueError, match=r"ppl.scan at 't'.*higher-order chain"):
        jax.jit(lambda ys: exact_log_marginal(accumulating, ["t/y"], {"t/y": ys}, ys))(ys)


def test_a_chain_without_summed_out_sites_may_carry_anything() -> None:
    """A counter in the carry is fine when the steps sum nothing out (a global site before them
    is summed out per value); python-int initial carries are arrays, as lax.scan hands them."""

    @ppl.gen
    def counted(ys):
        c = ppl.sample("c", dist.Bernoulli(0.3))

        def step(count, y):
            ppl.sample("y", dist.Normal(c + 0.1 * count.astype(float), 1.0))
            return count + 1, None

        ppl.scan(step, 0, ys, addr="t")

    ys = jnp.array([0.2, 1.1, 0.7])
    ours = exact_log_marginal(counted, ["t/y"], {"t/y": ys}, ys)
    assert_close(ours, brute_force(counted, {"t/y": ys}, {"c": ((), 2)}, ys))


def test_map_on_ties_is_one_maximizer() -> None:
    @ppl.gen
    def tied():
        ppl.sample("z", dist.Categorical(probs=jnp.array([0.45, 0.1, 0.45])))
        ppl.sample("x", dist.Normal(0.0, 1.0))

    post = T.infer_discrete(tied, {"x": 0.0})
    assert int(post.map["z"]) in (0, 2)


def test_a_to_event_discrete_site_is_refused_with_advice() -> None:
    @ppl.gen
    def flips():
        ppl.sample("b", dist.Bernoulli(0.5 * jnp.ones(3)).to_event(1))
        ppl.sample("x", dist.Normal(0.0, 1.0))

    marg = T.marginal(flips, keep=["x"], inference=T.exact())
    with pytest.raises(
        ValueError, match=r"address 'b' \(Bernoulli.*to_event\(1\)\): a discrete site with event"
    ):
        marg.assess({"x": 0.0})


def test_a_scan_inside_a_raw_vmap_is_refused() -> None:
    @ppl.gen
    def walks(xs):
        def step(z, x):
            return ppl.sample("z", dist.Normal(z + x, 1.0)), None

        return jax.vmap(lambda x: ppl.scan(step, 0.0, x, addr="s")[0])(xs)

    with pytest.raises(RuntimeError, match=r"ppl.scan at 's' runs inside a JAX transformation"):
        walks.simulate(jax.random.key(0), jnp.zeros((2, 3)))


@ppl.gen
def location(params):
    ppl.sample("x", dist.Normal(params, 1.0))


def test_an_exact_marginal_is_an_exact_density_guide() -> None:
    """Objectives that re-evaluate the guide's density (STL) accept an exact marginal as the guide;
    the value is the ELBO's at the same key (STL changes the gradient only)."""

    @ppl.gen
    def bimodal(params):
        z = ppl.sample("z", dist.Bernoulli(0.4))
        ppl.sample("x", dist.Normal(2.0 * z - 1.0 + params, 0.7))

    guide = T.marginal(bimodal, keep=["x"], inference=T.exact())
    strategies = {"z": T.reinforce()}
    stl = T.elbo_stl(location, guide).estimator(strategies=strategies)
    plain = T.elbo(location, guide).estimator(strategies=strategies)
    key = jax.random.key(4)
    assert_close(stl.value_and_grad(key, 0.2, {})[0], plain.value_and_grad(key, 0.2, {})[0])
