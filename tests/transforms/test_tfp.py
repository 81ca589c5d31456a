"""TFP-on-JAX distributions under the strategies (needs the ``tfp`` extra)."""

from __future__ import annotations

import re

import jax
import pytest

import ppl
from ppl import transforms as T
from tests.conftest import assert_unbiased, vmapped

tfp = pytest.importorskip("tensorflow_probability.substrates.jax", reason="needs the tfp extra")
tfd = tfp.distributions


@T.expectation
def objective(theta):
    x = ppl.sample("x", tfd.Normal(theta, 1.5))
    return x**2


@pytest.mark.parametrize("strategy", ["reparam", "reinforce"])
def test_tfp_normal_is_unbiased(strategy: str) -> None:
    est = objective.estimator(strategies={"x": getattr(T, strategy)()})
    grads = vmapped(lambda k: est.grad(k, 0.7), 10_000)
    assert_unbiased(grads, 1.4, f"tfp/{strategy}/Normal")


def test_reparam_on_a_tfp_discrete_site_is_rejected() -> None:
    @T.expectation
    def discrete(theta):
        return ppl.sample("n", tfd.Poisson(rate=theta)) * 1.0

    est = discrete.estimator(strategies={"n": T.reparam()})
    with pytest.raises(ValueError, match=re.escape("reparam at address 'n': tfp.Poisson is discrete")):
        est.grad(jax.random.key(0), 1.0)
