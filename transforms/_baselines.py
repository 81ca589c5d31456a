"""Baselines for score-function (REINFORCE) terms.

A baseline ``b`` turns the score term ``k(x) ∇ log p(x)`` into
``(k(x) − b) ∇ log p(x)``. It keeps the estimator unbiased whenever ``b`` is
independent of the site's own draw ``x`` given the past, since
``E[b ∇ log p(x)] = b ∇ Σ p = 0``. Every baseline here satisfies that:

- :func:`none`, :func:`constant`: fixed numbers;
- :func:`running_average`: a debiased exponential moving average of past
  downstream costs (stateful, Optax style);
- :func:`leave_one_out`: the mean downstream cost of the *other* particles of
  an estimator run with ``particles=K`` (VIMCO's and TRICE's control variate);
- :func:`learned`: a user function ``fn(params, *args)`` fitted by least squares
  to the downstream costs with its own Optax optimizer, inside the estimator
  state.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax


class Baseline(abc.ABC):
    """A baseline for score-function terms; subclass it for your own.

    ``value(state, args)`` is ``b`` for one step (``args``: the objective's arguments);
    ``stateful`` baselines keep ``init()``'s state in the estimator state and get
    ``update(state, downstream, args)`` after each step with that step's downstream costs;
    ``deferred`` ones (:func:`leave_one_out`) are computed by the estimator across particles.
    """

    stateful: ClassVar[bool] = False
    deferred: ClassVar[bool] = False

    def init(self) -> Any:
        return ()

    @abc.abstractmethod
    def value(self, state: Any, args: tuple) -> jax.Array:
        """``b``: it must not depend on the current draw of the site."""

    def update(self, state: Any, downstream: list[jax.Array], args: tuple) -> Any:
        return state


@dataclasses.dataclass(frozen=True)
class Constant(Baseline):
    """``b = c``; see :func:`constant` and :func:`none`."""

    c: float = 0.0

    def value(self, state: Any, args: tuple) -> jax.Array:
        return jnp.asarray(self.c)


def none() -> Baseline:
    """No baseline (``b = 0``)."""
    return Constant(0.0)


def constant(c: float) -> Baseline:
    """A fixed baseline ``b = c``."""
    try:
        return Constant(float(c))
    except (TypeError, jax.errors.ConcretizationTypeError) as e:
        raise TypeError(
            f"constant: the baseline must be a concrete number, got {type(c).__name__}; a traced "
            "value cannot be part of an estimator's configuration: use running_average() or "
            "learned(fn, params) for a baseline that changes with the data or the parameters"
        ) from e


@dataclasses.dataclass(frozen=True)
class RunningAverage(Baseline):
    """Debiased moving average of past downstream costs; see :func:`running_average`."""

    decay: float = 0.9
    stateful: ClassVar[bool] = True

    def init(self) -> Any:
        return {"average": jnp.zeros(()), "count": jnp.zeros((), jnp.int32)}

    def value(self, state: Any, args: tuple) -> jax.Array:
        count = state["count"]
        correction = 1.0 - self.decay ** jnp.maximum(count, 1).astype(jnp.float32)
        return jnp.where(count > 0, state["average"] / correction, 0.0)

    def update(self, state: Any, downstream: list[jax.Array], args: tuple) -> Any:
        mean = jnp.mean(jnp.concatenate([jnp.ravel(d) for d in downstream]))
        average = self.decay * state["average"] + (1.0 - self.decay) * mean
        return {"average": average, "count": state["count"] + 1}


def running_average(decay: float = 0.9) -> Baseline:
    """Debiased exponential moving average of the site's past downstream costs.

    ``b_t = m_t / (1 − decay**t)`` with ``m_t = decay·m_{t−1} + (1 − decay)·mean(k)``,
    updated after each step from that step's costs (so ``b`` never sees the
    current draw). Stateful: call ``estimator.init(*args)`` and pass ``state``.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"running_average: decay must be in [0, 1), got {decay}")
    return RunningAverage(float(decay))


