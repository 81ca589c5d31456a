"""The objective library: variational objectives written as ordinary objective programs.

Every objective here is a short ``@expectation`` program over a *model* ``p``
and a *guide* (variational family) ``q``, both generative functions called as
``p(params, *args)`` and ``q(params, *args)``, and is called as::

    objective(params, observations, *args)

``params`` is one pytree shared by the model and the guide (each reads its own
part), the differentiated argument of every estimator; ``observations`` is a
choice map merged into every guide sample before the model's density is
evaluated; ``args`` are further data for both programs. All values are
"higher is better" (lower bounds on ``log p(observations)``, or ``-KL``).
Pick per-site strategies at the call site, as for any objective::

    est = T.iwelbo(model, guide, 5).estimator()
    value, grad, _ = est.value_and_grad(key, {"model": theta, "guide": phi}, data)

Notation: ``z_k ~ q`` are ``K`` independent guide samples and
``log w_k = log p(x, z_k) - log q(z_k)``; ``w̃_k = w_k / Σ_j w_j``.
The particles are one ``ppl.vmap`` block: under the address ``particles`` for
``iwelbo`` and ``renyi`` (choose their strategies as ``"particles/z"``), at the
guide's own addresses for ``vimco``, ``wake_p``, ``wake_q`` and ``forward_kl``
(whose guide samples carry no gradient). So ``enum``/``mvd`` apply to ``elbo`` only.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from ppl.transforms._baselines import leave_one_out_mean
from ppl.transforms._estimator import positive_count
from ppl.transforms._expectation import (
    Expectation,
    density,
    expectation,
    resolved_strategies,
    sim,
    stop_gradient,
)
from ppl.transforms._marginal import marginal, sir
from ppl.transforms._numerics import log_mean_exp

import ppl
from ppl._choice_map import ChoiceMap, format_address, merge
from ppl._gen import GenerativeFunction

sg = jax.lax.stop_gradient


def _stop(tree: Any) -> Any:
    return stop_gradient(tree)


def _estimated(g: GenerativeFunction) -> bool:
    """Whether ``g``'s density is estimated with sample sites of the objective (SIR marginals, normalize)."""
    return getattr(g, "density_in_objective", None) is not None and not getattr(g, "exact_density", False)


def _check_exact_density(guide: GenerativeFunction, what: str) -> None:
    """STL, DReG and the per-particle objectives re-evaluate ``log q``: it must be exact."""
    if _estimated(guide):
        raise ValueError(
            f"{what} needs the guide's exact log density, but {guide!r} has an estimated one "
            "(a marginal or normalize); use elbo or iwelbo with it"
        )


def _check_pathwise(what: str) -> None:
    """Every guide site of the particle block must carry its gradient by its path (DReG's identity)."""
    for address, strategy in resolved_strategies(("particles",)).items():
        if not strategy.pathwise:
            raise ValueError(
                f"{what} needs reparameterized guide sites; address '{format_address(address)}' uses "
                f"{type(strategy).__name__}: use iwelbo(...) (its strategies' gradient) there"
            )


def _named(objective: Expectation, name: str) -> Expectation:
    objective.fn.__name__ = objective.__name__ = name
    return objective


def _particles(
    model: GenerativeFunction,
    guide: GenerativeFunction,
    params: Any,
    observations: ChoiceMap,
    args: tuple,
    particles: int,
) -> tuple[ChoiceMap, jax.Array, jax.Array]:
    """``K`` guide samples (stacked choices) with ``log p(x, z_k)`` and ``log q(z_k)``."""

    @ppl.gen
    def particle() -> tuple[ChoiceMap, jax.Array, jax.Array]:
        trace = sim(guide, params, *args)
        return trace.choices, density(model, merge(observations, trace.choices), params, *args), trace.score

    return ppl.sample("particles", ppl.vmap(particle, in_axes=None, axis_size=particles))


def _assess_each(
    g: GenerativeFunction, choices: ChoiceMap, params: Any, args: tuple, extra: ChoiceMap = None
) -> jax.Array:
    """``log g(choices_k)`` for each stacked particle ``k`` (deterministic)."""
    if _estimated(g):
        raise ValueError(
            f"{g!r} has an estimated density, which draws sample sites of the objective: it cannot be "
            "evaluated particle by particle here; use elbo or iwelbo with it (or marginal(..., exact()))"
        )
    extra = extra or {}
    return jax.vmap(lambda c: density(g, merge(extra, c), params, *args))(choices)


