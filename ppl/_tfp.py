"""A thin adapter: TensorFlow-Probability-on-JAX distributions as sample-site distributions.

Needs the ``tfp`` extra (``tfp-nightly``: stable ``tensorflow-probability`` does
not import its JAX substrate on current JAX). Used automatically when a TFP
distribution is passed to ``ppl.sample``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as nd
from numpyro.distributions import constraints


class TFPDistribution(nd.Distribution):
    """Wrap a ``tfp.substrates.jax`` distribution in NumPyro's interface.

    Sampling is reparameterized when TFP says the distribution is fully
    reparameterized; the support is taken as unconstrained, unless the TFP
    distribution is discrete (then it is the non-negative integers, without
    enumeration).
    """

    # A pytree (so it crosses jax.vmap/lax.scan like NumPyro's distributions): the TFP
    # distribution is the data, TFP distributions being pytrees themselves.
    pytree_data_fields = ("tfp_dist",)
    pytree_aux_fields = ("display_name", "_reparameterized", "_discrete")

    def __init__(self, tfp_dist: Any):
        self.tfp_dist = tfp_dist
        self.display_name = f"tfp.{type(tfp_dist).__name__}"
        kind = str(tfp_dist.reparameterization_type)
        self._reparameterized = "FULLY_REPARAMETERIZED" in kind
        dtype = jnp.dtype(tfp_dist.dtype)
        self._discrete = bool(jnp.issubdtype(dtype, jnp.integer)) or _is_discrete_tfp(tfp_dist)
        super().__init__(
            batch_shape=tuple(tfp_dist.batch_shape),
            event_shape=tuple(tfp_dist.event_shape),
            validate_args=False,
        )

    @property
    def has_rsample(self) -> bool:
        return self._reparameterized

    @property
    def support(self) -> constraints.Constraint:
        if self._discrete:
            return constraints.nonnegative_integer
        return constraints.real if not self.event_shape else constraints.real_vector

    def sample(self, key: jax.Array, sample_shape: tuple = ()) -> jax.Array:
        return self.tfp_dist.sample(sample_shape, seed=key)

    def rsample(self, key: jax.Array, sample_shape: tuple = ()) -> jax.Array:
        return self.sample(key, sample_shape)

    def log_prob(self, value: jax.Array) -> jax.Array:
        return self.tfp_dist.log_prob(value)

    @property
    def mean(self) -> jax.Array:
        return self.tfp_dist.mean()

    @property
    def variance(self) -> jax.Array:
        return self.tfp_dist.variance()


def _is_discrete_tfp(d: Any) -> bool:
    return type(d).__name__ in {"Bernoulli", "Categorical", "Poisson", "Geometric", "Binomial"}
