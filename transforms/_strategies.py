"""Gradient strategies: one rule per random choice.

A strategy decides how a sample site inside an ``@expectation`` scope is drawn
and which zero-valued *surrogate* term it adds, so that the JAX gradient of the
scope's surrogate is an unbiased estimate of the gradient of the scope's
expected value. Write your own by subclassing :class:`Strategy`.

What a rule sees (a :class:`Site`): the distribution, the drawn value, its log
density (carrying gradients), the *downstream cost* (the scope's costs produced
after the site, stop-gradient), the site's baseline, and, for sites not inside
``ppl.vmap``/``ppl.scan``, the *continuation*: the rest of the scope re-executed
with the site set to other values (with the earlier choices held fixed and the
same random numbers for the later ones).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
from ppl.transforms import _weak_derivatives
from ppl.transforms._baselines import Baseline, leave_one_out
from ppl.transforms._baselines import none as no_baseline

from ppl._choice_map import Address, format_address
from ppl._distributions import MAX_ENUMERATION, is_discrete, joint_support, name, support_size

sg = jax.lax.stop_gradient


@dataclasses.dataclass
class Site:
    """What a strategy's rule sees at one sample site (see the module docstring).

    ``dist`` is the site's distribution and ``key`` the key it was drawn with, everywhere:
    inside ``ppl.vmap``/``ppl.scan`` blocks and particle blocks too, where the rule is
    applied once per element (``jax.vmap`` over the block's axes), so ``dist``, ``value``,
    ``log_prob`` and ``downstream`` are those of one element. ``continuation(values,
    weights)`` returns, for each of ``values`` (leading axis), the surrogate of the rest of
    the scope with the site set to that value; ``weights`` (same leading axis, carrying
    gradients) are the factors the caller multiplies those surrogates by, so deferred terms
    of later sites (leave-one-out baselines) are kept. ``continuation_value(values)``
    returns the plain Monte Carlo value of the rest of the scope (no gradients). Both are
    ``None`` inside blocks, where the rest of the scope cannot be re-run per element.
    """

    address: Address
    dist: nd.Distribution
    key: jax.Array
    value: jax.Array
    log_prob: jax.Array
    downstream: jax.Array | None = None
    baseline: jax.Array | None = None
    continuation: Callable[..., jax.Array] | None = None
    continuation_value: Callable[[jax.Array], jax.Array] | None = None

    @property
    def where(self) -> str:
        return f"address '{format_address(self.address)}' ({name(self.dist)})"


class Strategy(abc.ABC):  # noqa: B024 - every rule has a default; subclasses override some
    """Base class for gradient strategies: one rule per sample site.

    A strategy defines :meth:`draw` (the value the program sees) and either
    :meth:`surrogate` (a zero-valued term added to the scope's surrogate, whose gradient is
    the site's contribution) or, with ``replaces_continuation = True``, :meth:`rest` (a
    surrogate for the whole rest of the scope, replacing the sampled continuation: its
    gradient must be unbiased for the gradient of the rest's expectation, and its value
    unbiased for that expectation). ``uses_continuation`` strategies need
    ``site.continuation``/``continuation_value`` and are refused inside blocks.
    :meth:`check` refuses distributions the rule does not fit. The value the estimator
    reports is always the plain Monte Carlo value. Score-function rules should subclass
    :class:`ScoreFunction`, which owns baselines.
    """

    replaces_continuation: ClassVar[bool] = False
    uses_continuation: ClassVar[bool] = False
    #: The drawn value carries the gradient along its sampling path, and the rule adds no
    #: surrogate term (what DReG's identity needs).
    pathwise: ClassVar[bool] = False
    #: The baseline of a score-function rule (``None``: the rule has none).
    baseline = None

    def check(self, address: Address, d: nd.Distribution) -> None:  # noqa: B027 - fits every site
        """Raise a clear error if the strategy does not fit the distribution."""

    def draw(self, key: jax.Array, d: nd.Distribution) -> jax.Array:
        """The value the program sees (default: a sample with no gradient)."""
        return sg(d.sample(key))

    def surrogate(self, site: Site) -> jax.Array:
        """A zero-valued term; its gradient is the site's contribution (default: none)."""
        return jnp.zeros(())

    def rest(self, site: Site) -> jax.Array:
        """With ``replaces_continuation``: the surrogate of the rest of the scope."""
        raise TypeError(f"{type(self).__name__} does not replace the continuation")


@dataclasses.dataclass(frozen=True)
class ScoreFunction(Strategy):
    """Base class of score-function rules: ``(signal − b) ∇θ log p(x; θ)`` with a baseline ``b``.

    The surrogate is ``stop_gradient(signal − b) · (log p(x; θ) − stop_gradient(log p))``;
    ``signal(site)`` defaults to the downstream cost (causal Rao-Blackwellization), and ``b``
    comes from ``baseline`` (``none``, ``constant``, ``running_average``, ``leave_one_out``
    across particles, ``learned``), which the estimator evaluates, updates and pools across
    particles for every subclass alike: inside blocks, particle blocks and
    :func:`~ppl.transforms.log_expectation` terms. Unbiased whenever ``E[signal ∇ log p]``
    is the gradient of the site's expected cost and ``b`` does not depend on ``x``.
    """

    baseline: Baseline = dataclasses.field(default_factory=no_baseline)

    def __post_init__(self) -> None:
        if not isinstance(self.baseline, Baseline):
            raise TypeError(f"{type(self).__name__}: baseline must be a Baseline, got {self.baseline!r}")

    def check(self, address: Address, d: nd.Distribution) -> None:
        if _support_depends_on_inputs(d):
            raise ValueError(
                f"{type(self).__name__.lower()} at address '{format_address(address)}': the support "
                f"of {name(d)} depends on traced parameters, and the score function misses the "
                "boundary term of such a gradient; use reparam there"
            )

    def signal(self, site: Site) -> jax.Array:
        """The cost multiplying the score (default: the site's downstream cost)."""
        return site.downstream

    def surrogate(self, site: Site) -> jax.Array:
        lp = site.log_prob
        return jnp.sum(sg(self.signal(site) - site.baseline) * (lp - sg(lp)))


@dataclasses.dataclass(frozen=True)
class Reparam(Strategy):
    """Pathwise gradient: x = T(ε, θ) and the gradient flows through x.

    Uses the distribution's reparameterized sampler; for Gamma, Beta and
    Dirichlet this is implicit reparameterization (JAX's gamma sampler
    differentiates the CDF implicitly). Unbiased when the continuation is
    differentiable in x almost everywhere.
    """

    pathwise: ClassVar[bool] = True

    def check(self, address: Address, d: nd.Distribution) -> None:
        if is_discrete(d) or not getattr(d, "has_rsample", False):
            kind = "is discrete" if is_discrete(d) else "has no reparameterized sampler"
            raise ValueError(
                f"reparam at address '{format_address(address)}': {name(d)} {kind}; "
                "use reinforce, enum or mvd there"
            )

    def draw(self, key: jax.Array, d: nd.Distribution) -> jax.Array:
        return d.rsample(key)


@dataclasses.dataclass(frozen=True)
class Reinforce(ScoreFunction):
    """Score function: adds ``stop_gradient(k − b) · (log p(x; θ) − stop_gradient(log p))``.

    Its gradient is ``(k − b) ∇θ log p(x; θ)`` with ``k`` the downstream cost
    (causal Rao-Blackwellization: only costs produced after the site) and ``b``
    a baseline independent of ``x``. Unbiased for every distribution whose
    support does not depend on θ; a site whose support bounds are traced (for
    example ``Uniform(low, high)`` with learned bounds) is rejected, since the
    score function misses the boundary term there.
    """


def _support_depends_on_inputs(d: nd.Distribution) -> bool:
    """True if the support's bounds are traced values (they may depend on θ)."""
    support = d.support
    for attr in ("lower_bound", "upper_bound"):
        bound = getattr(support, attr, None)
        if bound is None:
            continue
        try:
            np.asarray(bound)
        except jax.errors.TracerArrayConversionError:
            return True
    return False


@dataclasses.dataclass(frozen=True)
class Enum(Strategy):
    """Exact enumeration: the rest of the scope becomes Σ_v p(v; θ) k(v).

    The gradient is exact over the site (∇ Σ_v p(v) k(v)), and so is the value
    of the surrogate (later sites' downstream costs use it); the estimator still
    reports the plain Monte Carlo value k(x) at the drawn x. Batched sites enumerate
    the joint support (at most ``MAX_ENUMERATION`` values). Costs one
    continuation per value.
    """

    replaces_continuation = True
    uses_continuation = True

    def check(self, address: Address, d: nd.Distribution) -> None:
        joint_support(address, d)  # raises for infinite or too large supports

    def rest(self, site: Site) -> jax.Array:
        values = joint_support(site.address, site.dist)
        weights = jnp.exp(jax.vmap(lambda v: jnp.sum(site.dist.log_prob(v)))(values))
        return jnp.sum(weights * site.continuation(values, weights))


@dataclasses.dataclass(frozen=True)
class MVD(Strategy):
    """Measure-valued derivative: adds Σ_θ stop_gradient(c_θ (k(x⁺) − k(x⁻))) · (θ − stop_gradient θ).

    Uses the weak-derivative decompositions of ``_weak_derivatives`` (Bernoulli,
    categorical, normal loc and scale, Poisson, geometric), two continuation
    evaluations per scalar parameter (one per category for categorical).
    Unbiased; no differentiability of k needed.
    """

    uses_continuation = True

    def check(self, address: Address, d: nd.Distribution) -> None:
        if not _weak_derivatives.supported(d):
            raise ValueError(
                f"mvd at address '{format_address(address)}': no weak derivative for "
                f"{name(d)}; supported: {', '.join(_weak_derivatives.supported_names())}"
            )

    def surrogate(self, site: Site) -> jax.Array:
        key = jax.random.fold_in(site.key, 1)
        flat_value = jnp.ravel(site.value)
        size = flat_value.shape[0]
        eye = jnp.eye(size, dtype=bool)

        def replaced(x: jax.Array) -> jax.Array:
            x = jnp.ravel(x).astype(site.value.dtype)
            rows = jnp.where(eye, x[None, :], flat_value[None, :])
            return rows.reshape((size, *site.value.shape))

        total = jnp.zeros(())
        for theta, c, plus, minus in _weak_derivatives.decompose(site.dist, key):
            delta = site.continuation_value(replaced(plus))
            if minus is not None:
                delta = delta - site.continuation_value(replaced(minus))
            delta = delta.reshape(theta.shape)
            total = total + jnp.sum(sg(c * delta) * (theta - sg(theta)))
        return total


@dataclasses.dataclass(frozen=True)
class Auto(Strategy):
    """The default policy, per site, in order:

    1. ``reparam`` if the distribution is continuous with a reparameterized sampler;
    2. ``enum`` if its support is finite, the site is not inside ``ppl.vmap``/``ppl.scan``
       or a particle block, and the *total* enumeration cost stays within
       ``max_enumeration``: enumerated sites multiply (each value of one re-runs the rest
       of the scope, later enumerated sites included), so the product of their support
       sizes is the number of continuations;
    3. otherwise the score function, with a leave-one-out baseline when the estimator runs
       ``particles ≥ 2`` and no baseline otherwise. A site that must fall back from
       enumeration, or gets no baseline, is named in a warning (once per estimator).

    ``estimator.explain(params, *data)`` shows what each site got and why.
    """

    max_enumeration: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.max_enumeration, int) or self.max_enumeration < 1:
            raise ValueError(f"auto: max_enumeration must be a positive int, got {self.max_enumeration!r}")

    def choose(
        self, address: Address, d: nd.Distribution, in_block: bool | str, particles: int, cost: int
    ) -> tuple[Strategy, str, str | None]:
        """``(strategy, rule, note)`` for a site given the enumeration ``cost`` so far; ``note`` is
        ``"over budget"`` or ``"no baseline"`` when the choice deserves a warning, else ``None``."""
        if getattr(d, "has_rsample", False) and not is_discrete(d):
            return Reparam(), "continuous, reparameterized sampler", None
        if particles >= 2:
            score, rule, note = (
                Reinforce(leave_one_out()),
                f"score function, leave-one-out across particles={particles}",
                None,
            )
        else:
            score, rule, note = Reinforce(no_baseline()), "score function without a baseline", "no baseline"
        if not getattr(d, "has_enumerate_support", False):
            return score, f"no reparameterized sampler, infinite support: {rule}", note
        size = support_size(d)
        if in_block:
            inside = in_block if isinstance(in_block, str) else "a ppl.vmap/ppl.scan block"
            return score, f"finite support inside {inside} (no continuation to enumerate): {rule}", note
        total = cost * size
        if size <= MAX_ENUMERATION and total <= self.max_enumeration:
            return (
                Enum(),
                f"finite support of {size} values, enumeration cost {total} <= {self.max_enumeration}",
                None,
            )
        return score, f"enumeration cost {total} > {self.max_enumeration}: {rule}", "over budget"


