"""Checks and helpers on sample-site distributions (NumPyro's, or adapted TFP ones)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as nd
from numpyro.distributions import constraints

from ppl._choice_map import Address, format_address

#: Joint supports larger than this are not enumerated.
MAX_ENUMERATION = 4096

_RUNTIME_CHECKS = [True]


def set_runtime_checks(enabled: bool) -> None:
    """Turn the in-program support checks of traced values on (default) or off.

    Concrete values given to ``assess``/``generate``/``density`` are always
    checked at trace time. Traced values (e.g. data passed into a jitted step)
    can only be checked inside the compiled program (``equinox.error_if``),
    which costs a conditional and, on accelerators, a host synchronization per
    check. Turn it off in tuned training loops once the data are validated.
    """
    _RUNTIME_CHECKS[0] = bool(enabled)


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
    """The distribution's name for messages (the wrapped name for adapters)."""
    return getattr(d, "display_name", type(d).__name__)


def site_log_prob(d: nd.Distribution, value: Any) -> jax.Array:
    """Log density of a site's value, summed over the distribution's batch shape."""
    return jnp.sum(d.log_prob(value))


def check_value(addr: Address, d: nd.Distribution, value: Any, role: str) -> jax.Array:
    """Check a given value's shape and support; return it as an array.

    Shape must equal the distribution's ``batch_shape + event_shape``. The support
    is checked at trace time for concrete values; for traced values the check
    runs inside the compiled program and raises with the same message.
    """
    value = jnp.asarray(value)
    expected = tuple(d.batch_shape) + tuple(d.event_shape)
    where = f"address '{format_address(addr)}' ({name(d)})"
    if value.shape != expected:
        raise ValueError(
            f"{where}: {role} has shape {value.shape}, which does not match the "
            f"distribution's batch+event shape {expected}"
        )
    support = d.support
    base = support
    while isinstance(base, constraints.independent):
        base = base.base_constraint
    if base is constraints.real or base is constraints.real_vector:
        return value
    message = f"{where}: {role} is outside the support ({support})"
    ok = support(value)
    try:
        concrete = bool(jnp.all(ok))
    except jax.errors.ConcretizationTypeError:
        if not _RUNTIME_CHECKS[0]:
            return value
        return eqx.error_if(value, ~jnp.all(ok), message)
    if not concrete:
        raise ValueError(message)
    return value


def is_discrete(d: nd.Distribution) -> bool:
    return bool(getattr(d.support, "is_discrete", False))


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
