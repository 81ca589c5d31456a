r"""MCMC-EM with a persistent chain: TRICE's estimators of ``∇ mean_m log p_θ(y_m | x_m)``.

Maximum marginal likelihood with a latent ``z`` per datum (a rationale, say) has the Fisher
identity ``∇ log p_θ(y | x) = E_{z ~ p_θ(z | x, y)}[∇ log p_θ(z, y | x)]``. A persistent
chain per datum (the *memory* ``z_m``) supplies the posterior sample: each step runs one
independence-MH step (:func:`~ppl.transforms.independence_mh`) from ``z_m`` to ``z'_m`` through
``normalize(model, y_m, mcmc(kernel, init=z_m))`` and differentiates ``log p_θ(z'_m, y_m | x_m)``.
At stationarity the estimate is unbiased; before it, it is the gradient of EM's Q function on
the memory.

With ``v_m = 1`` when the new memory satisfies the observation (``p(y_m | z'_m) > 0``), ``c̃_m``
the acceptance of the proposal ``z̃_m ~ q_θ`` and ``β_m = Σ_{j≠m} c̃_j / Σ_{j≠m} v_j`` (the
leave-one-out acceptance rate, :func:`~ppl.transforms.leave_one_out_mean` with weights ``v``):

* ``basic``: ``ĝ = (1/Σv) Σ_m v_m ∇ log p_θ(z'_m, y_m | x_m)``;
* ``control_variate``: ``ĝ − (1/Σv) Σ_m v_m β_m ∇ log q_θ(z̃_m)``. ``E[∇ log q_θ(z̃_m)] = 0`` and
  ``β_m`` never reads datum ``m``, so the term has mean zero whenever ``v_m`` does not depend
  on ``z̃_m`` (a memory that already satisfies the observation, as at stationarity). With the
  model's prior as the proposal and a 0/1 likelihood (TRICE), an accepted proposal gets weight
  ``1 − β_m`` and a rejected one ``−β_m``; the variance vanishes as the acceptance rate → 1;
* ``samples=L`` (subsampled control variate): the ``2M`` items (memories, weight
  ``w = v (1 − β c̃)``, sign +; proposals, ``w = v β (1 − c̃)``, sign −) are resampled ``L``
  times by systematic resampling with ``P(i) = w_i / Σ w`` (:func:`systematic_resample`) and
  ``ĝ = (Σw / Σv)(1/L) Σ_l sign ∇ log p(item_l)``. The expected count of item ``i`` is exactly
  ``L P(i)``, so its conditional expectation is the control-variate estimate. (The public
  TRICE notebook samples ``∝ exp(w)`` instead, which is biased; this does not.) This
  implementation still evaluates all ``2M`` log densities and weights them by the resampled
  counts: it has the subsampled estimator's distribution, not yet its saving of compute.

The ratio ``1/Σv`` is constant (``1/M``) at stationarity; before it (memories initialized from a
guide, some wrong) the estimator is a self-normalized, consistent one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from ppl.transforms._baselines import leave_one_out_mean
from ppl.transforms._estimator import positive_count
from ppl.transforms._expectation import Expectation, _check_gen, expectation, sim
from ppl.transforms._marginal import normalize
from ppl.transforms._mcmc import independence_mh, mcmc

import ppl
from ppl._choice_map import ChoiceMap
from ppl._gen import GenerativeFunction

sg = jax.lax.stop_gradient


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ChainStep:
    """The ``aux`` output of an :func:`mcmc_em` objective, one entry per datum.

    Attributes:
        state: the new memory ``z'`` (a choice map with a leading batch axis): pass it back as
            the next step's ``memory`` for these data.
        accepted: ``c̃``, whether each chain moved to its proposal.
        valid: ``v``, whether each new memory satisfies its observation.
        beta: ``β``, the leave-one-out acceptance rate (0 for ``basic``).
        proposal: the proposals ``z̃``.
    """

    state: ChoiceMap
    accepted: jax.Array
    valid: jax.Array
    beta: jax.Array
    proposal: ChoiceMap


def systematic_resample(u: jax.Array, weights: jax.Array, count: int) -> jax.Array:
    """``count`` indices drawn by systematic resampling with probabilities ``∝ weights``.

    Index ``l`` is the item whose cumulative-weight interval holds ``(u + l) / count · Σw``,
    ``u ~ Uniform(0, 1)`` shared by all ``l``; item ``i`` is drawn ``⌊L P(i)⌋`` or ``⌈L P(i)⌉``
    times and exactly ``L P(i)`` times in expectation over ``u``. Items of zero weight are never
    drawn (needs ``Σ weights > 0``).

    Example:
        >>> import jax.numpy as jnp
        >>> systematic_resample(jnp.array(0.5), jnp.array([1.0, 0.0, 3.0]), 4).tolist()
        [0, 2, 2, 2]
    """
    cdf = jnp.cumsum(weights)
    positions = (u + jnp.arange(count)) / count * cdf[-1]
    index = jnp.searchsorted(cdf, positions, side="right")
    last = jnp.max(jnp.where(weights > 0, jnp.arange(weights.shape[0]), 0))
    return jnp.minimum(index, last)


def _chains(model: GenerativeFunction, proposal: GenerativeFunction | None) -> GenerativeFunction:
    """One independence-MH step per datum from its memory: ``ppl.vmap`` over the batch."""
    kernel = independence_mh(proposal)

    @ppl.gen
    def chain(params: Any, datum: Any, observation: ChoiceMap, state: ChoiceMap) -> Any:
        return sim(normalize(model, observation, mcmc(kernel, state)), params, datum)

    return ppl.vmap(chain, in_axes=(None, 0, 0, 0))


@dataclasses.dataclass(frozen=True)
class _Step:
    """One MCMC-EM step's quantities (see the module docstring for the symbols)."""

    traces: Any
    accepted: jax.Array  # c̃
    valid: jax.Array  # v
    count: jax.Array  # Σv (at least 1)
    memory_log_prob: jax.Array  # log p_θ(z'_m, y_m | x_m), 0 where v_m = 0


