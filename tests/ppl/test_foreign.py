"""NumPyro primitives inside ppl programs and objectives are errors, never a silent zero."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest

import ppl
from ppl import transforms as T


def test_numpyro_sample_in_a_program_names_the_site_and_the_route() -> None:
    @ppl.gen
    def model():
        numpyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(
        RuntimeError,
        match=re.escape(
            "numpyro.sample('z') was reached inside a ppl program: NumPyro primitives are not ppl "
            "sample sites, and the estimator would silently miss them; use ppl.sample(address, distribution)"
        ),
    ):
        model.simulate(jax.random.key(0))


def test_numpyro_model_under_seed_in_an_objective_is_an_error_not_a_zero_elbo() -> None:
    def numpyro_model():
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=0.5)

    @T.expectation
    def elbo(theta):
        with numpyro.handlers.seed(rng_seed=0):
            numpyro_model()
        return theta * 0.0

    with pytest.raises(
        RuntimeError, match=re.escape("numpyro.sample('z') was reached inside a ppl objective")
    ):
        elbo.estimator().value_and_grad(jax.random.key(0), 1.0)


def test_ppl_sample_inside_a_numpyro_plate_is_an_error() -> None:
    @ppl.gen
    def model():
        with numpyro.plate("data", 3):
            ppl.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(
        RuntimeError,
        match=re.escape("numpyro.plate('data') was reached inside a ppl program") + ".*use ppl.vmap",
    ):
        model.simulate(jax.random.key(0))


def test_param_and_deterministic_are_errors_with_their_routes() -> None:
    @ppl.gen
    def with_param():
        numpyro.param("w", jnp.zeros(2))

    with pytest.raises(RuntimeError, match=r"numpyro\.param\('w'\).*pass parameters as arguments"):
        with_param.simulate(jax.random.key(0))

    @ppl.gen
    def with_deterministic():
        numpyro.deterministic("d", 1.0)

    with pytest.raises(RuntimeError, match=r"numpyro\.deterministic\('d'\).*return the value"):
        with_deterministic.simulate(jax.random.key(0))


def test_numpyro_still_works_outside_ppl_programs_after_an_error() -> None:
    @ppl.gen
    def bad():
        numpyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(RuntimeError):
        bad.simulate(jax.random.key(0))

    def numpyro_model():
        return numpyro.sample("z", dist.Normal(0.0, 1.0))

    trace = numpyro.handlers.trace(numpyro.handlers.seed(numpyro_model, 0)).get_trace()
    assert set(trace) == {"z"}
