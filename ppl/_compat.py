"""The one place that depends on how JAX versions differ (tested: jax 0.10.2 and 0.12.0.1)."""

from __future__ import annotations

from typing import Any

import jax
import jax.extend.core as _extend_core
from jax.core import Tracer as _Tracer  # public in every tested version


def is_traced(x: Any) -> bool:
    """Whether any leaf of ``x`` is a tracer (we are inside ``jit``/``vmap``/``grad``...)."""
    return any(isinstance(leaf, _Tracer) for leaf in jax.tree_util.tree_leaves(x))


def trace_state() -> Any:
    """An opaque token of the current JAX transformation context (equal while it is unchanged)."""
    return _extend_core.get_opaque_trace_state(convention="ppl")
