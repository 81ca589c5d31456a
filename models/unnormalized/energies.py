r"""Energy models: ``log_density(params, x) -> scalar`` for one datum ``x``.

Every model's ``params`` is a dict holding a scalar ``"c"``, NCE's learned log-normalizer, and
``log_density(params, x) = log p̃(x; θ) − c``. ``c`` cancels exactly in the maximum-likelihood
objective (it shifts ``−mean log p̃`` and ``log Z`` by opposite amounts), so the same function serves
every estimator.

* :func:`gaussian_mean`: ``log p̃(x; θ) = −(x − θ)²/2`` for scalar ``x``; ``params = {"theta", "c"}``.
* :func:`tilted_mlp`: ``log p̃(x; θ) = log N(x; μ, Σ) − E_θ(x)`` for ``x`` of shape ``(D,)``, with a fixed
  Gaussian base (the data-fitted Gaussian in the benchmarks) and ``E_θ`` an equinox MLP (SiLU
  activations) whose last layer starts at zero, so the model starts *at* the base. The energy grows at
  most linearly, the base decays quadratically: ``p̃`` is always normalizable. ``params = {"net", "c"}``
  where ``"net"`` is the array part of the MLP (``eqx.partition(mlp, eqx.is_array)``); the static part
  (activations, sizes) lives in the closure, so ``params`` is an array pytree for ``jax.grad``/optax.
  Used for the 2D densities (``D = 2``) and for digits (``D = 64``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class EnergyModel:
    """An unnormalized model: ``init(key) -> params`` and ``log_density(params, x) -> scalar``."""

    name: str
    datum_shape: tuple[int, ...]
    init: Callable[[jax.Array], Params]
    log_density: Callable[[Params, jax.Array], jax.Array]


def gaussian_mean(theta0: float = 0.0) -> EnergyModel:
    """The 1D Gaussian-mean model ``−(x − θ)²/2 − c``, starting at ``θ = theta0``, ``c = 0``."""

    def init(key: jax.Array) -> Params:
        del key
        return {"theta": jnp.asarray(theta0, jnp.float32), "c": jnp.zeros((), jnp.float32)}

    def log_density(params: Params, x: jax.Array) -> jax.Array:
        return -0.5 * (x - params["theta"]) ** 2 - params["c"]

    return EnergyModel("gaussian_mean", (), init, log_density)


def tilted_mlp(
    base_mean: np.ndarray, base_cov: np.ndarray, width: int = 64, depth: int = 2, name: str = "tilted_mlp"
) -> EnergyModel:
    """``log N(x; base_mean, base_cov) − E_θ(x) − c`` with ``E_θ`` an MLP ``D -> width^depth -> 1``."""
    mean = jnp.asarray(base_mean, jnp.float32)
    dim = int(mean.shape[0])
    base = dist.MultivariateNormal(mean, scale_tril=jnp.asarray(np.linalg.cholesky(base_cov), jnp.float32))

    def make(key: jax.Array) -> eqx.nn.MLP:
        mlp = eqx.nn.MLP(dim, "scalar", width, depth, activation=jax.nn.silu, key=key)
        last = mlp.layers[-1]
        zero = (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias))
        return eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp, zero)

    static = eqx.partition(make(jax.random.key(0)), eqx.is_array)[1]

    def init(key: jax.Array) -> Params:
        return {"net": eqx.partition(make(key), eqx.is_array)[0], "c": jnp.zeros((), jnp.float32)}

    def log_density(params: Params, x: jax.Array) -> jax.Array:
        energy = eqx.combine(params["net"], static)(x)
        return base.log_prob(x) - energy - params["c"]

    return EnergyModel(name, (dim,), init, log_density)
