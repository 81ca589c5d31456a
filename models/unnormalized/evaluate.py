r"""Normalizing an energy model for evaluation: exact grid in 2D, importance sampling beyond.

* :func:`grid_log_z` (2D, also 1D): ``log Z ≈ logsumexp_k log p̃(g_k) + log(cell area)`` over the
  cell centres ``g_k`` of an ``n × n`` grid on the box ``[lo, hi]²`` (default ``[−5, 5]²``, 400² cells
  of side 0.025; the 2D data sets lie within about ``[−4.5, 4.5]²``). Mass outside the box is
  neglected, so this is the normalizer of the model restricted to the box (the Gaussian base of
  :func:`~ppl.models.unnormalized.energies.tilted_mlp` keeps the outside mass small).
  ``test NLL = −mean log p̃(x_test) + log Z``.
* :func:`importance_log_z`: ``log Ẑ = logsumexp_j (log p̃(z_j) − log q(z_j)) − log N`` with
  ``z_j ~ q`` (the fitted Gaussian), evaluated in chunks (``lax.scan`` carrying running log-sum-exps),
  so memory is ``O(chunk)``. ``Ẑ`` is unbiased, so by Jensen ``E[log Ẑ] ≤ log Z``: a stochastic
  *lower* bound on ``log Z`` in expectation, and the NLL computed with it is biased low. Reported with
  the effective sample size ``(Σw)²/Σw²`` and the delta-method standard error
  ``sd(w)/(mean(w)√N)`` of ``log Ẑ`` (both unreliable when the ESS is small).

``log_density`` includes ``−c``; ``c`` cancels in every NLL computed here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

BOX = (-5.0, 5.0)
GRID = 400


def grid_points(box: tuple[float, float] = BOX, n: int = GRID, dim: int = 2) -> tuple[jax.Array, float]:
    """Cell centres of an ``n^dim`` grid on ``box^dim`` (shape ``(n^dim, dim)``, or ``(n,)`` for 1D) and
    the log cell volume."""
    lo, hi = box
    side = (hi - lo) / n
    axis = jnp.linspace(lo + side / 2, hi - side / 2, n, dtype=jnp.float32)
    if dim == 1:
        return axis, math.log(side)
    mesh = jnp.stack(jnp.meshgrid(*([axis] * dim), indexing="ij"), -1).reshape(-1, dim)
    return mesh, dim * math.log(side)


@functools.partial(jax.jit, static_argnames=("log_density", "box", "n", "dim", "chunk"))
def grid_log_z(
    log_density: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    box: tuple[float, float] = BOX,
    n: int = GRID,
    dim: int = 2,
    chunk: int = 16_384,
) -> jax.Array:
    """``log ∫_box p̃`` by the midpoint rule on an ``n^dim`` grid (evaluated ``chunk`` points at a time)."""
    points, log_cell = grid_points(box, n, dim)
    values = jax.lax.map(lambda x: log_density(params, x), points, batch_size=min(chunk, points.shape[0]))
    return jax.scipy.special.logsumexp(values) + log_cell


def grid_nll(
    log_density: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    test: jax.Array,
    box: tuple[float, float] = BOX,
    n: int = GRID,
) -> float:
    """Test NLL (nats per datum) with the grid normalizer."""
    test = jnp.asarray(test)
    dim = 1 if test.ndim == 1 else test.shape[1]
    log_z = grid_log_z(log_density, params, box, n, dim)
    return float(-jnp.mean(jax.vmap(log_density, in_axes=(None, 0))(params, test)) + log_z)


def importance_log_z(
    log_density: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    proposal: dist.Distribution,
    key: jax.Array,
    samples: int = 100_000,
    chunk: int = 10_000,
) -> dict[str, float]:
    """Importance estimate of ``log Z`` with ``proposal``: ``{"log_z", "ess", "se", "samples"}``.

    ``samples`` is rounded up to a multiple of ``chunk``.
    """
    chunk = min(chunk, samples)
    n_chunks = -(-samples // chunk)
    lse1, lse2 = _importance_sums(log_density, params, proposal, key, chunk, n_chunks)
    n = n_chunks * chunk
    lse1, lse2 = float(lse1), float(lse2)
    relative_var = max(math.exp(lse2 + math.log(n) - 2 * lse1) - 1.0, 0.0) if np.isfinite(lse1) else math.inf
    return {
        "log_z": lse1 - math.log(n),
        "ess": math.exp(2 * lse1 - lse2) if np.isfinite(lse1) else 0.0,
        "se": math.sqrt(relative_var / n),
        "samples": n,
    }


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _importance_sums(
    log_density: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    proposal: dist.Distribution,
    key: jax.Array,
    chunk: int,
    n_chunks: int,
) -> tuple[jax.Array, jax.Array]:
    """``(logsumexp log w, logsumexp 2 log w)`` over ``n_chunks × chunk`` draws of ``proposal``."""

    def body(carry: tuple[jax.Array, jax.Array], k: jax.Array) -> tuple[tuple[jax.Array, jax.Array], None]:
        z = proposal.sample(k, (chunk,))
        log_w = jax.vmap(log_density, in_axes=(None, 0))(params, z) - proposal.log_prob(z)
        lse1 = jnp.logaddexp(carry[0], jax.scipy.special.logsumexp(log_w))
        lse2 = jnp.logaddexp(carry[1], jax.scipy.special.logsumexp(2 * log_w))
        return (lse1, lse2), None

    start = (jnp.asarray(-jnp.inf), jnp.asarray(-jnp.inf))
    return jax.lax.scan(body, start, jax.random.split(key, n_chunks))[0]


def importance_nll(
    log_density: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    test: jax.Array,
    proposal: dist.Distribution,
    key: jax.Array,
    samples: int = 100_000,
    chunk: int = 10_000,
) -> dict[str, float]:
    """Test NLL with the importance ``log Ẑ`` (biased low in expectation).

    Returns ``{"nll", "log_z", "ess", "se", "samples"}``.
    """
    z = importance_log_z(log_density, params, proposal, key, samples, chunk)
    mean_log_p = float(jnp.mean(jax.vmap(log_density, in_axes=(None, 0))(params, jnp.asarray(test))))
    return {"nll": -mean_log_p + z["log_z"], **z}
