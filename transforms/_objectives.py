"""The objective library: variational objectives written as ordinary objective programs.

Every objective here is a short ``@expectation`` program over a *model* ``p``
and a *guide* (variational family) ``q``, both generative functions, and is
called with three arguments::

    objective(model_args, guide_args, observations)

``model_args`` and ``guide_args`` are tuples passed to ``p`` and ``q``;
``observations`` is a choice map merged into every guide sample before the
model's density is evaluated. All values are "higher is better" (lower bounds
on ``log p(observations)``, or ``-KL``). Pick the differentiated arguments and
per-site strategies at the call site, as for any objective::

    est = T.iwelbo(model, guide, 5).estimator(argnums=(0, 1))
    value, (model_grad, guide_grad) = est.value_and_grad(key, (theta,), (phi,), data)

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
from ppl.transforms._expectation import Expectation, density, expectation, sim
from ppl.transforms._ledger import BlockEntry, SiteEntry
from ppl.transforms._marginal import _log_mean_exp, marginal, sir
from ppl.transforms._strategies import Reparam

import ppl
from ppl._choice_map import ChoiceMap, format_address, merge
from ppl._gen import GenerativeFunction
from ppl._handlers import current

sg = jax.lax.stop_gradient
_GRADIENTS = ("standard", "stl", "dreg")


def _stop(tree: Any) -> Any:
    return jax.tree_util.tree_map(sg, tree)


def _check_exact_density(guide: GenerativeFunction, gradient: str) -> None:
    """STL, DReG and the per-particle objectives re-evaluate ``log q``: it must be exact."""
    if gradient != "standard" and getattr(guide, "density_in_objective", None) is not None:
        what = "this objective" if gradient == "per-particle" else f"gradient={gradient!r}"
        raise ValueError(
            f"{what} needs the guide's exact log density, but {guide!r} has an estimated one"
            + ("" if gradient == "per-particle" else "; use gradient='standard'")
        )


def _check_reparameterized(what: str) -> None:
    """Every guide site of the last particle block must be reparameterized (DReG's identity)."""
    handler = current()
    block = handler.entries[-1] if handler is not None and handler.entries else None
    for site in _sites(block.entries if isinstance(block, BlockEntry) else []):
        if site.strategy is not None and not isinstance(site.strategy, Reparam):
            raise ValueError(
                f"{what} needs reparameterized guide sites; address '{format_address(site.address)}' "
                f"uses {type(site.strategy).__name__.lower()}: use gradient='standard' there"
            )


def _sites(entries: list[Any]) -> list[SiteEntry]:
    out: list[SiteEntry] = []
    for e in entries:
        if isinstance(e, SiteEntry):
            out.append(e)
        elif isinstance(e, BlockEntry):
            out.extend(_sites(e.entries))
    return out


def _named(objective: Expectation, name: str) -> Expectation:
    objective.fn.__name__ = objective.__name__ = name
    return objective


def _check(particles: int, gradient: str, allowed: tuple[str, ...]) -> None:
    if not isinstance(particles, int) or particles < 1:
        raise ValueError(f"particles must be a positive int, got {particles!r}")
    if gradient not in allowed:
        raise ValueError(f"gradient must be one of {allowed}, got {gradient!r}")


def _particles(
    model: GenerativeFunction,
    guide: GenerativeFunction,
    model_args: tuple,
    guide_args: tuple,
    observations: ChoiceMap,
    particles: int,
) -> tuple[ChoiceMap, jax.Array, jax.Array]:
    """``K`` guide samples (stacked choices) with ``log p(x, z_k)`` and ``log q(z_k)``."""

    @ppl.gen
    def particle() -> tuple[ChoiceMap, jax.Array, jax.Array]:
        trace = sim(guide, *guide_args)
        return trace.choices, density(model, merge(observations, trace.choices), *model_args), trace.score

    return ppl.sample("particles", ppl.vmap(particle, in_axes=None, axis_size=particles))


def _assess_each(
    g: GenerativeFunction, choices: ChoiceMap, args: tuple, extra: ChoiceMap = None
) -> jax.Array:
    """``log g(choices_k)`` for each stacked particle ``k`` (deterministic)."""
    extra = extra or {}
    return jax.vmap(lambda c: density(g, merge(extra, c), *args))(choices)


def elbo(model: GenerativeFunction, guide: GenerativeFunction, gradient: str = "standard") -> Expectation:
    """The evidence lower bound ``E_q[log p(x, z) - log q(z)]``.

    ``gradient="standard"``: the estimator of each site's strategy, unbiased.
    ``gradient="stl"`` (sticking the landing, Roeder et al. 2017): ``log q`` is
    evaluated with stopped guide parameters, dropping the term
    ``-E_q[∇φ log q] = 0``; unbiased under any strategy, and exactly zero for
    reparameterized guides when ``q`` is the posterior.

    Example:
        >>> import jax, numpyro.distributions as dist, ppl
        >>> from ppl import transforms as T
        >>> @ppl.gen
        ... def model():
        ...     z = ppl.sample("z", dist.Normal(0.0, 1.0))
        ...     ppl.sample("x", dist.Normal(z, 1.0))
        >>> @ppl.gen
        ... def guide(mu):
        ...     ppl.sample("z", dist.Normal(mu, 0.7))
        >>> est = T.elbo(model, guide).estimator(argnums=1)
        >>> value, grad = est.value_and_grad(jax.random.key(0), (), (0.5,), {"x": 1.0})
    """
    _check(1, gradient, _GRADIENTS[:2])
    _check_exact_density(guide, gradient)

    @expectation
    def objective(model_args: tuple, guide_args: tuple, observations: ChoiceMap) -> jax.Array:
        trace = sim(guide, *guide_args)
        log_p = density(model, merge(observations, trace.choices), *model_args)
        if gradient == "stl":
            return log_p - density(guide, trace.choices, *_stop(guide_args))
        return log_p - trace.score

    return _named(objective, "elbo")


def iwelbo(
    model: GenerativeFunction, guide: GenerativeFunction, particles: int, gradient: str = "standard"
) -> Expectation:
    """The importance-weighted bound IWELBO(K) = ``E[log (1/K) Σ_k w_k]`` (IWAE).

    Nondecreasing in ``K``; ``K = 1`` is the ELBO. Gradients:

    * ``"standard"``: each site's strategy applied to the bound; unbiased.
    * ``"dreg"`` (doubly reparameterized, Tucker et al. 2018): guide gradient
      ``Σ_k w̃_k² ∂log w_k/∂z_k · ∂z_k/∂φ``, model gradient ``Σ_k w̃_k ∇θ log p(x, z_k)``;
      unbiased for reparameterized guides, zero at the exact posterior.
    * ``"stl"``: ``log q`` with stopped guide parameters; unbiased for ``K = 1``
      only, biased for ``K > 1`` (Tucker et al. 2018, section 3).
    """
    _check(particles, gradient, _GRADIENTS)
    _check_exact_density(guide, gradient)

    @expectation
    def objective(model_args: tuple, guide_args: tuple, observations: ChoiceMap) -> jax.Array:
        choices, log_p, log_q = _particles(model, guide, model_args, guide_args, observations, particles)
        if gradient == "standard":
            return _log_mean_exp(log_p - log_q)
        if gradient == "dreg":
            _check_reparameterized(f"iwelbo({particles}, gradient='dreg')")
        log_q_stopped = _assess_each(guide, choices, _stop(guide_args))
        if gradient == "stl":
            return _log_mean_exp(log_p - log_q_stopped)
        # DReG: through z only with squared weights (guide); through θ with weights (model).
        path = _assess_each(model, choices, _stop(model_args), observations) - log_q_stopped
        direct = _assess_each(model, sg(choices), model_args, observations)
        weights = sg(jax.nn.softmax(log_p - log_q))
        value = _log_mean_exp(sg(log_p - log_q))
        return value + jnp.sum(weights**2 * (path - sg(path))) + jnp.sum(weights * (direct - sg(direct)))

    return _named(objective, f"iwelbo({particles})")


def vimco(model: GenerativeFunction, guide: GenerativeFunction, particles: int) -> Expectation:
    """IWELBO(K) with VIMCO's per-particle leave-one-out baselines (Mnih & Rezende 2016).

    The guide's choices are treated as non-reparameterized: the guide gradient is
    ``Σ_k (L - L_{-k}) ∇φ log q(z_k) - Σ_k w̃_k ∇φ log q(z_k)``, where ``L`` is the
    bound's estimate and ``L_{-k}`` the same with ``log w_k`` replaced by the mean
    of the other log weights (geometric-mean baseline, from the core's
    :func:`leave_one_out_mean`). Unbiased for the gradient of IWELBO(K); needs
    ``K ≥ 2``.
    """
    _check(particles, "standard", ("standard",))
    _check_exact_density(guide, "per-particle")
    if particles < 2:
        raise ValueError(f"vimco needs particles >= 2 for its leave-one-out baselines, got {particles}")

    @expectation
    def objective(model_args: tuple, guide_args: tuple, observations: ChoiceMap) -> jax.Array:
        # Sampled with stopped guide parameters: no pathwise or strategy gradient.
        trace = sim(ppl.vmap(guide, in_axes=None, axis_size=particles), *_stop(guide_args))
        choices = sg(trace.choices)
        log_q = _assess_each(guide, choices, guide_args)
        log_p = _assess_each(model, choices, model_args, observations)
        log_w = log_p - log_q
        bound = _log_mean_exp(log_w)
        others = sg(leave_one_out_mean(log_w, axis=0))
        held_out = jax.vmap(lambda k: _log_mean_exp(sg(log_w).at[k].set(others[k])))(jnp.arange(particles))
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
    _check(particles, "standard", ("standard",))
    if not isinstance(alpha, (int, float)) or alpha < 0:
        raise ValueError(f"renyi: alpha must be a number >= 0, got {alpha!r}")

    @expectation
    def objective(model_args: tuple, guide_args: tuple, observations: ChoiceMap) -> jax.Array:
        _, log_p, log_q = _particles(model, guide, model_args, guide_args, observations, particles)
        log_w = log_p - log_q
        if alpha == 1.0:
            return jnp.mean(log_w)
        return _log_mean_exp((1.0 - alpha) * log_w) / (1.0 - alpha)

    return _named(objective, f"renyi({alpha}, {particles})")


def wake_p(model: GenerativeFunction, guide: GenerativeFunction, particles: int) -> Expectation:
    """Reweighted wake-sleep, wake phase for the model (Bornschein & Bengio 2015).

    Value: the IWELBO(K) estimate of ``log p(x)``. Gradient (model parameters
    only; the guide's are stopped): ``Σ_k w̃_k ∇θ log p(x, z_k)``, the
    self-normalized estimate of ``∇θ log p(x) = E_{p(z|x)}[∇θ log p(x, z)]``:
    biased for finite ``K``, consistent as ``K → ∞``.
    """
    _check(particles, "standard", ("standard",))
    _check_exact_density(guide, "per-particle")

    @expectation
    def objective(model_args: tuple, guide_args: tuple, observations: ChoiceMap) -> jax.Array:
        trace = sim(ppl.vmap(guide, in_axes=None, axis_size=particles), *_stop(guide_args))
        choices = sg(trace.choices)
        log_q = sg(_assess_each(guide, choices, guide_args))
        log_p = _assess_each(model, choices, model_args, observations)
        return _log_mean_exp(log_p - log_q)

    return _named(objective, f"wake_p({particles})")


def _self_normalized(model, guide, particles, model_args, guide_args, observations):
    trace = sim(ppl.vmap(guide, in_axes=None, axis_size=particles), *_stop(guide_args))
    choices = sg(trace.choices)
    log_q = _assess_each(guide, choices, guide_args)
    log_p = sg(_assess_each(model, choices, model_args, observations))
    log_w = log_p - sg(log_q)
    return log_p, log_q, log_w, sg(jax.nn.softmax(log_w))


def wake_q(model: GenerativeFunction, guide: GenerativeFunction, particles: int) -> Expectation:
    """Reweighted wake-sleep, wake phase for the guide.

    Value ``Σ_k w̃_k log q(z_k)``; gradient (guide parameters only)
    ``Σ_k w̃_k ∇φ log q(z_k)``, the self-normalized estimate of
    ``∇φ E_{p(z|x)}[log q(z)] = -∇φ KL(p(z|x) ‖ q)``: biased for finite ``K``,
    consistent as ``K → ∞``.
    """
    _check(particles, "standard", ("standard",))
    _check_exact_density(guide, "per-particle")

    @expectation
    def objective(model_args: tuple, guide_args: tuple, observations: ChoiceMap) -> jax.Array:
        _, log_q, _, weights = _self_normalized(model, guide, particles, model_args, guide_args, observations)
        return jnp.sum(weights * log_q)

    return _named(objective, f"wake_q({particles})")


def forward_kl(model: GenerativeFunction, guide: GenerativeFunction, particles: int) -> Expectation:
    """``-KL(p(z|x) ‖ q)`` by self-normalized importance sampling with ``K`` guide samples.

    Value ``Σ_k w̃_k (log q(z_k) - log p(x, z_k) + log Ẑ)`` with ``Ẑ = (1/K) Σ_k w_k``;
    gradient (guide parameters only) that of :func:`wake_q`. Biased for finite
    ``K`` (self-normalized), consistent as ``K → ∞``.
    """
    _check(particles, "standard", ("standard",))
    _check_exact_density(guide, "per-particle")

    @expectation
    def objective(model_args: tuple, guide_args: tuple, observations: ChoiceMap) -> jax.Array:
        log_p, log_q, log_w, weights = _self_normalized(
            model, guide, particles, model_args, guide_args, observations
        )
        log_posterior = log_p - _log_mean_exp(log_w)
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
