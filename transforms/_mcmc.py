"""MCMC inference for :func:`~ppl.transforms.normalize`: a persistent chain as the posterior.

``normalize(model, observations, mcmc(kernel, init=state))`` is the posterior of ``model``'s
latent choices given ``observations``, sampled by running ``kernel`` from the chain's current
``state`` (the latent choices it holds). ``sim`` of it inside an objective returns the chain's
next state, whose law tends to the posterior as the chain mixes and *is* the posterior once the
chain is stationary (a persistent chain, as in persistent contrastive divergence or TRICE).

The sampler is an E-step: it is not differentiated. Its arguments enter under
``stop_gradient``, so the gradient of an objective that uses the new state ``z'`` flows only
through what the objective computes from ``z'`` with live parameters, for example its
``trace.score = log p_θ(z', observations)``. That is the Fisher identity
``∇ log p_θ(y) = E_{z ~ p_θ(z | y)}[∇ log p_θ(z, y)]``: unbiased at stationarity, and the
gradient of EM's Q function at the current parameters. Unlike SIR, MCMC gives no estimate of
the posterior's density: ``density`` of such a posterior is an error, and ``trace.score`` is
the *unnormalized* posterior log density ``log p(z', observations)``.

Kernel: :func:`independence_mh` (independence Metropolis–Hastings). All its random numbers
(the proposal's choices, the acceptance uniform) are sample sites of the enclosing objective
under hidden addresses.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from ppl.transforms._expectation import _check_gen, _run_frame, density, generate, sim, stop_gradient
from ppl.transforms._marginal import Inference, Normalized
from ppl.transforms._scope import EstimatorHandler

import ppl
from ppl._choice_map import ChoiceMap, flatten, format_address, merge, unflatten
from ppl._gen import GenerativeFunction

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class IndependenceMH:
    """Independence Metropolis–Hastings; see :func:`independence_mh`."""

    proposal: GenerativeFunction | None = None


def independence_mh(proposal: GenerativeFunction | None = None) -> IndependenceMH:
    """The independence Metropolis–Hastings kernel.

    From state ``z`` it proposes ``z̃ ~ q`` independently of ``z`` and moves to ``z̃`` with
    probability ``min(1, w(z̃) / w(z))``, ``w(z) = p(z, y) / q(z)``; ``p(· | y)`` is invariant.
    ``proposal`` ``None`` is the model's own prior (the program run with the observations
    fixed), so ``w(z) = p(y | z)``; with a 0/1 likelihood (``c(z, y)``) the model terms cancel
    and the chain moves iff the proposal satisfies the observation, TRICE's kernel. A
    proposal is a generative function over the latent choices called with
    ``(observations, *args)``, as for :func:`~ppl.transforms.sir`.

    States of zero likelihood: a state with ``w(z) = 0`` (an initial memory that misses the
    answer) moves to any proposal with ``w(z̃) > 0``; a proposal with ``w(z̃) = 0`` is never
    accepted.
    """
    if proposal is not None:
        _check_gen(proposal, "independence_mh's proposal")
    return IndependenceMH(proposal)


@dataclasses.dataclass(frozen=True)
class MCMC(Inference):
    """MCMC inference from the chain state ``init``; see :func:`mcmc`."""

    kernel: IndependenceMH
    init: ChoiceMap
    steps: int = 1

    @property
    def proposal(self) -> GenerativeFunction | None:
        return self.kernel.proposal

    def sim_posterior(
        self, posterior: Normalized, handler: EstimatorHandler, args: tuple
    ) -> tuple[ChoiceMap, Any, jax.Array]:
        """``steps`` kernel steps from ``init``: the new state, its :class:`Transition`, its score."""
        return transition(posterior, handler, args)

    def density_posterior(
        self, posterior: Normalized, handler: EstimatorHandler, choices: ChoiceMap, args: tuple
    ) -> jax.Array:
        raise ValueError(
            f"{posterior!r}: MCMC inference gives no estimate of the posterior's density; use "
            "sir(K) inference for density, or the model's unnormalized density(model, ...)"
        )


def mcmc(kernel: IndependenceMH, init: ChoiceMap, steps: int = 1) -> MCMC:
    """MCMC inference for :func:`~ppl.transforms.normalize`: ``steps`` kernel steps from ``init``.

    ``init`` is the chain's current state, a choice map of every latent choice of the model
    (a persistent chain passes its last state in, as an argument of the objective). Use the
    new state ``trace.choices`` of ``sim`` as the next call's ``init``.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, ppl
        >>> from ppl import transforms as T
        >>> @ppl.gen
        ... def model(logits):
        ...     z = ppl.sample("z", dist.Categorical(logits=logits))
        ...     ppl.sample("even", dist.Delta((z % 2).astype(jnp.float32)))
        >>> posterior = T.normalize(model, {"even": 0.0}, T.mcmc(T.independence_mh(), {"z": 2}))
        >>> trace = posterior.simulate(jax.random.key(0), jnp.zeros(5))
        >>> int(trace.choices["z"]) % 2
        0
    """
    if not isinstance(kernel, IndependenceMH):
        raise TypeError(f"mcmc: kernel must be independence_mh(...), got {kernel!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"mcmc: steps must be a positive int, got {steps!r}")
    if not flatten(init):
        raise ValueError("mcmc: init must hold the chain's state, a choice map of the latent choices")
    return MCMC(kernel, init, steps)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Transition:
    """What one kernel step did; the ``retval`` of ``sim`` of an MCMC posterior.

    Attributes:
        proposal: the proposed latent choices ``z̃`` (of the last step).
        accepted: whether the chain moved to ``z̃``.
        log_weight: ``log w(z')`` of the new state (``-inf``: it does not satisfy the
            observations, e.g. a memory that was never replaced).
        proposal_log_weight: ``log w(z̃)``.
        proposal_log_prob: ``log q_θ(z̃)``, the proposal's log density with *live* arguments,
            for score-function control variates: ``E_q[∇ log q_θ(z̃)] = 0``.
    """

    proposal: ChoiceMap
    accepted: jax.Array
    log_weight: jax.Array
    proposal_log_weight: jax.Array
    proposal_log_prob: jax.Array


def _propose(normalized: Normalized, handler: EstimatorHandler, args: tuple) -> tuple[dict, jax.Array]:
    """``z̃ ~ q`` (under ``stop_gradient`` arguments) and ``log w(z̃)``."""
    model, obs, proposal = normalized.model, normalized.observations, normalized.proposal
    with handler.hidden_scope("_mh"):
        if proposal is None:
            trace, log_weight = generate(model, obs, *args)
            return normalized.latents(trace.choices), log_weight
        tr = sim(proposal, obs, *args)
        return flatten(tr.choices), density(model, merge(obs, tr.choices), *args) - tr.score


def _state_log_weight(
    normalized: Normalized, handler: EstimatorHandler, latents: dict, args: tuple
) -> jax.Array:
    """``log w(z)`` of a given state (its choices replayed)."""
    with handler.hidden_scope("_mh_state"):
        return normalized.log_weight(unflatten(latents), args)


def _proposal_log_prob(
    normalized: Normalized, handler: EstimatorHandler, latents: dict, args: tuple
) -> jax.Array:
    """``log q(z̃)`` with the given (live) arguments."""
    proposal, obs = normalized.proposal, normalized.observations
    if proposal is not None:
        return density(proposal, unflatten(latents), obs, *args)
    with handler.hidden_scope("_mh_score"):
        replay = flatten(merge(obs, unflatten(latents)))
        return _run_frame(handler, normalized.model, args, observed=replay, select=tuple(latents))[2]


def _check_state(normalized: Normalized, state: dict, proposed: dict) -> None:
    missing = sorted(set(proposed) - set(state))
    extra = sorted(set(state) - set(proposed))
    if missing or extra:
        what = (
            f"has no value for '{format_address(missing[0])}'"
            if missing
            else (f"has address '{format_address(extra[0])}', which is not a latent choice")
        )
        raise ValueError(f"{normalized!r}: the chain state (mcmc init) {what}")
    for a, v in proposed.items():
        if jnp.shape(state[a]) != jnp.shape(v):
            raise ValueError(
                f"{normalized!r}: the chain state at '{format_address(a)}' has shape "
                f"{jnp.shape(state[a])}, the model samples shape {jnp.shape(v)}"
            )


def transition(
    normalized: Normalized, handler: EstimatorHandler, args: tuple
) -> tuple[ChoiceMap, Transition, Any]:
    """Run the kernel ``steps`` times from ``init``: ``(new state, Transition, score)``."""
    frozen = stop_gradient(args)
    state = flatten(normalized.inference.init)
    state_log_weight = None
    for _ in range(normalized.inference.steps):
        proposed, proposal_log_weight = _propose(normalized, handler, frozen)
        _check_state(normalized, state, proposed)
        if state_log_weight is None:
            state_log_weight = _state_log_weight(normalized, handler, state, frozen)
        u = ppl.sample(handler.hidden_address("_accept"), dist.Uniform(0.0, 1.0))
        # min(1, w̃ / w) in log space; a zero-likelihood state moves to any proposal that has one.
        possible = proposal_log_weight > -jnp.inf
        ratio = proposal_log_weight - jnp.where(possible, state_log_weight, 0.0)
        accepted = possible & ((state_log_weight == -jnp.inf) | (jnp.log(u) < ratio))
        state = {a: jnp.where(accepted, proposed[a], v) for a, v in state.items()}
        state_log_weight = jnp.where(accepted, proposal_log_weight, state_log_weight)
    choices = unflatten(state)
    info = Transition(
        proposal=unflatten(proposed),
        accepted=accepted,
        log_weight=sg(state_log_weight),
        proposal_log_weight=sg(proposal_log_weight),
        proposal_log_prob=_proposal_log_prob(normalized, handler, proposed, args),
    )
    score = density(normalized.model, merge(normalized.observations, choices), *args)
    return choices, info, score