def _step(
    chains: GenerativeFunction, params: Any, data: Any, observations: ChoiceMap, memory: ChoiceMap
) -> _Step:
    traces = ppl.sample("chains", chains, params, data, observations, memory)
    info = traces.retval
    size = info.accepted.shape[0]
    if size < 2:
        raise ValueError(f"mcmc_em: the batch needs at least 2 data, got {size}")
    valid = (info.log_weight > -jnp.inf).astype(jnp.float32)
    return _Step(
        traces,
        info.accepted.astype(jnp.float32),
        valid,
        jnp.maximum(jnp.sum(valid), 1.0),
        jnp.where(valid > 0, traces.score, 0.0),
    )


def _fisher(step: _Step) -> jax.Array:
    """``(1/Σv) Σ_m v_m log p_θ(z'_m, y_m | x_m)``: the basic estimator's value and gradient."""
    return jnp.sum(step.memory_log_prob) / step.count


def _control_variate(step: _Step, beta: jax.Array) -> jax.Array:
    """``−(1/Σv) Σ_m v_m β_m (log q_θ(z̃_m) − sg)``: zero-valued, mean-zero gradient."""
    log_q = step.traces.retval.proposal_log_prob
    return -jnp.sum(step.valid * beta * (log_q - sg(log_q))) / step.count


def _subsampled(step: _Step, beta: jax.Array, samples: int) -> jax.Array:
    """The control-variate estimate's gradient by ``samples`` systematic draws of the 2M items."""
    size = step.valid.shape[0]
    weights = jnp.concatenate(
        [step.valid * (1.0 - beta * step.accepted), step.valid * beta * (1.0 - step.accepted)]
    )
    sign = jnp.concatenate([jnp.ones(size), -jnp.ones(size)])
    log_probs = jnp.concatenate([step.memory_log_prob, step.traces.retval.proposal_log_prob])
    total = jnp.sum(weights)
    u = ppl.sample("subsample", dist.Uniform(0.0, 1.0))
    index = systematic_resample(u, jnp.where(total > 0, weights, 1.0), samples)
    counts = jnp.zeros(2 * size).at[index].add(1.0)
    coefficient = sg(total / step.count * counts / samples * sign)
    return jnp.sum(coefficient * (log_probs - sg(log_probs)))


