r"""Chain-of-thought as a latent-variable program, and TRICE's gradient estimators over it.

The program (:func:`cot_model`) draws a rationale ``z ~ p_θ(z | x)``, either as one sample site
(:class:`~ppl.models.trice.sequence.Rationale`: the key/value-cache sampler, scored by one
teacher-forced pass; the default) or token by token (the transformer's
:data:`~ppl.models.trice.transformer.rationale_program`, sample sites inside ``ppl.scan``), and
observes ``correct = c(z, y)`` as a ``Delta``: the 0/1 likelihood
``p(y | z) = 1[z ends in y]``. Maximum marginal likelihood ``mean_n log p_θ(y_n | x_n)`` is then
``T.mcmc_em(cot_model(...))``: one persistent chain per training question (the memory), moved
by independence Metropolis–Hastings with the model itself as the proposal (accept iff the
proposal is correct), and TRICE's estimators from the transforms, not a hand-written gradient:
basic (``T.mcmc_em``), leave-one-out control variate (``T.mcmc_em_control_variate``) and
subsampled control variate (``T.mcmc_em_control_variate(..., samples=L)``).

Example:
    >>> import jax
    >>> from ppl.models.trice import tasks, transformer as tf, trice
    >>> params = tf.init(jax.random.key(0), tf.Config())
    >>> batch = tasks.make_split("chain-sum", 4, seed=0)
    >>> memory = trice.memory(tf.sample_rationales(jax.random.key(1), params, batch.hinted_prompt))
    >>> estimator = trice.estimator(trice.cot_model(), "control_variate")
    >>> (value, step), grad, _ = estimator.value_and_grad(
    ...     jax.random.key(2), params, trice.questions(batch), trice.observations(4), memory)
    >>> trice.rationales(step.state).shape
    (4, 9)
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from ppl.models.trice import sequence, tasks
from ppl.models.trice import transformer as tf

import ppl
from ppl import transforms as T

#: The observed site: ``c(z, y)`` as a float, observed as 1.
OBSERVED = "correct"
#: The estimators :func:`estimator` builds (``subsampled`` is the control variate, subsampled).
ESTIMATORS = ("basic", "control_variate", "subsampled")
#: How :func:`cot_model` samples the rationale: one site, or one site per token.
SITES = ("sequence", "tokens")


class Question(NamedTuple):
    """What the model reads per datum: the (unhinted) prompt and the answer ``y``."""

    prompt: Any
    answer: Any


def questions(split: tasks.Example) -> Question:
    """The :class:`Question` batch of a split (leading axis = questions)."""
    return Question(jnp.asarray(split.prompt), jnp.asarray(split.answer))


def observations(size: int) -> dict[str, jax.Array]:
    """``{correct: 1}`` for ``size`` questions."""
    return {OBSERVED: jnp.ones(size)}


def memory(rationales: jax.Array, sites: str = "sequence") -> dict[str, Any]:
    """The chains' state (a choice map) holding ``rationales`` ``(M, R)``, for :func:`cot_model`
    with ``sites``."""
    return {"rationale": jnp.asarray(rationales) if sites == "sequence" else tf.choice_map(rationales)}


def rationales(state: dict[str, Any]) -> jax.Array:
    """The rationales ``(M, R)`` of a chain state (either form of :func:`memory`)."""
    value = state["rationale"]
    return value["tokens"]["token"] if isinstance(value, dict) else value


def cot_model(frozen: tf.Params | None = None, sites: str = "sequence") -> ppl.GenerativeFunction:
    """``p_θ(z, c | x)``: the rationale, then ``correct ~ Delta(c(z, y))``.

    Called as ``model(params, question)``. With ``frozen`` (the frozen part of
    :func:`~ppl.models.trice.transformer.partition`), ``params`` is the trainable part and the
    network is ``combine(params, frozen)``: soft-prompt tuning differentiates the soft prompt
    only. ``sites``: ``"sequence"`` (one site, :class:`~ppl.models.trice.sequence.Rationale`)
    or ``"tokens"`` (the token-by-token program); the two are the same distribution.
    """
    if sites not in SITES:
        raise ValueError(f"unknown rationale sites {sites!r}; choose from {', '.join(SITES)}")

    @ppl.gen
    def model(params: tf.Params, question: Question) -> jax.Array:
        full = params if frozen is None else tf.combine(params, frozen)
        if sites == "sequence":
            z = ppl.sample("rationale", sequence.Rationale(full, question.prompt))
        else:
            z = ppl.sample("rationale", tf.rationale_program, full, question.prompt)
        ppl.sample(OBSERVED, dist.Delta(tasks.correct(z, question.answer).astype(jnp.float32)))
        return z

    return model


def estimator(model: ppl.GenerativeFunction, name: str, samples: int | None = None) -> T.Estimator:
    """TRICE's estimator ``name`` (:data:`ESTIMATORS`) of ``∇ mean log p_θ(y | x)`` over a batch.

    ``subsampled`` resamples ``samples`` (``L``; the notebook uses ``L = M``) of the ``2M`` memory
    and proposal items. Call it as
    ``estimator.value_and_grad(key, params, questions, observations, memory)``; it returns
    ``((value, ChainStep), grad, state)``: ascend ``grad`` and store ``ChainStep.state`` as the
    new memory of the batch (``state`` is the estimator's own, ``{}``: TRICE keeps no baseline).
    ``basic`` is ``T.mcmc_em(model)``, ``control_variate`` ``T.mcmc_em_control_variate(model)``
    and ``subsampled`` ``T.mcmc_em_control_variate(model, samples=samples)``.
    """
    if name not in ESTIMATORS:
        raise ValueError(f"unknown TRICE estimator {name!r}; choose from {', '.join(ESTIMATORS)}")
    if name == "basic":
        objective = T.mcmc_em(model)
    elif samples is None and name == "subsampled":
        raise ValueError("the subsampled TRICE estimator needs samples=L (e.g. the batch size)")
    else:
        objective = T.mcmc_em_control_variate(model, samples=samples if name == "subsampled" else None)
    return objective.estimator()


def gradient_variance(
    key: jax.Array,
    est: T.Estimator,
    params: Any,
    batch: Question,
    chain_state: dict[str, Any],
    redraws: int = 64,
) -> tuple[jax.Array, jax.Array]:
    """``(trace of the gradient's covariance, mean acceptance)`` over ``redraws`` proposal redraws
    at frozen ``params`` and memory ``chain_state`` (the benchmark's variance measure)."""
    return _variance_fn(est, redraws)(key, params, batch, chain_state)


@functools.cache
def _variance_fn(est: T.Estimator, redraws: int) -> Any:
    @jax.jit
    def variance(key: jax.Array, params: Any, batch: Question, chain_state: dict[str, Any]) -> Any:
        obs = observations(batch.answer.shape[0])

        def one(k: jax.Array) -> tuple[Any, jax.Array]:
            (_, step), grad, _ = est.value_and_grad(k, params, batch, obs, chain_state)
            return grad, jnp.mean(step.accepted.astype(jnp.float32))

        grads, accepted = jax.vmap(one)(jax.random.split(key, redraws))
        total = sum(jnp.sum(jnp.var(g, axis=0, ddof=1)) for g in jax.tree_util.tree_leaves(grads))
        return total, jnp.mean(accepted)

    return variance
