"""Weak-derivative (measure-valued) decompositions used by the ``mvd`` strategy.

For a parameter θ of p(x; θ), ∂θ p(x; θ) = c_θ (p⁺(x) − p⁻(x)) with p± probability
distributions, so ∂θ E_p[k(x)] = c_θ (E_{p⁺}[k] − E_{p⁻}[k]). Each function
returns, per scalar parameter array θ (batch-shaped, carrying gradients), the
constant c (batch-shaped) and coupled draws x⁺, x⁻ (batch-shaped); ``None`` for
x⁻ means p⁻ is absent (c·E_{p⁺}[k] is the whole derivative).

- Bernoulli(p), w.r.t. p: c = 1, p⁺ = δ₁, p⁻ = δ₀.
- Categorical(π), w.r.t. π_j: c = 1, p⁺ = δ_j (one entry per category).
- Normal(μ, σ), w.r.t. μ: c = 1/(σ√(2π)), x± = μ ± σR with R ~ Rayleigh(1).
- Normal(μ, σ), w.r.t. σ: c = 1/σ, p⁺ = μ + σ·(double-sided Maxwell), p⁻ = Normal(μ, σ).
- Poisson(λ), w.r.t. λ: c = 1, x⁺ = 1 + N, x⁻ = N with N ~ Poisson(λ).
- Geometric(p) (failures before the first success), w.r.t. p: c = 1/p,
  x⁺ = G₁, x⁻ = 1 + G₁ + G₂ with G₁, G₂ ~ Geometric(p).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as nd

Decomposition = list[tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]]


def _batch(d: nd.Distribution, x: Any) -> jax.Array:
    return jnp.broadcast_to(jnp.asarray(x), d.batch_shape)


def _bernoulli(d: nd.Bernoulli, key: jax.Array) -> Decomposition:
    p = _batch(d, d.probs)
    return [(p, jnp.ones_like(p), jnp.ones_like(p), jnp.zeros_like(p))]


def _categorical(d: nd.Categorical, key: jax.Array) -> Decomposition:
    probs = d.probs
    k = probs.shape[-1]
    out = []
    for j in range(k):
        theta = _batch(d, probs[..., j])
        out.append((theta, jnp.ones_like(theta), jnp.full(d.batch_shape, j, jnp.int32), None))
    return out


def _normal(d: nd.Normal, key: jax.Array) -> Decomposition:
    loc, scale = _batch(d, d.loc), _batch(d, d.scale)
    k1, k2, k3 = jax.random.split(key, 3)
    sg_loc, sg_scale = jax.lax.stop_gradient(loc), jax.lax.stop_gradient(scale)
    rayleigh = jnp.sqrt(-2.0 * jnp.log1p(-jax.random.uniform(k1, d.batch_shape)))
    maxwell = jnp.linalg.norm(jax.random.normal(k2, (*d.batch_shape, 3)), axis=-1)
    sign = jnp.where(jax.random.bernoulli(k3, 0.5, d.batch_shape), 1.0, -1.0)
    normal = jax.random.normal(jax.random.fold_in(k3, 1), d.batch_shape)
    return [
        (
            loc,
            1.0 / (sg_scale * math.sqrt(2.0 * math.pi)),
            sg_loc + sg_scale * rayleigh,
            sg_loc - sg_scale * rayleigh,
        ),
        (scale, 1.0 / sg_scale, sg_loc + sg_scale * sign * maxwell, sg_loc + sg_scale * normal),
    ]


def _poisson(d: nd.Poisson, key: jax.Array) -> Decomposition:
    rate = _batch(d, d.rate)
    n = jax.random.poisson(key, jax.lax.stop_gradient(rate)).astype(jnp.result_type(float))
    return [(rate, jnp.ones_like(rate), n + 1.0, n)]


def _geometric(d: Any, key: jax.Array) -> Decomposition:
    p = _batch(d, d.probs)
    sg_p = jax.lax.stop_gradient(p)
    k1, k2 = jax.random.split(key)

    def draw(k: jax.Array) -> jax.Array:
        u = jax.random.uniform(k, d.batch_shape, minval=jnp.finfo(jnp.float32).tiny)
        return jnp.floor(jnp.log(u) / jnp.log1p(-sg_p))

    g1, g2 = draw(k1), draw(k2)
    return [(p, 1.0 / sg_p, g1, 1.0 + g1 + g2)]


_RULES = {
    nd.BernoulliProbs: _bernoulli,
    nd.BernoulliLogits: _bernoulli,
    nd.CategoricalProbs: _categorical,
    nd.CategoricalLogits: _categorical,
    nd.Normal: _normal,
    nd.Poisson: _poisson,
    nd.GeometricProbs: _geometric,
    nd.GeometricLogits: _geometric,
}


def supported(d: nd.Distribution) -> bool:
    return type(d) in _RULES


def decompose(d: nd.Distribution, key: jax.Array) -> Decomposition:
    """The weak-derivative decomposition of ``d`` (see the module docstring)."""
    return _RULES[type(d)](d, key)


def supported_names() -> list[str]:
    return sorted({t.__name__ for t in _RULES})
