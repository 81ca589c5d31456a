"""Objectives for unnormalized (energy) models ``p(x; θ) = p̃(x; θ) / Z(θ)``.

One model function ``log_density(params, x) -> log p̃(x; params)`` (for one
datum) serves every estimator:

- :func:`unnormalized_nll`: the negative log-likelihood with the log-partition
  term ``log Z = log E_{z~q}[p̃(z)/q(z)]`` written as a :func:`log_expectation`
  at address ``"log_partition"``, whose estimator the user chooses
  (``compositional``, ``self_normalized_bound`` or ``naive``);
- :func:`nce`: noise-contrastive estimation, a logistic loss whose gradient is
  unbiased for its population loss (a different objective whose optimum is the
  MLE's only when the model family contains the data distribution). A learned
  log-normalizer ``c`` is a parameter of ``log_density`` itself (``log p̃ − c``);
  it cancels exactly in :func:`unnormalized_nll`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as nd
from numpyro.distributions import constraints
from ppl.transforms._expectation import Expectation, add_cost, expectation
from ppl.transforms._log_expectation import log_expectation

import ppl
from ppl._distributions import as_distribution, name

LogDensity = Callable[[Any, jax.Array], jax.Array]


def _base(constraint: Any) -> Any:
    while isinstance(constraint, constraints.independent):
        constraint = constraint.base_constraint
    return constraint


def _name(constraint: Any) -> str:
    return type(_base(constraint)).__name__.strip("_").lower()


def _check_noise(noise: Any, address: str, support: Any) -> nd.Distribution:
    d = as_distribution(noise, (address,))
    what = f"noise at address '{address}' ({name(d)})"
    if d.batch_shape != ():
        raise ValueError(
            f"{what} has batch shape {d.batch_shape}: give one draw per datum, e.g. with "
            f".to_event({len(d.batch_shape)})"
        )
    if type(_base(d.support)) is not type(_base(support)):
        raise ValueError(
            f"{what} has support {_name(d.support)}, but the model's support is {_name(support)}: "
            "importance weights p̃/q need q > 0 wherever the model has mass"
        )
    return d


def _check_data(d: nd.Distribution, data: jax.Array, address: str) -> None:
    if jnp.ndim(data) < 1 or jnp.shape(data)[1:] != d.event_shape:
        raise ValueError(
            f"noise at address '{address}' ({name(d)}) draws points of shape {d.event_shape}, but the "
            f"data batch has shape {jnp.shape(data)} (expected (batch, *{d.event_shape}))"
        )


def _per_datum(fn: LogDensity, params: Any, points: jax.Array) -> jax.Array:
    """``fn(params, x)`` for every point of a batch; each must be a scalar."""
    values = jax.vmap(lambda x: fn(params, x))(points)
    if values.ndim != 1:
        raise ValueError(f"log_density must return a scalar per datum, got shape {values.shape[1:]}")
    return values


def unnormalized_nll(
    log_density: LogDensity, noise: Any, samples: int, support: Any = constraints.real
) -> Expectation:
    """The NLL of an energy model, ``−mean_i log p̃(x_i) + log E_{z~q}[p̃(z)/q(z)]``.

    An objective program over ``(params, data)`` (``data`` a batch with leading
    axis). The log-partition term is a :func:`log_expectation` at
    ``"log_partition"`` over ``samples`` draws ``z ~ noise`` (site
    ``"log_partition/z"``), so the estimator is chosen at the call site. With
    noise independent of ``params``, every choice has gradient
    ``−mean ∇log p̃(x_i) + Σ_j c_j ∇log p̃(z_j)``, the coefficients ``c_j`` being
    the chosen estimator's (see :mod:`ppl.transforms._log_expectation`).

    ``noise`` must have batch shape ``()``, events shaped like one datum, and
    the model's ``support`` (default: the reals).

    A parameter that only shifts ``log p̃`` by a constant (NCE's learned ``c``)
    leaves the NLL unchanged, and :func:`naive` gives it an exactly zero
    gradient; :func:`compositional` and :func:`self_normalized_bound` give it a
    zero-mean noise (``1 − Ẑ/u_t``, ``1 − e^{−b} Ẑ``) that an adaptive optimizer
    turns into a random walk: keep such parameters out of the optimized set.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro.distributions as dist
        >>> from ppl import transforms as T
        >>> log_density = lambda theta, x: -0.5 * (x - theta) ** 2
        >>> nll = T.unnormalized_nll(log_density, dist.Normal(0.0, 2.0), samples=64)
        >>> est = nll.estimator(strategies={"log_partition": T.compositional(0.1)})
        >>> data = jnp.array([0.9, 1.2, 0.7])
        >>> state = est.init(0.0, data)
        >>> (value, grad), state = est.value_and_grad(jax.random.key(0), 0.0, data, state=state)
    """
    d = _check_noise(noise, "log_partition/z", support)

    def log_weight(params: Any) -> jax.Array:
        z = ppl.sample("z", d)
        return log_density(params, z) - d.log_prob(z)

    @expectation
    def negative_log_likelihood(params: Any, data: jax.Array) -> jax.Array:
        _check_data(d, data, "log_partition/z")
        add_cost(-jnp.mean(_per_datum(log_density, params, data)))
        return log_expectation("log_partition", log_weight, params, samples=samples)

    return negative_log_likelihood


def nce(
    log_density: LogDensity, noise: Any, noise_ratio: float = 1.0, support: Any = constraints.real
) -> Expectation:
    """Noise-contrastive estimation: ``mean_i softplus(−G(x_i)) + ν mean_j softplus(G(y_j))``.

    ``G(x) = log_density(params, x) − log q(x) − log ν``, with ``ν·B`` noise
    draws ``y_j ~ noise`` at address ``"noise"`` for a data batch of ``B``. The
    value and gradient are unbiased for the population loss
    ``E_data[softplus(−G)] + ν E_q[softplus(G)]`` (Gutmann & Hyvärinen, 2010),
    whose minimizer is the MLE's when the model family (with its learned
    log-normalizer ``c`` inside ``log_density``) contains the data distribution.
    Its landscape flattens as the noise moves away from the data.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro.distributions as dist
        >>> from ppl import transforms as T
        >>> log_density = lambda p, x: -0.5 * (x - p["theta"]) ** 2 - p["c"]
        >>> loss = T.nce(log_density, dist.Normal(0.0, 2.0))
        >>> params = {"theta": 0.0, "c": 0.0}
        >>> value, grad = loss.value_and_grad(jax.random.key(0), params, jnp.array([0.9, 1.2]))
    """
    if not noise_ratio > 0:
        raise ValueError(f"nce: noise_ratio must be positive, got {noise_ratio}")
    d = _check_noise(noise, "noise", support)
    log_ratio = math.log(noise_ratio)

    def logit(params: Any, x: jax.Array) -> jax.Array:
        return log_density(params, x) - d.log_prob(x) - log_ratio

    @expectation
    def noise_contrastive_loss(params: Any, data: jax.Array) -> jax.Array:
        _check_data(d, data, "noise")
        count = max(1, round(noise_ratio * data.shape[0]))
        y = ppl.sample("noise", d.expand((count,)))
        data_term = jnp.mean(jax.nn.softplus(-_per_datum(logit, params, data)))
        noise_term = jnp.mean(jax.nn.softplus(_per_datum(logit, params, y)))
        return data_term + noise_ratio * noise_term

    return noise_contrastive_loss
