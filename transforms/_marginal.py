"""Approximate marginalization and normalization (GenSP-style) with SIR.

A :func:`marginal` of a generative function keeps some of its choices and
integrates the others out *by estimation*: sampling it returns the kept choices
with an unbiased estimate of the reciprocal of their marginal density, and its
density is the log of an unbiased estimate of the marginal density. A
:func:`normalize`\\ d model is an approximate posterior (sampling importance
resampling) with the same two estimates of its own density. Both are
generative functions, so objectives use them with :func:`~ppl.transforms.sim`
and :func:`~ppl.transforms.density` like any other; every random number they
draw is a sample site of the enclosing objective, with its own gradient
strategy (hidden addresses ``_sir``, ``_resample``).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from ppl.transforms._estimator import positive_count
from ppl.transforms._expectation import _check_gen, _handler, _run_frame, density, generate, sim
from ppl.transforms._numerics import log_mean_exp
from ppl.transforms._resolution import Config
from ppl.transforms._scope import EstimatorHandler, record, run_scope
from ppl.transforms._strategies import auto

import ppl
from ppl._choice_map import Address, ChoiceMap, as_address, flatten, format_address, merge, subtree, unflatten
from ppl._gen import GenerativeFunction, Trace
from ppl._handlers import Handler


class Inference(abc.ABC):
    """How :func:`normalize` samples (and estimates the density of) a posterior inside objectives.

    Implement :meth:`sim_posterior` and :meth:`density_posterior` for a new inference
    algorithm; :class:`SIR` and :class:`~ppl.transforms.MCMC` are the built-in ones.
    """

    @abc.abstractmethod
    def sim_posterior(
        self, posterior: Normalized, handler: EstimatorHandler, args: tuple
    ) -> tuple[ChoiceMap, Any, jax.Array]:
        """``(latent choices, return value, score)`` of one draw from ``posterior``."""

    @abc.abstractmethod
    def density_posterior(
        self, posterior: Normalized, handler: EstimatorHandler, choices: ChoiceMap, args: tuple
    ) -> jax.Array:
        """The log of an unbiased estimate of the posterior's density at ``choices``."""


@dataclasses.dataclass(frozen=True)
class SIR(Inference):
    """Sampling importance resampling with ``particles`` particles.

    ``proposal``: ``None`` for the program's own (internal) proposal, i.e. the
    discarded choices drawn from the program with the kept ones fixed; or a
    generative function over the discarded (latent) choices, called with
    ``(kept_choices, *args)`` for :func:`marginal` and ``(observations, *args)``
    for :func:`normalize`.
    """

    particles: int
    proposal: GenerativeFunction | None = None

    def sim_posterior(
        self, posterior: Normalized, handler: EstimatorHandler, args: tuple
    ) -> tuple[ChoiceMap, Any, jax.Array]:
        """Resample one of ``K`` proposal particles ``∝ w_k`` (site ``_resample``)."""
        latents, retvals, log_weights = posterior.particles(args, self.particles)
        index = ppl.sample(handler.hidden_address("_resample"), dist.Categorical(logits=log_weights))
        chosen = jax.tree_util.tree_map(lambda v: v[index], latents)
        retval = jax.tree_util.tree_map(lambda v: v[index], retvals)
        joint = density(posterior.model, merge(posterior.observations, chosen), *args)
        return chosen, retval, joint - log_mean_exp(log_weights)

    def density_posterior(
        self, posterior: Normalized, handler: EstimatorHandler, choices: ChoiceMap, args: tuple
    ) -> jax.Array:
        """``log p(z, obs) − log Ẑ`` with ``z`` as the first of the ``K`` particles."""
        with handler.hidden_scope("_normalized_density"):
            log_weights = posterior.log_weight(choices, args)[None]
            if self.particles > 1:
                others = posterior.particles(args, self.particles - 1)[2]
                log_weights = jnp.concatenate([log_weights, others])
            joint = density(posterior.model, merge(posterior.observations, choices), *args)
            return joint - log_mean_exp(log_weights)


def sir(particles: int, proposal: GenerativeFunction | None = None) -> SIR:
    """SIR inference with ``particles`` particles; see :class:`SIR`."""
    particles = positive_count(particles, "sir: particles")
    if proposal is not None:
        _check_gen(proposal, "sir's proposal")
    return SIR(particles, proposal)


def _split(choices: ChoiceMap, keep: tuple[Address, ...]) -> tuple[dict, dict]:
    kept, rest = {}, {}
    for a, v in flatten(choices).items():
        (kept if any(a[: len(k)] == k for k in keep) else rest)[a] = v
    return kept, rest


