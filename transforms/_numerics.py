"""Log-space arithmetic shared by the objectives and estimators."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def log_mean_exp(x: jax.Array, axis: int | None = None) -> jax.Array:
    """``log(mean(exp(x)))`` along ``axis`` (all entries when ``None``), computed stably.

    Example:
        >>> import jax.numpy as jnp
        >>> float(log_mean_exp(jnp.log(jnp.array([1.0, 3.0]))))  # log 2
        0.6931471824645996
    """
    x = jnp.asarray(x)
    count = x.size if axis is None else x.shape[axis]
    return jax.nn.logsumexp(x, axis=axis) - math.log(count)