@dataclasses.dataclass(frozen=True)
class LeaveOneOut(Baseline):
    """The other particles' mean downstream cost; see :func:`leave_one_out`."""

    deferred: ClassVar[bool] = True

    def value(self, state: Any, args: tuple) -> jax.Array:
        raise TypeError("leave_one_out has no value of its own: the estimator computes it across particles")


def leave_one_out() -> Baseline:
    """Mean downstream cost of the other ``K − 1`` particles (needs ``particles=K ≥ 2``).

    For particle ``k``: ``b_k = (Σ_j k_j − k_k) / (K − 1)``, independent of
    particle ``k``'s draws, hence unbiased.
    """
    return LeaveOneOut()


def leave_one_out_mean(values: jax.Array, axis: int = 0, weights: jax.Array | None = None) -> jax.Array:
    """``out[k] = mean of values[j] for j ≠ k`` along ``axis``; with ``weights``, the weighted
    mean ``Σ_{j≠k} weights_j values_j / Σ_{j≠k} weights_j`` (0 where the others weigh nothing).

    ``out[k]`` never reads ``values[k]`` or ``weights[k]``, which is what keeps a baseline
    built from it independent of particle (or datum) ``k``'s own draw. With weights it is
    TRICE's leave-one-out acceptance rate ``β_m = Σ_{j≠m} c̃_j / Σ_{j≠m} v_j`` (values ``c̃``,
    weights ``v``, where ``c̃_j = 1`` implies ``v_j = 1``).

    Example:
        >>> import jax.numpy as jnp
        >>> leave_one_out_mean(jnp.array([1.0, 2.0, 6.0])).tolist()
        [4.0, 3.5, 1.5]
        >>> leave_one_out_mean(jnp.array([1.0, 0.0, 1.0]), weights=jnp.array([1.0, 0.0, 1.0])).tolist()
        [1.0, 1.0, 1.0]
    """
    n = values.shape[axis]
    if n < 2:
        raise ValueError(f"leave_one_out_mean needs at least 2 entries along axis {axis}, got {n}")
    if weights is None:
        return (jnp.sum(values, axis=axis, keepdims=True) - values) / (n - 1)
    weights = jnp.broadcast_to(weights, values.shape)
    weighted = weights * values
    numerator = jnp.sum(weighted, axis=axis, keepdims=True) - weighted
    denominator = jnp.sum(weights, axis=axis, keepdims=True) - weights
    positive = denominator > 0
    return jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0), 0.0)


@dataclasses.dataclass(frozen=True, eq=False)
class Learned(Baseline):
    """``b = fn(params, *args)`` fitted to the downstream costs; see :func:`learned`."""

    fn: Callable[..., jax.Array]
    params: Any
    optimizer: optax.GradientTransformation
    stateful: ClassVar[bool] = True

    def init(self) -> Any:
        return {"params": self.params, "optimizer": self.optimizer.init(self.params)}

    def value(self, state: Any, args: tuple) -> jax.Array:
        return self.fn(state["params"], *args)

    def update(self, state: Any, downstream: list[jax.Array], args: tuple) -> Any:
        targets = jnp.concatenate([jnp.ravel(jax.lax.stop_gradient(d)) for d in downstream])

        def loss(params: Any) -> jax.Array:
            return jnp.mean((targets - self.fn(params, *args)) ** 2)

        grads = jax.grad(loss)(state["params"])
        updates, opt_state = self.optimizer.update(grads, state["optimizer"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "optimizer": opt_state}


def learned(
    fn: Callable[..., jax.Array],
    params: Any,
    optimizer: optax.GradientTransformation | None = None,
) -> Baseline:
    """A learned baseline ``b = fn(params, *args)`` on the estimator's arguments.

    After each step, ``params`` take one ``optimizer`` step (default
    ``optax.adam(1e-2)``) on the squared error between ``fn`` and that step's
    downstream costs; ``params`` and the optimizer state live in the estimator
    state. The objective's own gradient is untouched.
    """
    return Learned(fn, params, optimizer if optimizer is not None else optax.adam(1e-2))