class _EstimatedDensity(GenerativeFunction, metaclass=abc.ABCMeta):
    """A generative function whose density is estimated; runs only inside objectives
    (or standalone through :meth:`simulate` and :meth:`estimate_logpdf`)."""

    def invoke(self, handler: Handler, addr: Address, args: tuple) -> Any:
        if not isinstance(handler, EstimatorHandler):
            raise TypeError(
                f"{self!r} has an estimated density: use it with sim/density inside an "
                "@expectation objective, or call .simulate(key, ...) / .estimate_logpdf(key, ...)"
            )
        base = handler._prefix + addr
        constrained = subtree(handler.observed, base)
        saved_frames, saved_prefix = handler.frames, handler._prefix
        handler.frames, handler._prefix = [], base
        try:
            if constrained:  # generate with these choices given: weight by the density estimate
                for a in constrained:
                    handler.observed.pop(base + a)
                try:
                    choices, retval = unflatten(constrained), None
                    score = weight = self.density_in_objective(handler, choices, args)
                finally:
                    handler.observed.update({base + a: v for a, v in constrained.items()})
            else:
                choices, retval, score = self.sim_in_objective(handler, args)
                weight = None
        finally:
            handler.frames, handler._prefix = saved_frames, saved_prefix
        flat = {base + a: v for a, v in flatten(choices).items()}
        record(handler.frames, flat, score, weight, lambda selection: score)
        return retval

    @abc.abstractmethod
    def sim_in_objective(self, handler: EstimatorHandler, args: tuple) -> tuple[ChoiceMap, Any, jax.Array]:
        """``(kept choices, return value, score)`` with ``exp(-score)`` unbiased for ``1/density``."""

    @abc.abstractmethod
    def density_in_objective(self, handler: EstimatorHandler, choices: ChoiceMap, args: tuple) -> jax.Array:
        """The log of an unbiased estimate of the density at ``choices``."""

    def assess(self, choices: ChoiceMap, *args: Any) -> tuple[jax.Array, Any]:
        raise TypeError(
            f"{self!r} has an estimated density, which needs random numbers: use "
            ".estimate_logpdf(key, choices, *args), or density(...) inside an objective"
        )

    def generate(self, key: jax.Array, constraints: ChoiceMap, *args: Any) -> tuple[Trace, jax.Array]:
        raise TypeError(f"{self!r} has an estimated density: generate is not available")

    def simulate(self, key: jax.Array, *args: Any) -> Trace:
        """Sample the kept choices; ``score`` is ``-log`` of the reciprocal-density estimate."""
        box: list[Trace] = []

        def program() -> jax.Array:
            box.append(sim(self, *args))
            return jnp.zeros(())

        run_scope(program, (), key, {}, Config({}, auto(), 1, plain=True))
        return box[0]

    def estimate_logpdf(self, key: jax.Array, choices: ChoiceMap, *args: Any) -> jax.Array:
        """The log of an unbiased estimate of the density at ``choices``."""
        return run_scope(
            lambda: density(self, choices, *args), (), key, {}, Config({}, auto(), 1, plain=True)
        ).value