def _guide_samples(guide: GenerativeFunction, params: Any, args: tuple, particles: int) -> ChoiceMap:
    """``K`` guide samples drawn with stopped parameters (no pathwise or strategy gradient)."""
    return sim(ppl.vmap(guide, in_axes=None, axis_size=particles), params, *args, differentiate=False).choices


def elbo(model: GenerativeFunction, guide: GenerativeFunction) -> Expectation:
    """The evidence lower bound ``E_q[log p(x, z) - log q(z)]``; each site's strategy, unbiased.

    Example:
        >>> import jax, numpyro.distributions as dist, ppl
        >>> from ppl import transforms as T
        >>> @ppl.gen
        ... def model(params):
        ...     z = ppl.sample("z", dist.Normal(0.0, 1.0))
        ...     ppl.sample("x", dist.Normal(z, 1.0))
        >>> @ppl.gen
        ... def guide(params):
        ...     ppl.sample("z", dist.Normal(params["mu"], 0.7))
        >>> est = T.elbo(model, guide).estimator()
        >>> value, grad, _ = est.value_and_grad(jax.random.key(0), {"mu": 0.5}, {"x": 1.0})
    """

    @expectation
    def objective(params: Any, observations: ChoiceMap, *args: Any) -> jax.Array:
        trace = sim(guide, params, *args)
        return density(model, merge(observations, trace.choices), params, *args) - trace.score

    return _named(objective, "elbo")


def elbo_stl(model: GenerativeFunction, guide: GenerativeFunction) -> Expectation:
    """The ELBO with the sticking-the-landing gradient (Roeder et al. 2017).

    ``log q`` is evaluated with stopped parameters, dropping the term ``-E_q[∇ log q] = 0``:
    unbiased under any strategy, and exactly zero for reparameterized guides when ``q`` is
    the posterior. Needs the guide's exact density.
    """
    _check_exact_density(guide, "elbo_stl")

    @expectation
    def objective(params: Any, observations: ChoiceMap, *args: Any) -> jax.Array:
        trace = sim(guide, params, *args)
        log_p = density(model, merge(observations, trace.choices), params, *args)
        return log_p - density(guide, trace.choices, _stop(params), *args)

    return _named(objective, "elbo_stl")


def iwelbo(model: GenerativeFunction, guide: GenerativeFunction, particles: int) -> Expectation:
    """The importance-weighted bound IWELBO(K) = ``E[log (1/K) Σ_k w_k]`` (IWAE).

    Nondecreasing in ``K``; ``K = 1`` is the ELBO. The gradient is each site's strategy
    applied to the bound: unbiased. See :func:`iwelbo_dreg` and :func:`iwelbo_stl`.
    """
    particles = positive_count(particles, "iwelbo: particles")

    @expectation
    def objective(params: Any, observations: ChoiceMap, *args: Any) -> jax.Array:
        _, log_p, log_q = _particles(model, guide, params, observations, args, particles)
        return log_mean_exp(log_p - log_q)

    return _named(objective, f"iwelbo({particles})")


def iwelbo_stl(model: GenerativeFunction, guide: GenerativeFunction, particles: int) -> Expectation:
    """IWELBO(K) with ``log q`` at stopped parameters: unbiased for ``K = 1`` only, biased for
    ``K > 1`` (Tucker et al. 2018, section 3)."""
    particles = positive_count(particles, "iwelbo_stl: particles")
    _check_exact_density(guide, "iwelbo_stl")

    @expectation
    def objective(params: Any, observations: ChoiceMap, *args: Any) -> jax.Array:
        choices, log_p, _ = _particles(model, guide, params, observations, args, particles)
        return log_mean_exp(log_p - _assess_each(guide, choices, _stop(params), args))

    return _named(objective, f"iwelbo_stl({particles})")


