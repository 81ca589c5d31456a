"""``log_expectation``: a term log E[exp ℓ] inside an objective, with a chosen estimator.

The log of an expectation has no unbiased gradient estimator: for ``Ẑ`` the mean
of M weights ``w_j = exp(ℓ_j)``, ``E[∇ log Ẑ] ≠ ∇ log E[w]``. Three estimators
are offered, chosen per address at the call site like sample-site strategies::

    est = objective.estimator(strategies={"log_partition": T.compositional(0.1)})

Each gives the gradient ``Σ_j c_j ∇ℓ_j`` (pathwise) with its own coefficients ``c_j``,
plus, for the other sites inside the term, their strategies' terms for the cost
``M c_j``, the sample's weight on the estimator's scale (for a score-function site
``Σ_j (c_j − b_j/M) ∇ log q(z_j)``, ``b_j`` its baseline: none, a constant, or the
leave-one-out mean over the other samples):

- :func:`naive`: ``c_j = w_j / Σ_i w_i``, i.e. autodiff through ``log Ẑ``.
  Biased (by Jensen, O(1/M)); a reference only.
- :func:`compositional`: ``c_j = w_j / (M u_t)`` with the moving average
  ``u_t = (1 − γ) u_{t−1} + γ Ẑ_t`` kept in the estimator state (as ``log u``).
  This is MECO's (SCGD-style) estimator: biased at any step, consistent as the
  tracker settles (``u_t → Z``, small γ); its coefficients are bounded by 1/γ,
  so it does not overflow even when the proposal is far from the target.
- :func:`self_normalized_bound`: replaces ``log Z`` by the upper bound
  ``b + e^{−b} Z − 1 ≥ log Z`` (tight at ``b = log Z``), ``c_j = e^{ℓ_j − b}/M``,
  with ``b`` kept in the estimator state and moved after each step by a step on
  the same bound (a bounded mirror step by default, or an Optax optimizer).
  Value and gradient are *unbiased* for the bound at the current ``b``: the
  term's value is the bound, not ``log Ẑ``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from ppl.transforms._baselines import leave_one_out_mean
from ppl.transforms._estimator import positive_count
from ppl.transforms._ledger import BlockEntry, SiteEntry, join, split
from ppl.transforms._scope import EstimatorHandler, _cost_sum, per_element
from ppl.transforms._strategies import LogExpectationEstimator

from ppl._choice_map import Address, as_address, format_address
from ppl._handlers import current

sg = jax.lax.stop_gradient


def _log_mean_exp(x: jax.Array) -> jax.Array:
    return jax.nn.logsumexp(x) - math.log(x.size)


def _log_moving_average(state: Any, name: str, log_value: jax.Array, gamma: float) -> jax.Array:
    """``log((1 − γ) e^{state[name]} + γ e^{log_value})``, or ``log_value`` before the first update."""
    decayed = jnp.logaddexp(math.log1p(-gamma) + state[name], math.log(gamma) + log_value)
    return jnp.where(state["count"] > 0, decayed, log_value)


def _pooled(log_means: list[jax.Array]) -> jax.Array:
    """``log`` of the mean weight over every run of one step (equal sample counts)."""
    return _log_mean_exp(jnp.concatenate([jnp.ravel(m) for m in log_means]))


@dataclasses.dataclass(frozen=True)
class Naive(LogExpectationEstimator):
    """Autodiff through ``log Ẑ``: biased (Jensen); kept as the reference to beat."""

    def log_scale(self, state: Any, log_mean: jax.Array) -> jax.Array:
        return log_mean


@dataclasses.dataclass(frozen=True)
class Compositional(LogExpectationEstimator):
    """MECO: ``∇ log Z ≈ Σ_j w_j ∇ℓ_j / (M u_t)``, ``u_t`` a moving average of ``Ẑ``."""

    gamma: float = 0.1
    stateful = True

    def init(self) -> Any:
        return {"log_average": jnp.zeros(()), "count": jnp.zeros((), jnp.int32)}

    def _tracked(self, state: Any, log_mean: jax.Array) -> jax.Array:
        if self.gamma == 1.0:
            return log_mean
        return _log_moving_average(state, "log_average", log_mean, self.gamma)

    def log_scale(self, state: Any, log_mean: jax.Array) -> jax.Array:
        return sg(self._tracked(state, log_mean))

    def update(self, state: Any, log_means: list[jax.Array], args: tuple) -> Any:
        return {"log_average": self._tracked(state, _pooled(log_means)), "count": state["count"] + 1}


@dataclasses.dataclass(frozen=True)
class SelfNormalizedBound(LogExpectationEstimator):
    """``log Z ≤ b + e^{−b} Z − 1``, with ``b`` in the state, moved after each step.

    The coefficients use the ``b`` of the previous step, independent of the
    current draws, so value and gradient are unbiased for the bound at that ``b``.
    ``b`` then takes a step on the same bound: by default the mirror step
    ``e^{b'} = (1 − γ) e^{b} + γ Ẑ`` (to first order ``b' = b − γ ∂_b``, with
    ``∂_b = 1 − e^{−b} Ẑ``, but bounded for any ``Ẑ``), or a step of
    ``offset_optimizer`` on ``∂_b`` when one is given.
    """

    gamma: float = 0.01
    offset_optimizer: optax.GradientTransformation | None = None
    stateful = True

    def init(self) -> Any:
        offset = jnp.zeros(())
        state = {"offset": offset, "count": jnp.zeros((), jnp.int32)}
        if self.offset_optimizer is not None:
            state["opt_state"] = self.offset_optimizer.init(offset)
        return state

    def _offset(self, state: Any, log_mean: jax.Array) -> jax.Array:
        # Before the first update the offset starts at the first batch's log Ẑ.
        return sg(jnp.where(state["count"] > 0, state["offset"], log_mean))

    def log_scale(self, state: Any, log_mean: jax.Array) -> jax.Array:
        return self._offset(state, log_mean)

    def value(self, state: Any, log_mean: jax.Array) -> jax.Array:
        b = self._offset(state, log_mean)
        return b + jnp.expm1(log_mean - b)

    def update(self, state: Any, log_means: list[jax.Array], args: tuple) -> Any:
        pooled = _pooled(log_means)
        new = dict(state, count=state["count"] + 1)
        if self.offset_optimizer is None:
            new["offset"] = _log_moving_average(state, "offset", pooled, self.gamma)
            return new
        offset = jnp.where(state["count"] > 0, state["offset"], pooled)
        # ∂_b of the bound; the exponent is capped only to keep the optimizer finite.
        grad = -jnp.expm1(jnp.minimum(pooled - offset, 30.0))
        updates, new["opt_state"] = self.offset_optimizer.update(grad, state["opt_state"], offset)
        new["offset"] = optax.apply_updates(offset, updates)
        return new


def naive() -> LogExpectationEstimator:
    """Plain autodiff through the log of the minibatch mean (biased); see :class:`Naive`."""
    return Naive()


def compositional(gamma: float = 0.1) -> LogExpectationEstimator:
    """MECO's moving-average estimator (stateful); see :class:`Compositional`.

    ``gamma`` in (0, 1] is the tracker's step: small values track ``Z`` closely
    once settled (less bias) but follow a moving ``Z`` slowly. ``gamma = 1`` is
    :func:`naive`. Momentum on the gradient, as in the paper, is an optimizer
    choice: ``optax.chain(optax.ema(1 - beta, debias=False), optax.sgd(lr))``.
    """
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"compositional: gamma must be in (0, 1], got {gamma}")
    return Compositional(float(gamma))


def self_normalized_bound(
    gamma: float = 0.01, offset_optimizer: optax.GradientTransformation | None = None
) -> LogExpectationEstimator:
    """The unbiased-for-a-bound estimator (stateful); see :class:`SelfNormalizedBound`.

    ``b`` moves by the mirror step with rate ``gamma`` in (0, 1), or by
    ``offset_optimizer`` (an Optax optimizer on ``∂_b`` of the bound) when given.

    Caveat (measured in :mod:`ppl.models.unnormalized`): while ``b`` lags below
    ``log Z`` the coefficients ``e^{ℓ_j − b}/M`` sum to ``e^{log Ẑ − b} ≫ 1`` and
    the gradient pushes the model away from the noise. When ``log Z`` moves faster
    than ``b`` can follow (a model starting 6σ from the noise), training can
    settle far from the optimum, whatever the offset's step rule; the
    compositional estimator, whose coefficients are bounded, does not.
    """
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"self_normalized_bound: gamma must be in (0, 1), got {gamma}")
    return SelfNormalizedBound(float(gamma), offset_optimizer)


def log_expectation(
    address: str | Address, program: Callable[..., Any], *args: Any, samples: int
) -> jax.Array:
    """``log E[exp ℓ]`` inside an objective program, by the estimator chosen for ``address``.

    ``program(*args)`` is run ``samples`` times independently; its sample sites
    live at ``address/...`` and follow their strategies (any strategy that needs no
    continuation: ``reparam``, ``reinforce`` with no baseline, a constant or
    ``leave_one_out`` across the samples, or your own), and
    its added costs plus its return value are the log weight ``ℓ_j``. Returns
    ``log Ẑ``, ``Ẑ = mean_j exp ℓ_j`` (for :func:`self_normalized_bound`, the
    bound), carrying the chosen estimator's gradient.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, ppl
        >>> from ppl import transforms as T
        >>> def log_weight(theta):
        ...     z = ppl.sample("z", dist.Normal(0.0, 1.0))
        ...     return -0.5 * (z - theta) ** 2 + 0.5 * z**2
        >>> @T.expectation
        ... def log_partition(theta):
        ...     return T.log_expectation("log_Z", log_weight, theta, samples=16)
        >>> est = log_partition.estimator(strategies={"log_Z": T.compositional(0.1)})
        >>> state = est.init(1.0)
        >>> (value, grad), state = est.value_and_grad(jax.random.key(0), 1.0, state=state)
    """
    handler = current()
    if not isinstance(handler, EstimatorHandler):
        raise RuntimeError("log_expectation is only available inside an @expectation objective program")
    samples = positive_count(samples, f"log_expectation at '{address}': samples")
    local = as_address(address)
    handler.claim(local, "log_expectation")
    full = handler.base + handler._prefix + local
    where = f"log_expectation at address '{format_address(full)}'"
    config = dataclasses.replace(handler.config, particles=samples)
    keys = jax.random.split(handler.next_key(), samples)

    static: list[Any] = []

    def one(key: jax.Array) -> tuple[jax.Array, Any]:
        inner = EstimatorHandler(key, {}, config, in_block=where, base=full)
        with inner:
            ret = program(*args)
            inner.add_cost(ret, f"{where}: the program's return value (the log weight)")
        if inner.aux.deferred or inner.aux.stats:
            raise ValueError(
                f"{where}: nested objectives with leave-one-out or stateful baselines are not available in it"
            )
        arrays, entry_static = split(inner.entries)
        static.append(entry_static)
        return _cost_sum(inner.entries), arrays

    log_weights, arrays = jax.vmap(one)(keys)
    log_mean = sg(_log_mean_exp(log_weights))
    if config.plain:
        return log_mean
    estimator = config.resolve_log_expectation(full)
    state = config.estimator_state(full, estimator) if estimator.stateful else ()
    if estimator.stateful:
        handler.aux.stats.append((format_address(full), log_mean))
    # The samples' weights on the estimator's scale: W_j = exp(ℓ_j − log s), c_j = W_j / M.
    scaled = sg(jnp.exp(log_weights - estimator.log_scale(state, log_mean)))
    surrogate = jnp.sum(scaled * (log_weights - sg(log_weights))) / samples
    surrogate = surrogate + _site_terms(join(arrays, static[-1], full), scaled, config, where) / samples
    return sg(estimator.value(state, log_mean)) + surrogate


def _sites(entries: list[Any]) -> list[SiteEntry]:
    out: list[SiteEntry] = []
    for e in entries:
        if isinstance(e, SiteEntry):
            out.append(e)
        elif isinstance(e, BlockEntry):
            out.extend(_sites(e.entries))
    return out


def _site_terms(entries: list[Any], scaled: jax.Array, config: Any, where: str) -> jax.Array:
    """The strategies' terms of the sites inside the term, each with the cost ``W_j`` of its sample.

    ``entries`` carry the samples' axis first (and any block axes after it).
    """
    out = jnp.zeros(())
    for site in _sites(entries):
        strategy = site.strategy
        if strategy is None:
            continue
        cost = jnp.broadcast_to(
            scaled.reshape(scaled.shape + (1,) * (site.log_prob.ndim - 1)), site.log_prob.shape
        )
        baseline = strategy.baseline
        if baseline is not None and baseline.stateful:
            raise ValueError(
                f"address '{format_address(site.address)}' (inside {where}): stateful baselines are not "
                "available inside a log_expectation; use reinforce(), a constant or leave_one_out() there"
            )
        if baseline is not None and baseline.deferred:
            b = leave_one_out_mean(cost, axis=0)
        else:
            b = config.baseline_value(site.address, strategy)
        out = out + per_element(strategy, site, cost, b)
    return out