class Marginal(_EstimatedDensity):
    """``g`` with only the ``keep`` choices; the others integrated out by SIR.

    With particles ``u_1..u_K`` of the discarded choices from the proposal ``q``
    and weights ``w_k = g(x, u_k) / q(u_k; x)``:

    * ``sim``: ``(x, u_1) ~ g`` jointly, ``u_2..u_K ~ q``; ``score = log(mean_k w_k)``,
      so ``exp(-score)`` is an unbiased estimate of ``1 / g(x)``;
    * ``density(x)``: ``u_1..u_K ~ q``; ``log(mean_k w_k)``, the log of an unbiased
      estimate of ``g(x) = ∫ g(x, u) du``.

    With the internal proposal (``q`` = the program with ``x`` fixed) the weight
    is the density of the kept sites given the others.
    """

    def __init__(self, g: GenerativeFunction, keep: tuple[Address, ...], inference: SIR):
        self.g, self.keep, self.inference = g, keep, inference
        super().__init__(g.fn)

    def __repr__(self) -> str:
        kept = ", ".join(format_address(a) for a in self.keep)
        return f"<marginal of {self.g!r} over {kept}>"

    def _particle_weights(self, kept: dict, args: tuple, n: int) -> jax.Array:
        proposal = self.inference.proposal
        g = self.g
        kept_map = unflatten(kept)

        @ppl.gen
        def particle() -> jax.Array:
            if proposal is None:
                return generate(g, kept_map, *args)[1]
            tr = sim(proposal, kept_map, *args)
            return density(g, merge(kept_map, tr.choices), *args) - tr.score

        handler = _handler("marginal")
        return ppl.sample(handler.hidden_address("_sir"), ppl.vmap(particle, in_axes=None, axis_size=n))

    def sim_in_objective(self, handler: EstimatorHandler, args: tuple) -> tuple[ChoiceMap, Any, jax.Array]:
        trace, _, kept_lp = _run_frame(handler, self.g, args, select=self.keep)
        kept, rest = _split(trace.choices, self.keep)
        self._check_kept(kept, "address")
        proposal = self.inference.proposal
        if proposal is None:
            first = kept_lp
        else:
            first = trace.score - density(proposal, unflatten(rest), unflatten(kept), *args)
        log_weights = first[None]
        if self.inference.particles > 1:
            others = self._particle_weights(kept, args, self.inference.particles - 1)
            log_weights = jnp.concatenate([log_weights, others])
        return unflatten(kept), trace.retval, log_mean_exp(log_weights)

    def density_in_objective(self, handler: EstimatorHandler, choices: ChoiceMap, args: tuple) -> jax.Array:
        kept = flatten(choices)
        extra = sorted(a for a in kept if not any(a[: len(k)] == k for k in self.keep))
        if extra:
            raise ValueError(f"{self!r}: density got address '{format_address(extra[0])}', which is not kept")
        self._check_kept(kept, "density: no value for")
        with handler.hidden_scope("_marginal_density"):
            return log_mean_exp(self._particle_weights(kept, args, self.inference.particles))

    def _check_kept(self, kept: dict, what: str) -> None:
        for k in self.keep:
            if not any(a[: len(k)] == k for a in kept):
                if what == "address":
                    raise ValueError(
                        f"{self!r}: address '{format_address(k)}' is never sampled by {self.g!r}"
                    )
                raise ValueError(f"{self!r}: {what} kept address '{format_address(k)}'")


def marginal(g: GenerativeFunction, keep: Sequence[str | Address] | str, inference: Any = None) -> Any:
    """The marginal of ``g`` over the ``keep`` addresses, with the rest estimated out.

    ``inference`` defaults to ``sir(1)``; with :func:`~ppl.transforms.exact` the rest (sites
    of finite support) is summed out exactly instead (:class:`~ppl.transforms.ExactMarginal`).
    ELBO over ``marginal(q, keep, sir(1))`` is hierarchical VI (HVI); IWELBO(1) over
    ``sir(m)`` is IWHVI(m), and IWELBO(n) over ``sir(m)`` is DIWHVI(n, m).

    Example:
        >>> import jax, numpyro.distributions as dist, ppl
        >>> from ppl import transforms as T
        >>> @ppl.gen
        ... def family(scale):
        ...     u = ppl.sample("u", dist.Normal(0.0, 1.0))
        ...     ppl.sample("x", dist.Normal(u, scale))
        >>> q = T.marginal(family, keep=["x"], inference=T.sir(8))
        >>> trace = q.simulate(jax.random.key(0), 0.5)
        >>> sorted(trace.choices)
        ['x']
    """
    _check_gen(g, "marginal")
    keep_list = [keep] if isinstance(keep, str | tuple) else list(keep)
    if not keep_list:
        raise ValueError("marginal: keep at least one address")
    inference = sir(1) if inference is None else inference
    from ppl.transforms._exact import Exact, ExactMarginal  # _exact builds on this module

    if isinstance(inference, Exact):
        return ExactMarginal(g, tuple(as_address(k) for k in keep_list), inference)
    if not isinstance(inference, SIR):
        raise TypeError(f"marginal: inference must be sir(K), sir(K, proposal) or exact(), got {inference!r}")
    return Marginal(g, tuple(as_address(k) for k in keep_list), inference)