def iwelbo_dreg(model: GenerativeFunction, guide: GenerativeFunction, particles: int) -> Expectation:
    """IWELBO(K) with the doubly reparameterized gradient (Tucker et al. 2018).

    Guide gradient ``Σ_k w̃_k² ∂log w_k/∂z_k · ∂z_k/∂φ``, model gradient
    ``Σ_k w̃_k ∇θ log p(x, z_k)``; unbiased for reparameterized guides (every guide site's
    strategy must be pathwise), zero at the exact posterior.
    """
    particles = positive_count(particles, "iwelbo_dreg: particles")
    _check_exact_density(guide, "iwelbo_dreg")

    @expectation
    def objective(params: Any, observations: ChoiceMap, *args: Any) -> jax.Array:
        choices, log_p, log_q = _particles(model, guide, params, observations, args, particles)
        _check_pathwise(f"iwelbo_dreg({particles})")
        log_q_stopped = _assess_each(guide, choices, _stop(params), args)
        # Through z only with squared weights (guide); through θ with weights (model).
        path = _assess_each(model, choices, _stop(params), args, observations) - log_q_stopped
        direct = _assess_each(model, sg(choices), params, args, observations)
        weights = sg(jax.nn.softmax(log_p - log_q))
        value = log_mean_exp(sg(log_p - log_q))
        return value + jnp.sum(weights**2 * (path - sg(path))) + jnp.sum(weights * (direct - sg(direct)))

    return _named(objective, f"iwelbo_dreg({particles})")


def vimco(model: GenerativeFunction, guide: GenerativeFunction, particles: int) -> Expectation:
    """IWELBO(K) with VIMCO's per-particle leave-one-out baselines (Mnih & Rezende 2016).

    The guide's choices are treated as non-reparameterized: the guide gradient is
    ``Σ_k (L - L_{-k}) ∇φ log q(z_k) - Σ_k w̃_k ∇φ log q(z_k)``, where ``L`` is the
    bound's estimate and ``L_{-k}`` the same with ``log w_k`` replaced by the mean
    of the other log weights (geometric-mean baseline, from the core's
    :func:`leave_one_out_mean`). Unbiased for the gradient of IWELBO(K); needs
    ``K ≥ 2``.
    """
    particles = positive_count(particles, "vimco: particles")
    _check_exact_density(guide, "vimco")
    if particles < 2:
        raise ValueError(f"vimco needs particles >= 2 for its leave-one-out baselines, got {particles}")

    @expectation
    def objective(params: Any, observations: ChoiceMap, *args: Any) -> jax.Array:
        choices = _guide_samples(guide, params, args, particles)
        log_q = _assess_each(guide, choices, params, args)
        log_p = _assess_each(model, choices, params, args, observations)
        log_w = log_p - log_q
        bound = log_mean_exp(log_w)
        others = sg(leave_one_out_mean(log_w, axis=0))
        held_out = jax.vmap(lambda k: log_mean_exp(sg(log_w).at[k].set(others[k])))(jnp.arange(particles))
        signal = sg(bound - held_out)
        return bound + jnp.sum(signal * (log_q - sg(log_q)))

    return _named(objective, f"vimco({particles})")


def renyi(model: GenerativeFunction, guide: GenerativeFunction, alpha: float, particles: int) -> Expectation:
    """The Rényi (variational Rényi) bound ``E[1/(1-α) log (1/K) Σ_k w_k^(1-α)]``.

    ``α = 0`` is IWELBO(K); ``α → 1`` tends to the ELBO (``α = 1`` gives it).
    The gradient (by each site's strategy) is unbiased for the gradient of this
    Monte Carlo objective, which for ``α ∉ {0, 1}`` is itself a biased estimate
    of the Rényi divergence bound (Li & Turner 2016).
    """
    particles = positive_count(particles, "renyi: particles")
    if not isinstance(alpha, int | float) or alpha < 0:
        raise ValueError(f"renyi: alpha must be a number >= 0, got {alpha!r}")

    @expectation
    def objective(params: Any, observations: ChoiceMap, *args: Any) -> jax.Array:
        _, log_p, log_q = _particles(model, guide, params, observations, args, particles)
        log_w = log_p - log_q
        if alpha == 1.0:
            return jnp.mean(log_w)
        return log_mean_exp((1.0 - alpha) * log_w) / (1.0 - alpha)

    return _named(objective, f"renyi({alpha}, {particles})")


def wake_p(model: GenerativeFunction, guide: GenerativeFunction, particles: int) -> Expectation:
    """Reweighted wake-sleep, wake phase for the model (Bornschein & Bengio 2015).

    Value: the IWELBO(K) estimate of ``log p(x)``. Gradient (through the model's
    density only; the guide's samples and density are stopped):
    ``Σ_k w̃_k ∇θ log p(x, z_k)``, the self-normalized estimate of
    ``∇θ log p(x) = E_{p(z|x)}[∇θ log p(x, z)]``: biased for finite ``K``, consistent as
    ``K → ∞``.
    """
    particles = positive_count(particles, "wake_p: particles")
    _check_exact_density(guide, "wake_p")

    @expectation
    def objective(params: Any, observations: ChoiceMap, *args: Any) -> jax.Array:
        choices = _guide_samples(guide, params, args, particles)
        log_q = sg(_assess_each(guide, choices, params, args))
        log_p = _assess_each(model, choices, params, args, observations)
        return log_mean_exp(log_p - log_q)

    return _named(objective, f"wake_p({particles})")


