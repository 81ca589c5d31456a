"""Exact marginals of a model's discrete sites, and their posteriors (``infer_discrete``).

``marginal(model, keep=[...], inference=exact())`` is the model with every site outside ``keep``
summed out exactly (see :mod:`ppl.transforms._elimination`): its density is
``log Σ_z p(kept, z; args)``, a deterministic, differentiable function, so every objective that
evaluates the model's density (``elbo``, ``iwelbo``, ...) gets the discrete sites marginalized,
and the marginal likelihood itself is a training target. :func:`infer_discrete` returns the
posterior marginals of the summed-out sites (forward-backward along scans, per-element
responsibilities in plates) and their jointly most probable values (Viterbi), as gradients of
the log-sum-exp and max-product eliminations with respect to per-value tilts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from ppl.transforms._elimination import eliminate
from ppl.transforms._expectation import _check_gen, _run_frame
from ppl.transforms._marginal import _EstimatedDensity
from ppl.transforms._scope import EstimatorHandler
from ppl.transforms._semirings import MAX_STATES, Plan

from ppl._choice_map import Address, ChoiceMap, flatten, format_address, unflatten
from ppl._gen import GenerativeFunction, Trace

__all__ = ["DiscretePosterior", "Exact", "ExactMarginal", "exact", "infer_discrete"]


@dataclasses.dataclass(frozen=True)
class Exact:
    """Exact marginalization by variable elimination (see :func:`exact`)."""

    max_states: int = MAX_STATES

    def __post_init__(self) -> None:
        if isinstance(self.max_states, bool) or not isinstance(self.max_states, int) or self.max_states < 1:
            raise ValueError(f"exact: max_states must be a positive int, got {self.max_states!r}")


def exact(max_states: int = MAX_STATES) -> Exact:
    """Sum the discarded sites out exactly: ``marginal(model, keep, exact())``.

    Every site outside ``keep`` must have a finite support. Inside a ``ppl.vmap`` plate each
    element is summed separately (cost linear in the plate size); along a ``ppl.scan`` the
    states are eliminated by the forward algorithm (cost ``T·K²``). ``max_states`` bounds the
    joint values summed over in one element (the product of its sites' supports).
    """
    return Exact(max_states)


class ExactMarginal(_EstimatedDensity):
    """``g`` with only the ``keep`` choices; the others summed out exactly.

    ``assess(kept, *args)`` is ``(log Σ_z g(kept, z; args), None)``; ``simulate`` draws from
    ``g`` and keeps the kept choices, scored by that exact log marginal. Inside objectives
    ``density`` and ``generate`` use the exact density; ``sim`` draws every site of ``g`` by
    its strategy (the kept choices are then a draw from the marginal).
    """

    #: Its density is exact (objectives that re-evaluate a guide's or model's density accept it).
    exact_density = True

    def __init__(self, g: GenerativeFunction, keep: tuple[Address, ...], inference: Exact):
        self.g, self.keep, self.inference = g, keep, inference
        super().__init__(g.fn)

    def __repr__(self) -> str:
        kept = ", ".join(format_address(a) for a in self.keep)
        return f"<exact marginal of {self.g!r} over {kept}>"

    def kept(self, choices: ChoiceMap, what: str = "density") -> dict[Address, Any]:
        """The given choices, flattened, after checking they are exactly the kept addresses."""
        flat = flatten(choices)
        extra = sorted(a for a in flat if not _under(a, self.keep))
        if extra:
            raise ValueError(
                f"{self!r}: {what} got address '{format_address(extra[0])}', which is not kept "
                f"(kept: {', '.join(format_address(k) for k in self.keep)})"
            )
        for k in self.keep:
            if not any(_under(a, (k,)) for a in flat):
                raise ValueError(f"{self!r}: {what}: no value for kept address '{format_address(k)}'")
        return flat

    def log_density(self, choices: ChoiceMap, args: tuple) -> jax.Array:
        return eliminate(self.g, self.kept(choices), args, Plan("sum", self.inference.max_states, repr(self)))

    def assess(self, choices: ChoiceMap, *args: Any) -> tuple[jax.Array, Any]:
        """``(log Σ_z g(choices, z; args), None)``, exact."""
        return self.log_density(choices, args), None

    def simulate(self, key: jax.Array, *args: Any) -> Trace:
        """A draw of the kept choices (from ``g``), scored by the exact log marginal."""
        trace = self.g.simulate(key, *args)
        kept = {a: v for a, v in flatten(trace.choices).items() if _under(a, self.keep)}
        return Trace(unflatten(kept), trace.retval, self.log_density(unflatten(kept), args))

    def generate(self, key: jax.Array, constraints: ChoiceMap, *args: Any) -> tuple[Trace, jax.Array]:
        raise TypeError(f"{self!r}: generate is not available outside objectives; use assess or simulate")

    def sim_in_objective(self, handler: EstimatorHandler, args: tuple) -> tuple[ChoiceMap, Any, jax.Array]:
        trace = _run_frame(handler, self.g, args)[0]
        kept = unflatten({a: v for a, v in flatten(trace.choices).items() if _under(a, self.keep)})
        return kept, trace.retval, self.log_density(kept, args)

    def density_in_objective(self, handler: EstimatorHandler, choices: ChoiceMap, args: tuple) -> jax.Array:
        return self.log_density(choices, args)

    def estimate_logpdf(self, key: jax.Array, choices: ChoiceMap, *args: Any) -> jax.Array:
        """The exact log marginal (``key`` is not used), for symmetry with SIR marginals."""
        return self.log_density(choices, args)


def _under(address: Address, prefixes: tuple[Address, ...]) -> bool:
    return any(address[: len(k)] == k for k in prefixes)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DiscretePosterior:
    """What :func:`infer_discrete` returns; dictionaries are keyed by address (``"xs/z"``).

    Attributes:
        log_marginal: ``log Σ_z p(choices, z; args)``.
        marginals: per summed-out site, ``p(z = v_j | choices)`` for each value ``v_j`` of its
            support, in the order of ``enumerate_support`` (last axis; leading axes: the
            enclosing plates and scan steps, outermost first). A site with a batch shape of its
            own has one entry per *joint* value of its elements (their supports' Cartesian
            product, last element fastest); ``mean`` is per element.
        mean: per site, the posterior mean ``E[z | choices]``.
        map: per site, its value in the jointly most probable assignment (Viterbi along scans).
        map_log_density: ``max_z log p(choices, z; args)``.
        sample: with a ``key``, per site, its value in one joint draw from the posterior (forward
            filtering, backward sampling along scans); ``None`` without a key.
    """

    log_marginal: jax.Array
    marginals: dict[str, jax.Array]
    mean: dict[str, jax.Array]
    map: dict[str, jax.Array]
    map_log_density: jax.Array
    sample: dict[str, jax.Array] | None = None


def infer_discrete(
    model: GenerativeFunction,
    choices: ChoiceMap,
    *args: Any,
    key: jax.Array | None = None,
    max_states: int = MAX_STATES,
) -> Any:
    """Posterior marginals, means and MAP assignment of the sites of ``model`` that ``choices`` omits.

    Each such site must have a finite support. With ``log Z(τ, λ) = log Σ_z p(choices, z)
    exp(Σ_s τ_s[j_s] + λ_s·z_s)`` (``j_s``: the index of ``z_s`` in its support), the marginal of
    site ``s`` at its ``j``-th value is ``∂ log Z / ∂ τ_s[j]`` and its mean ``∂ log Z / ∂ λ_s``
    at zero: one backward pass of the elimination (forward-backward along scans). With max in
    place of the sum the derivative in ``λ`` is the MAP assignment (Viterbi's backtracking; on ties
    the max's derivative picks the first maximizer, so it is still one assignment). With ``key``, the same
    derivative through a log-sum-exp whose backward pass draws one index per reduction
    (Gumbel-max) is a joint posterior sample: backward sampling given the forward sums.

    Example:
        >>> import jax.numpy as jnp, numpyro.distributions as dist, ppl
        >>> from ppl import transforms as T
        >>> @ppl.gen
        ... def point(mu):
        ...     z = ppl.sample("z", dist.Bernoulli(0.5))
        ...     ppl.sample("x", dist.Normal(mu[z], 1.0))
        >>> mixture = ppl.vmap(point, in_axes=None, axis_size=3)
        >>> post = T.infer_discrete(mixture, {"x": jnp.array([-2.0, 0.1, 2.0])}, jnp.array([-1.0, 1.0]))
        >>> post.map["z"].tolist()
        [0, 1, 1]
    """
    _check_gen(model, "infer_discrete")
    given = flatten(choices)
    program = f"infer_discrete of {model!r}"
    found: dict[Address, Any] = {}
    probe = Plan("sum", max_states, program, found)
    jax.eval_shape(lambda: eliminate(model, given, args, probe))
    tilts = {
        a: (jnp.zeros((*axes, n)), jnp.zeros((*axes, *shape))) for a, (axes, n, shape, _) in found.items()
    }

    def run(reduce: str, key: jax.Array | None = None) -> Any:
        plan = Plan(reduce, max_states, program)
        return jax.value_and_grad(lambda t: eliminate(model, given, args, plan, t, key))(tilts)

    log_marginal, by_value = run("sum")
    map_value, at_map = run("max")
    names = {a: format_address(a) for a in found}
    sample = None
    if key is not None:
        drawn = run("sample", key)[1]
        sample = {names[a]: _as_value(drawn[a][1], found[a][3]) for a in found}
    return DiscretePosterior(
        log_marginal,
        {names[a]: by_value[a][0] for a in found},
        {names[a]: by_value[a][1] for a in found},
        {names[a]: _as_value(at_map[a][1], found[a][3]) for a in found},
        map_value,
        sample,
    )


def _as_value(x: jax.Array, dtype: Any) -> jax.Array:
    if jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_:
        return jnp.round(x).astype(dtype)
    return x.astype(dtype)
