"""Reductions of an elimination: log-sum-exp, max-product, and sampling (its backward pass draws).

The derivative of a log-sum-exp elimination with respect to per-value tilts is a posterior
marginal; :func:`_first_max`'s is one MAP assignment; :func:`_sampled_logsumexp`'s is one joint
posterior draw (Gumbel-max at every reduction, reached in reverse elimination order).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ppl._choice_map import Address

__all__ = ["MAX_STATES", "Plan", "combine_key"]

#: The default bound on the joint values summed over in one element (their supports multiplied).
MAX_STATES = 65536


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one elimination shares: ``reduce`` (``"sum"``: log-sum-exp, ``"max"``: max-product,
    ``"sample"``), the bound on joint values per element and the program's name (for messages)."""

    reduce: str = "sum"
    max_states: int = MAX_STATES
    program: str = "the program"
    #: Filled while tracing: per summed-out address, ``(block axes, support size, value shape, dtype)``.
    found: dict[Address, tuple[tuple[int, ...], int, tuple[int, ...], Any]] | None = dataclasses.field(
        default=None, compare=False
    )

    @property
    def role(self) -> str:
        """How messages call a given value."""
        return f"the value given to {self.program}"

    def combine(self, scores: jax.Array, axis: int = 0, key: jax.Array | None = None) -> jax.Array:
        """Sum (log-sum-exp), max, or with ``reduce="sample"`` log-sum-exp whose derivative is a
        one-hot sample of the reduced axis ∝ ``exp(scores)`` (Gumbel-max with ``key``)."""
        if scores.shape[axis] == 1:  # one value: every reduction is the identity
            return jnp.squeeze(scores, axis)
        if self.reduce == "max":  # its derivative picks one maximizer (the first), never an average
            return _first_max(jnp.moveaxis(scores, axis, -1))
        if self.reduce == "sample":
            if key is None:
                raise ValueError("elimination with reduce='sample' needs a key")
            scores = jnp.moveaxis(scores, axis, -1)
            return _sampled_logsumexp(scores, jax.random.gumbel(key, scores.shape[-1:], scores.dtype))
        return jax.nn.logsumexp(scores, axis=axis)


@jax.custom_vjp
def _sampled_logsumexp(scores: jax.Array, noise: jax.Array) -> jax.Array:
    """``logsumexp(scores, -1)``; its VJP routes the cotangent to one entry, ``argmax(scores + noise)``.

    Back-propagated through an elimination, cotangents reach exactly the values of one joint draw
    from the posterior (ancestral sampling in reverse elimination order: forward filtering, backward
    sampling along chains), when ``noise`` is standard Gumbel.
    """
    return jax.nn.logsumexp(scores, axis=-1)


def _sampled_forward(scores: jax.Array, noise: jax.Array) -> tuple[jax.Array, Any]:
    return jax.nn.logsumexp(scores, axis=-1), (scores, noise)


def _sampled_backward(residuals: Any, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    scores, noise = residuals
    pick = jax.nn.one_hot(jnp.argmax(scores + noise, axis=-1), scores.shape[-1], dtype=scores.dtype)
    return g[..., None] * pick, jnp.zeros_like(noise)


_sampled_logsumexp.defvjp(_sampled_forward, _sampled_backward)


@jax.custom_vjp
def _first_max(scores: jax.Array) -> jax.Array:
    """``max(scores, -1)``; its VJP routes the cotangent to the first maximizer only, so that the
    derivative of a max-product elimination is one MAP assignment (Viterbi's backtracking) even on ties."""
    return jnp.max(scores, axis=-1)


def _first_max_forward(scores: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.max(scores, axis=-1), scores


def _first_max_backward(scores: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    pick = jax.nn.one_hot(jnp.argmax(scores, axis=-1), scores.shape[-1], dtype=scores.dtype)
    return (g[..., None] * pick,)


_first_max.defvjp(_first_max_forward, _first_max_backward)
#: fold_in data for the key of an element's or step's own sampled reduction.
_COMBINE = 0x7FFFFFFF


def combine_key(key: jax.Array | None) -> jax.Array | None:
    return None if key is None else jax.random.fold_in(key, _COMBINE)