def _chain_step(step: _Step, beta: jax.Array) -> ChainStep:
    info = step.traces.retval
    return ChainStep(step.traces.choices, info.accepted, step.valid > 0, beta, info.proposal)


def _em_objective(
    model: GenerativeFunction, proposal: GenerativeFunction | None, name: str, value_of: Any
) -> Expectation:
    _check_gen(model, name)
    chains = _chains(model, proposal)

    def objective(
        params: Any, data: Any, observations: ChoiceMap, memory: ChoiceMap
    ) -> tuple[Any, ChainStep]:
        step = _step(chains, params, data, observations, memory)
        value, beta = value_of(step)
        return value, _chain_step(step, beta)

    objective.__name__ = name
    return expectation(objective, has_aux=True)


def mcmc_em(model: GenerativeFunction, proposal: GenerativeFunction | None = None) -> Expectation:
    """The MCMC-EM objective over a batch of data, with TRICE's basic estimator (module docstring).

    The returned objective is called as ``objective(params, data, observations, memory)``:
    ``model(params, datum)`` is the per-datum generative function; ``data`` (any pytree),
    ``observations`` (a choice map, e.g. ``{"answer": y}``) and ``memory`` (the chains' states:
    a choice map of every latent choice) have a leading batch axis ``M ≥ 2``. It returns
    ``(value, ChainStep)`` (it is estimated with ``has_aux``): the value is
    ``(1/Σv) Σ_m v_m log p_θ(z'_m, y_m | x_m)`` and the :class:`ChainStep` holds the new memory.
    The chains use ``stop_gradient(params)``. ``proposal`` (default: the model's prior) is a
    generative function over the latents called with ``(observation, params, datum)``.
    :func:`mcmc_em_control_variate` adds TRICE's control variate.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, ppl
        >>> from ppl import transforms as T
        >>> @ppl.gen
        ... def model(logits, target):
        ...     z = ppl.sample("z", dist.Categorical(logits=logits))
        ...     ppl.sample("hit", dist.Delta((z <= target).astype(jnp.float32)))
        >>> objective = T.mcmc_em(model)
        >>> memory = {"z": jnp.zeros(4, jnp.int32)}
        >>> (value, step), grad, _ = objective.estimator().value_and_grad(
        ...     jax.random.key(0), jnp.zeros(5), jnp.arange(4), {"hit": jnp.ones(4)}, memory)
        >>> step.state["z"].shape, grad.shape
        ((4,), (5,))
    """
    return _em_objective(
        model, proposal, "mcmc_em", lambda step: (_fisher(step), jnp.zeros_like(step.accepted))
    )


def mcmc_em_control_variate(
    model: GenerativeFunction, samples: int | None = None, proposal: GenerativeFunction | None = None
) -> Expectation:
    """:func:`mcmc_em` with TRICE's leave-one-out control variate; with ``samples=L``, its
    subsampled form (systematic resampling of the ``2M`` items, module docstring)."""
    if samples is not None:
        samples = positive_count(samples, "mcmc_em_control_variate: samples")

    def value_of(step: _Step) -> tuple[jax.Array, jax.Array]:
        beta = leave_one_out_mean(step.accepted, weights=step.valid)
        if samples is None:
            return _fisher(step) + _control_variate(step, beta), beta
        return sg(_fisher(step)) + _subsampled(step, beta, samples), beta

    name = "mcmc_em_control_variate" + ("" if samples is None else f"_subsampled{samples}")
    return _em_objective(model, proposal, name, value_of)
