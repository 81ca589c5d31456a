"""The language: simulate/assess/generate, choice maps, vmap and scan, TFP adapter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import pytest

import ppl


@ppl.gen
def point(mu):
    return ppl.sample("x", dist.Normal(mu, 1.0))


@ppl.gen
def model(n):
    z = ppl.sample("z", dist.Normal(0.0, 1.0))
    ppl.sample("xs", ppl.vmap(point, in_axes=None, axis_size=3), z)

    def step(carry, _):
        w = ppl.sample("w", dist.Normal(carry, 0.5))
        return w, w

    return ppl.scan(step, z, None, length=n)[1]


def test_simulate_then_assess_gives_the_same_score() -> None:
    trace = model.simulate(jax.random.key(0), 4)
    shapes = jax.tree.map(jnp.shape, trace.choices)
    assert shapes == {"z": (), "xs": {"x": (3,)}, "w": (4,)}
    score, retval = model.assess(trace.choices, 4)
    assert jnp.allclose(score, trace.score) and jnp.allclose(retval, trace.retval)


def test_score_is_the_sum_of_site_log_densities() -> None:
    trace = model.simulate(jax.random.key(1), 3)
    c = trace.choices
    expected = dist.Normal(0.0, 1.0).log_prob(c["z"])
    expected += dist.Normal(c["z"], 1.0).log_prob(c["xs"]["x"]).sum()
    prev = jnp.concatenate([c["z"][None], c["w"][:-1]])
    expected += dist.Normal(prev, 0.5).log_prob(c["w"]).sum()
    assert jnp.allclose(trace.score, expected, atol=1e-5)


def test_generate_weight_is_the_constrained_log_density() -> None:
    trace, weight = model.generate(jax.random.key(2), {"w": jnp.ones(2)}, 2)
    assert jnp.allclose(trace.choices["w"], 1.0)
    z = trace.choices["z"]
    expected = dist.Normal(jnp.array([z, 1.0]), 0.5).log_prob(jnp.ones(2)).sum()
    assert jnp.allclose(weight, expected, atol=1e-5)


def test_jit_and_vmap() -> None:
    keys = jax.random.split(jax.random.key(3), 5)
    scores = jax.jit(jax.vmap(lambda k: model.simulate(k, 3).score))(keys)
    eager = jnp.stack([model.simulate(k, 3).score for k in keys])
    assert jnp.allclose(scores, eager, atol=1e-5)


def test_merge_and_flatten() -> None:
    merged = ppl.merge({"a": 1.0}, {"b": {"c": 2.0}})
    assert ppl.flatten(merged) == {("a",): 1.0, ("b", "c"): 2.0}
    assert ppl.unflatten(ppl.flatten(merged)) == merged
    with pytest.raises(ValueError, match="address 'a' is given twice"):
        ppl.merge({"a": 1.0}, {"a": 2.0})


def test_calling_a_generative_function_directly_is_an_error() -> None:
    with pytest.raises(TypeError, match=r"call it as ppl.sample\(address, g, \*args\)"):
        point(0.0)


def test_vmap_with_wrong_leading_axis() -> None:
    with pytest.raises(ValueError, match="has shape \\(2,\\), but the combinator there has 3 elements"):
        model.assess({"z": 0.0, "xs": {"x": jnp.zeros(2)}, "w": jnp.zeros(2)}, 2)


# TFP's JAX backend samples Poisson through float64 requests (truncated to float32 without
# x64) and passes shape=None to jnp.shape, which jax 0.12 deprecates: TFP's warnings, not ours.
@pytest.mark.filterwarnings("ignore:Explicitly requested dtype float64:UserWarning")
@pytest.mark.filterwarnings("ignore:shape requires ndarray or scalar arguments:DeprecationWarning")
def test_tfp_distributions_work_as_sites() -> None:
    tfp = pytest.importorskip("tensorflow_probability.substrates.jax", reason="needs the tfp extra")
    tfd = tfp.distributions

    @ppl.gen
    def tfp_model(mu):
        z = ppl.sample("z", tfd.Normal(mu, 1.0))
        ppl.sample("n", tfd.Poisson(rate=jnp.exp(z)))

    trace = tfp_model.simulate(jax.random.key(0), 0.5)
    expected = tfd.Normal(0.5, 1.0).log_prob(trace.choices["z"]) + tfd.Poisson(
        rate=jnp.exp(trace.choices["z"])
    ).log_prob(trace.choices["n"])
    assert jnp.allclose(trace.score, expected, atol=1e-5)


def test_a_sample_site_inside_a_raw_lax_cond_is_refused_with_advice() -> None:
    """Sites in a jax.lax.cond branch would leak tracers out of the branch: refused, naming the site."""

    @ppl.gen
    def branching(x):
        return jax.lax.cond(
            x > 0,
            lambda: ppl.sample("a", dist.Normal(0.0, 1.0)),
            lambda: ppl.sample("b", dist.Normal(1.0, 1.0)),
        )

    with pytest.raises(
        RuntimeError, match=r"ppl.sample\('a', ...\) runs inside a JAX transformation.*jax.lax.cond"
    ):
        branching.simulate(jax.random.key(0), 1.0)
    with pytest.raises(RuntimeError, match=r"ppl.sample\('a', ...\) runs inside a JAX transformation"):
        jax.jit(lambda x: branching.assess({"a": 0.0}, x)[0])(1.0)


def test_messages_inside_a_plate_name_the_full_address() -> None:
    @ppl.gen
    def count():
        ppl.sample("x", dist.Poisson(2.0))

    @ppl.gen
    def counts():
        ppl.sample("xs", ppl.vmap(count, axis_size=3))

    # traced inside the plate's vmap: raised through a host callback (a JaxRuntimeError carrying it)
    with pytest.raises(Exception, match=r"address 'xs/x' \(Poisson\): the value given to assess is -1.0"):
        counts.assess({"xs": {"x": jnp.array([1.0, -1.0, 2.0])}})
    with pytest.raises(ValueError, match=r"address 'xs/y', which .* never samples; it samples 'xs/x'"):
        counts.assess({"xs": {"x": jnp.array([1, 1, 2]), "y": jnp.ones(3)}})