def reparam() -> Strategy:
    """Pathwise (reparameterization) strategy; see :class:`Reparam`."""
    return Reparam()


def reinforce(baseline: Baseline | None = None) -> Strategy:
    """Score-function strategy with an optional baseline; see :class:`Reinforce`."""
    return Reinforce(baseline if baseline is not None else no_baseline())


def enum() -> Strategy:
    """Exact enumeration strategy; see :class:`Enum`."""
    return Enum()


def mvd() -> Strategy:
    """Measure-valued derivative strategy; see :class:`MVD`."""
    return MVD()


def auto(max_enumeration: int = 64) -> Strategy:
    """The default policy; see :class:`Auto` (``max_enumeration`` bounds the total cost)."""
    return Auto(max_enumeration)


class LogExpectationEstimator(abc.ABC):
    """Base class: how a :func:`log_expectation` term turns log weights into a gradient.

    Subclasses define :meth:`log_scale` (the ``log`` of the normalizer ``s`` in
    ``c_j = w_j / (M s)``) and :meth:`value`; stateful ones also ``init`` and
    ``update`` (called with the batch values ``log Ẑ`` of every run of the step).
    """

    stateful = False

    def init(self) -> Any:
        return ()

    @abc.abstractmethod
    def log_scale(self, state: Any, log_mean: jax.Array) -> jax.Array:
        """``log s``: the coefficients are ``c_j = exp(ℓ_j − log s) / M``."""

    def value(self, state: Any, log_mean: jax.Array) -> jax.Array:
        return log_mean

    def update(self, state: Any, log_means: list[jax.Array], args: tuple) -> Any:
        return state
