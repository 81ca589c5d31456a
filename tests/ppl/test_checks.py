"""Bad numbers at sample sites: parameters outside their constraints, data outside the support.

Concrete values are refused at trace time; traced ones inside a program the user jits raise
through a host callback; inside estimators they are carried out of the step (tests in
tests/transforms/test_estimator.py).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import pytest

import ppl


def one(make):
    @ppl.gen
    def model():
        return ppl.sample("c", make())  # built inside the program: ppl checks it, not NumPyro

    return model


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: dist.Bernoulli(probs=1.7), "address 'c' (BernoulliProbs): parameter probs = 1.7"),
        (
            lambda: dist.Normal(0.0, -1.0),
            "address 'c' (Normal): parameter scale = -1.0 is outside its constraint ((0, inf))",
        ),
        (
            lambda: dist.Normal(jnp.nan, 1.0),
            "address 'c' (Normal): parameter loc = nan is outside its constraint (finite reals)",
        ),
        (
            lambda: dist.Categorical(probs=jnp.array([0.5, 0.6])),
            "address 'c' (CategoricalProbs): parameter probs = [0.5 0.6] is outside its constraint "
            "(the simplex",
        ),
        (
            lambda: dist.Gamma(jnp.array([1.0, -2.0]), 1.0),
            "address 'c' (Gamma): parameter concentration = -2.0 is outside its constraint ((0, inf))",
        ),
    ],
)
def test_parameters_outside_their_constraint_name_the_address_value_and_set(make, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        one(make).simulate(jax.random.key(0))


@ppl.gen
def model(rate):
    z = ppl.sample("z", dist.Normal(0.0, 1.0))
    ppl.sample("n", dist.Poisson(rate * jnp.exp(z)))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            -1.0,
            "address 'n' (Poisson): the value given to assess is -1.0, outside the support (integers >= 0)",
        ),
        (1.5, "address 'n' (Poisson): the value given to assess is 1.5, outside the support (integers >= 0)"),
    ],
)
def test_data_outside_the_support_names_the_value_and_the_set(value, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        model.assess({"z": 0.1, "n": value}, 2.0)


def test_nan_and_inf_data_on_a_real_site_are_refused() -> None:
    for bad in (jnp.nan, jnp.inf):
        with pytest.raises(ValueError, match=re.escape("address 'z' (Normal): the value given to assess is")):
            model.assess({"z": bad, "n": 1.0}, 2.0)


def test_non_numeric_data_is_refused_at_trace_time() -> None:
    with pytest.raises(
        TypeError, match=re.escape("address 'z' (Normal): the value given to assess has dtype complex64")
    ):
        model.assess({"z": jnp.asarray(1.0 + 1.0j, jnp.complex64), "n": 1.0}, 2.0)


def test_traced_data_outside_the_support_under_the_users_jit_raises_with_the_message() -> None:
    run = jax.jit(lambda n: model.assess({"z": 0.1, "n": n}, 2.0)[0])
    assert jnp.isfinite(run(3.0))
    with pytest.raises(
        Exception, match=re.escape("address 'n' (Poisson): the value given to assess is -1.0")
    ):
        jax.block_until_ready(run(-1.0))


def test_traced_parameters_under_the_users_jit_raise_with_the_message() -> None:
    run = jax.jit(lambda rate: model.assess({"z": 0.1, "n": 2.0}, rate)[0])
    with pytest.raises(Exception, match=re.escape("address 'n' (Poisson): parameter rate = -")):
        jax.block_until_ready(run(-1.0))


def test_runtime_checks_switch_takes_effect_for_new_traces() -> None:
    ppl.set_runtime_checks(False)
    try:
        value = jax.jit(lambda n: model.assess({"z": 0.1, "n": n}, 2.0)[0])(-1.0)
        assert jnp.isnan(value)  # unchecked: the failed check still poisons the density
    finally:
        ppl.set_runtime_checks(True)


# -- wrapped distributions: to_event, expand, mask ---------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: dist.Normal(jnp.zeros(3), jnp.array([1.0, -1.0, 1.0])).to_event(1),
        lambda: dist.Normal(0.0, -1.0).expand([2, 3]).to_event(2),
        lambda: dist.Normal(jnp.zeros(3), jnp.array([1.0, -1.0, 1.0])).mask(jnp.array([True, True, False])),
    ],
)
def test_parameters_inside_wrappers_are_checked(make) -> None:
    with pytest.raises(ValueError, match=re.escape("address 'c' (Normal): parameter scale = -1.0")):
        one(make).simulate(jax.random.key(0))


def test_traced_parameters_inside_to_event_under_the_users_jit_raise() -> None:
    @ppl.gen
    def wrapped(scale):
        return ppl.sample("c", dist.Normal(jnp.zeros(3), scale).to_event(1))

    run = jax.jit(lambda s: wrapped.simulate(jax.random.key(0), s).choices["c"])
    assert run(jnp.ones(3)).shape == (3,)
    with pytest.raises(Exception, match=re.escape("address 'c' (Normal): parameter scale = -2.0")):
        jax.block_until_ready(run(jnp.array([1.0, -2.0, 1.0])))


@ppl.gen
def masked_data(mask):
    ppl.sample("x", dist.Normal(jnp.zeros(3), 1.0).mask(mask).to_event(1))


def test_masked_out_data_may_be_anything_and_adds_nothing() -> None:
    mask = jnp.array([True, False, True])
    x = jnp.array([0.5, jnp.nan, -1.0])
    want = float(jnp.sum(dist.Normal(0.0, 1.0).log_prob(jnp.array([0.5, -1.0]))))
    weight = masked_data.assess({"x": x}, mask)[0]
    assert weight == pytest.approx(want, rel=1e-6)
    traced = jax.jit(lambda x: masked_data.assess({"x": x}, mask)[0])(x)
    assert traced == pytest.approx(want, rel=1e-6)
    with pytest.raises(
        ValueError,
        match=re.escape("address 'x' (MaskedDistribution.to_event(1)): the value given to assess is nan"),
    ):
        masked_data.assess({"x": x}, jnp.array([True, True, True]))


def test_data_outside_a_to_event_support_names_the_element() -> None:
    @ppl.gen
    def pixels():
        ppl.sample("x", dist.Bernoulli(logits=jnp.zeros(4)).to_event(1))

    with pytest.raises(
        ValueError,
        match=re.escape(
            "address 'x' (BernoulliLogits.to_event(1)): the value given to assess is 2.0, outside the "
            "support ({0, 1})"
        ),
    ):
        pixels.assess({"x": jnp.array([0.0, 1.0, 2.0, 1.0])})