class Normalized(_EstimatedDensity):
    """The posterior of ``model`` given ``observations``, approximated by ``inference``
    (:class:`SIR`, or MCMC: :func:`~ppl.transforms.mcmc`; any :class:`Inference`).

    With particles ``z_k`` from the proposal ``q`` and weights
    ``w_k = p(z_k, obs) / q(z_k)``, ``Ẑ = mean_k w_k`` (an unbiased estimate of
    ``p(obs)``), SIR gives:

    * ``sim``: resample ``z = z_j`` with ``j ~ Categorical(w)`` (site ``_resample``);
      ``score = log p(z, obs) - log Ẑ``, and ``exp(-score)`` is an unbiased
      estimate of the reciprocal of the SIR density of ``z``;
    * ``density(z)``: ``z_1 = z``, ``z_2..z_K ~ q``; ``log p(z, obs) - log Ẑ``, the log
      of an unbiased estimate of the SIR density at ``z``.

    As ``K`` grows the SIR distribution tends to the exact posterior.
    """

    def __init__(self, model: GenerativeFunction, observations: ChoiceMap, inference: Inference):
        self.model, self.observations, self.inference = model, observations, inference
        #: The observed addresses.
        self.observed: tuple[Address, ...] = tuple(flatten(observations))
        super().__init__(model.fn)

    def __repr__(self) -> str:
        return f"<normalized {self.model!r}>"

    @property
    def proposal(self) -> GenerativeFunction | None:
        """The inference's proposal (``None``: the model's own prior, run with the observations fixed)."""
        return getattr(self.inference, "proposal", None)

    def latents(self, choices: ChoiceMap) -> dict[Address, Any]:
        """The latent (unobserved) entries of a choice map of the model, flattened."""
        return {a: v for a, v in flatten(choices).items() if a not in self.observed}

    def particles(self, args: tuple, n: int) -> tuple[ChoiceMap, Any, jax.Array]:
        """``n`` proposal particles (sample sites of the objective): stacked latent choices,
        return values and log weights ``log p(z_k, obs) − log q(z_k)``."""
        model, obs, proposal = self.model, self.observations, self.proposal

        @ppl.gen
        def particle() -> tuple[ChoiceMap, Any, jax.Array]:
            if proposal is None:
                trace, weight = generate(model, obs, *args)
                return unflatten(self.latents(trace.choices)), trace.retval, weight
            tr = sim(proposal, obs, *args)
            joint = density(model, merge(obs, tr.choices), *args)
            return tr.choices, None, joint - tr.score

        handler = _handler("normalize")
        return ppl.sample(handler.hidden_address("_sir"), ppl.vmap(particle, in_axes=None, axis_size=n))

    def log_weight(self, latents: ChoiceMap, args: tuple) -> jax.Array:
        """``log w(z) = log p(z, obs) − log q(z)`` of given latents, as a particle of the proposal."""
        if self.proposal is not None:
            joint = density(self.model, merge(self.observations, latents), *args)
            return joint - density(self.proposal, latents, self.observations, *args)
        # Internal proposal: replay the latents, weight = log density of the observations.
        handler = _handler("normalize")
        replay = flatten(merge(self.observations, latents))
        trace, _, observed_lp = _run_frame(handler, self.model, args, observed=replay, select=self.observed)
        missing = sorted(set(flatten(trace.choices)) - set(replay))
        if missing:
            raise ValueError(f"{self!r}: density: no value for address '{format_address(missing[0])}'")
        return observed_lp

    def sim_in_objective(self, handler: EstimatorHandler, args: tuple) -> tuple[ChoiceMap, Any, jax.Array]:
        return self.inference.sim_posterior(self, handler, args)

    def density_in_objective(self, handler: EstimatorHandler, choices: ChoiceMap, args: tuple) -> jax.Array:
        return self.inference.density_posterior(self, handler, choices, args)


def normalize(
    model: GenerativeFunction, observations: ChoiceMap, inference: Inference | None = None
) -> Normalized:
    """The approximate posterior of ``model``'s other choices given ``observations``.

    ``inference`` defaults to ``sir(1)`` (the prior, or the proposal). Use it as a
    sampler (``sim``), as a target density inside objectives (``density``), or
    standalone (``simulate``, ``estimate_logpdf``). With ``mcmc(kernel, init)`` it is a
    chain step from ``init`` (a sampler only, not differentiated; no density estimate;
    ``sim``'s ``retval`` is the :class:`~ppl.transforms.Transition`).

    Example:
        >>> import jax, numpyro.distributions as dist, ppl
        >>> from ppl import transforms as T
        >>> @ppl.gen
        ... def model():
        ...     z = ppl.sample("z", dist.Normal(0.0, 1.0))
        ...     ppl.sample("x", dist.Normal(z, 0.5))
        >>> posterior = T.normalize(model, {"x": 1.0}, T.sir(100))
        >>> float(posterior.simulate(jax.random.key(0)).choices["z"]) > -5.0
        True
    """
    _check_gen(model, "normalize")
    if not flatten(observations):
        raise ValueError("normalize: give at least one observed address")
    inference = sir(1) if inference is None else inference
    if not isinstance(inference, Inference):
        raise TypeError(
            f"normalize: inference must be sir(K), sir(K, proposal), mcmc(kernel, init) or another "
            f"Inference, got {inference!r}"
        )
    return Normalized(model, observations, inference)
