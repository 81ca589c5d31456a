"""Checks and helpers on sample-site distributions (NumPyro's, or adapted TFP ones)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
from numpyro.distributions import constraints

from ppl._checks import escape, poison, require
from ppl._choice_map import Address, format_address

#: Joint supports larger than this are not enumerated.
MAX_ENUMERATION = 4096


def as_distribution(d: Any, addr: Address) -> nd.Distribution:
    """Return ``d`` as a NumPyro distribution, adapting TFP-on-JAX distributions."""
    if isinstance(d, nd.Distribution):
        return d
    if hasattr(d, "reparameterization_type") and hasattr(d, "log_prob"):
        from ppl._tfp import TFPDistribution

        return TFPDistribution(d)
    raise TypeError(
        f"address '{format_address(addr)}': expected a NumPyro distribution, a TFP-on-JAX "
        f"distribution or a generative function, got {type(d).__name__}"
    )


def name(d: nd.Distribution) -> str:
    """The distribution's name for messages (the wrapped name for adapters; ``Normal.to_event(1)``
    for an ``Independent`` over a ``Normal``)."""
    if isinstance(d, nd.Independent):
        return f"{name(d.base_dist)}.to_event({d.reinterpreted_batch_ndims})"
    return getattr(d, "display_name", type(d).__name__)


def elementwise(d: nd.Distribution) -> nd.Distribution:
    """``d`` under its ``Independent`` wrappers: the distribution whose ``log_prob`` has one entry
    per element the site's checks judge (their outcomes broadcast to its ``batch_shape``)."""
    while isinstance(d, nd.Independent):
        d = d.base_dist
    return d


def site_log_prob(d: nd.Distribution, value: Any, ok: Any = True) -> jax.Array:
    """Log density of a site's value, summed over the distribution's batch shape, NaN where the
    check outcome ``ok`` (broadcastable to ``elementwise(d).batch_shape``) fails.

    Poisoning each element before the sum keeps a traced check inside the log density's own
    fused loop: no reduction of its own (see :func:`ppl._checks.held`).
    """
    return jnp.sum(poison(elementwise(d).log_prob(value), ok))


def poison_sample(d: nd.Distribution, value: Any, ok: Any) -> Any:
    """A sampled ``value`` with NaN in the elements whose parameter checks ``ok`` failed."""
    ok = jnp.asarray(ok)
    event_ndim = len(elementwise(d).event_shape)
    return poison(value, ok.reshape(ok.shape + (1,) * event_ndim) if ok.ndim else ok)


def describe(constraint: constraints.Constraint) -> str:
    """A constraint as a set, for messages: ``(0, inf)``, ``{0, 1}``, ``the simplex``..."""
    base = constraint
    while isinstance(base, constraints.independent):
        base = base.base_constraint
    low, high = getattr(base, "lower_bound", None), getattr(base, "upper_bound", None)
    kind = type(base).__name__.lstrip("_")
    named = {
        "Real": "finite reals",
        "RealVector": "finite real vectors",
        "Boolean": "{0, 1}",
        "Simplex": "the simplex (nonnegative entries summing to 1)",
        "PositiveDefinite": "positive definite matrices",
        "LowerCholesky": "lower-triangular matrices with positive diagonal",
        "CorrCholesky": "Cholesky factors of correlation matrices",
        "IntegerNonnegative": "integers >= 0",
        "IntegerPositive": "integers >= 1",
    }
    if kind in named:
        return named[kind]
    if kind == "IntegerInterval":
        return f"integers in {{{_number(low)}, ..., {_number(high)}}}"
    if kind in ("GreaterThan", "Positive"):
        return f"({_number(low)}, inf)"
    if kind in ("GreaterThanEq", "Nonnegative"):
        return f"[{_number(low)}, inf)"
    if kind in ("LessThan",):
        return f"(-inf, {_number(high)})"
    if kind in ("Interval", "UnitInterval"):
        return f"[{_number(low)}, {_number(high)}]"
    if kind == "OpenInterval":
        return f"({_number(low)}, {_number(high)})"
    return repr(constraint)


def _number(x: Any) -> str:
    try:
        return f"{float(x):g}"
    except (TypeError, jax.errors.ConcretizationTypeError):
        return "traced bound"


def _is_real(constraint: constraints.Constraint) -> bool:
    base = constraint
    while isinstance(base, constraints.independent):
        base = base.base_constraint
    return type(base).__name__ in ("_Real", "_RealVector")


def check_parameters(addr: Address, d: nd.Distribution, selected: Any = None) -> jax.Array:
    """Whether each given parameter of ``d`` lies in its constraint (NaN/inf included).

    Only parameters the distribution holds (not lazily derived ones) are checked;
    dependent constraints (``Uniform``'s bounds) are not checks. The parameters of the
    distributions inside ``Independent``, ``ExpandedDistribution`` and ``MaskedDistribution``
    are checked (masked-out elements too: only data may be padding). Returns the outcome
    broadcastable to ``elementwise(d).batch_shape`` (see :func:`ppl._checks.require`) for the caller to
    poison the site with. ``selected`` (a boolean scalar, ``None``: true) is whether the site's
    branch of ``ppl.switch``/``ppl.cond`` is selected; where it is not, the checks hold.
    """
    return _parameters_ok(addr, elementwise(d), selected)