def _self_normalized(model, guide, particles, params, observations, args):
    choices = _guide_samples(guide, params, args, particles)
    log_q = _assess_each(guide, choices, params, args)
    log_p = sg(_assess_each(model, choices, params, args, observations))
    log_w = log_p - sg(log_q)
    return log_p, log_q, log_w, sg(jax.nn.softmax(log_w))


def wake_q(model: GenerativeFunction, guide: GenerativeFunction, particles: int) -> Expectation:
    """Reweighted wake-sleep, wake phase for the guide.

    Value ``Σ_k w̃_k log q(z_k)``; gradient (through the guide's density only)
    ``Σ_k w̃_k ∇φ log q(z_k)``, the self-normalized estimate of
    ``∇φ E_{p(z|x)}[log q(z)] = -∇φ KL(p(z|x) ‖ q)``: biased for finite ``K``,
    consistent as ``K → ∞``.
    """
    particles = positive_count(particles, "wake_q: particles")
    _check_exact_density(guide, "wake_q")

    @expectation
    def objective(params: Any, observations: ChoiceMap, *args: Any) -> jax.Array:
        _, log_q, _, weights = _self_normalized(model, guide, particles, params, observations, args)
        return jnp.sum(weights * log_q)

    return _named(objective, f"wake_q({particles})")


def forward_kl(model: GenerativeFunction, guide: GenerativeFunction, particles: int) -> Expectation:
    """``-KL(p(z|x) ‖ q)`` by self-normalized importance sampling with ``K`` guide samples.

    Value ``Σ_k w̃_k (log q(z_k) - log p(x, z_k) + log Ẑ)`` with ``Ẑ = (1/K) Σ_k w_k``;
    gradient (through the guide's density only) that of :func:`wake_q`. Biased for finite
    ``K`` (self-normalized), consistent as ``K → ∞``.
    """
    particles = positive_count(particles, "forward_kl: particles")
    _check_exact_density(guide, "forward_kl")

    @expectation
    def objective(params: Any, observations: ChoiceMap, *args: Any) -> jax.Array:
        log_p, log_q, log_w, weights = _self_normalized(model, guide, particles, params, observations, args)
        log_posterior = log_p - log_mean_exp(log_w)
        return jnp.sum(weights * (log_q - log_posterior))

    return _named(objective, f"forward_kl({particles})")


def hvi(
    model: GenerativeFunction,
    guide: GenerativeFunction,
    keep: Any,
    proposal: GenerativeFunction | None = None,
) -> Expectation:
    """Hierarchical VI: the ELBO over ``marginal(guide, keep, sir(1, proposal))``.

    ``E[log p(x, z) + log r(u | z) - log q(z, u)]`` with ``r`` the proposal for the
    auxiliary choices ``u`` (default: the guide's own, i.e. ``q(u)``). A lower
    bound on the ELBO of the exact marginal family; unbiased gradient.
    """
    return elbo(model, marginal(guide, keep, sir(1, proposal)))


def iwhvi(
    model: GenerativeFunction,
    guide: GenerativeFunction,
    keep: Any,
    inner: int,
    proposal: GenerativeFunction | None = None,
) -> Expectation:
    """IWHVI(m): the ELBO over ``marginal(guide, keep, sir(m))`` (Sobolev & Vetrov 2019).

    Nondecreasing in ``m``, tending to the ELBO of the exact marginal family.
    """
    return elbo(model, marginal(guide, keep, sir(inner, proposal)))


def diwhvi(
    model: GenerativeFunction,
    guide: GenerativeFunction,
    keep: Any,
    outer: int,
    inner: int,
    proposal: GenerativeFunction | None = None,
) -> Expectation:
    """DIWHVI(n, m): IWELBO(n) over ``marginal(guide, keep, sir(m))``."""
    return iwelbo(model, marginal(guide, keep, sir(inner, proposal)), outer)
