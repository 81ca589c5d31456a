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