def _parameters_ok(addr: Address, d: nd.Distribution, selected: Any = None) -> jax.Array:
    """The outcome of ``d``'s parameter checks, broadcastable to ``d.batch_shape``."""
    if isinstance(d, nd.Independent):
        ok = jnp.asarray(_parameters_ok(addr, d.base_dist, selected))
        reinterpreted = d.reinterpreted_batch_ndims
        return jnp.all(ok, axis=tuple(range(max(ok.ndim - reinterpreted, 0), ok.ndim)))
    if isinstance(d, nd.ExpandedDistribution | nd.MaskedDistribution):  # masked: only data may be padding
        return _parameters_ok(addr, d.base_dist, selected)
    arg_constraints = getattr(d, "arg_constraints", None) or {}
    held = vars(d)
    ok = jnp.asarray(True)
    for param, constraint in arg_constraints.items():
        if param not in held or constraints.is_dependent(constraint):
            continue
        value = held[param]
        if not isinstance(value, jax.Array | np.ndarray | float | int):
            continue
        ok = ok & require(
            _selected(constraint(value), selected),
            escape(f"address '{format_address(addr)}' ({name(d)}): parameter {param} = ")
            + "{value}"
            + escape(f" is outside its constraint ({describe(constraint)})"),
            value,
        )
    return ok


def _unmasked(d: nd.MaskedDistribution, ok: Any) -> Any:
    """``ok``, held wherever ``d`` masks its elements out (NumPyro keeps the mask in ``_mask``)."""
    mask = d._mask
    if isinstance(mask, bool):
        return ok if mask else jnp.ones_like(ok)
    return ok | ~jnp.asarray(mask)


def _selected(ok: Any, selected: Any) -> Any:
    return ok if selected is None else ok | ~jnp.asarray(selected)


def check_value(
    addr: Address, d: nd.Distribution, value: Any, role: str, selected: Any = None
) -> tuple[jax.Array, jax.Array]:
    """Check a given value's shape, dtype and support (finiteness for real supports).

    Shape must equal the distribution's ``batch_shape + event_shape``; the dtype must be
    a real number type (both checked at trace time). The support is checked at trace time
    for concrete values; for traced ones the outcome is returned (see
    :func:`ppl._checks.require`); not where ``selected`` (see :func:`check_parameters`) is false.
    Returns ``(value as an array, outcome)``.
    """
    where = f"address '{format_address(addr)}' ({name(d)})"
    try:
        value = jnp.asarray(value)
    except TypeError as e:
        raise TypeError(f"{where}: {role} is not an array of numbers ({type(value).__name__})") from e
    expected = tuple(d.batch_shape) + tuple(d.event_shape)
    if value.shape != expected:
        raise ValueError(
            f"{where}: {role} has shape {value.shape}, which does not match the "
            f"distribution's batch+event shape {expected}"
        )
    real = jnp.issubdtype(value.dtype, jnp.number) or value.dtype == jnp.bool_
    if not real or jnp.issubdtype(value.dtype, jnp.complexfloating):
        raise TypeError(f"{where}: {role} has dtype {value.dtype}; sample sites take real numbers")
    per_element = elementwise(d)
    support = per_element.support
    inside = support(value)
    if isinstance(per_element, nd.MaskedDistribution):
        inside = _unmasked(per_element, inside)
    ok = require(
        _selected(inside, selected),
        escape(f"{where}: {role} is ") + "{value}" + escape(f", outside the support ({describe(support)})"),
        value,
    )
    return value, ok


def is_discrete(d: nd.Distribution) -> bool:
    return bool(getattr(d.support, "is_discrete", False))


def support_size(d: nd.Distribution) -> int:
    """The number of joint values of a finite-support site (its elements' supports multiplied)."""
    k = d.enumerate_support(expand=False).shape[0]
    return k ** math.prod(d.batch_shape)


def joint_support(addr: Address, d: nd.Distribution) -> jax.Array:
    """All joint values of a site with finite support, shape ``(n,) + d.shape()``.

    A batched site (independent copies) is enumerated over the Cartesian product
    of its elements' supports.
    """
    where = f"address '{format_address(addr)}' ({name(d)})"
    if not getattr(d, "has_enumerate_support", False):
        raise ValueError(f"{where}: enum needs a finite support, and this distribution has none")
    per_element = d.enumerate_support(expand=False)  # (k,) + (1,)*batch + event
    k = per_element.shape[0]
    batch = tuple(d.batch_shape)
    size = math.prod(batch)
    if k**size > MAX_ENUMERATION:
        raise ValueError(
            f"{where}: the joint support has {k}**{size} values, more than "
            f"{MAX_ENUMERATION}; use reinforce or mvd here"
        )
    event = tuple(d.event_shape)
    values = per_element.reshape((k,) + event)
    combos = jnp.array(list(itertools.product(range(k), repeat=size)), dtype=jnp.int32)
    joint = values[combos]  # (k**size, size) + event
    return joint.reshape((k**size,) + batch + event)
