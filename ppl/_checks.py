"""Checks of numbers: raised at trace time when concrete, carried out of compiled steps when traced.

:func:`require` is the one entry point. A concrete predicate (a constant, or data given
eagerly) is decided at once and raises :class:`ValueError`. A traced one cannot raise inside
the compiled program, so its outcome is returned for the caller to *poison* what it guards
(the site's log density, its value): a failed check turns into a NaN in the objective's value,
which flows through ``vmap``, ``scan``, ``cond`` and any transformation of the user's. Inside
an estimator the outcome stays element by element, poisoning the log density's elements
before their sum (no reduction of its own; :func:`held` reads the site's flag off the sum).
The estimators return two finiteness flags beside each step (no host synchronization inside
the step) and, when one is down, re-run that step in :func:`diagnosing` mode, where traced
checks are recorded by host callbacks and the first failed one (in program order) is raised
with its message: the address, the distribution, the offending value and the valid set.

Outside any estimator (a program the user jits), a traced check raises through a host callback
while runtime checks are on (:func:`set_runtime_checks`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ppl._compat import is_traced

_RUNTIME_CHECKS = [True]
# Innermost last: "carry" while an estimator traces its step, "off" with checks off,
# "diagnose" while it re-runs a failed step; empty outside estimators.
_MODE: list[str] = []
# While diagnosing: the failed traced checks, as (registration index, message).
_FAILURES: list[tuple[int, str]] = []
_REGISTERED = [0]


def set_runtime_checks(enabled: bool) -> None:
    """Turn the checks of traced numbers on (default) or off.

    Checked: distribution parameters against their constraints, given values (data) against
    the support, and each estimator step's value and gradient for NaN/inf. Concrete values are
    always checked at trace time. Estimators read the setting at each call (a change takes
    effect at the next call; ``objective.estimator(checks=...)`` overrides it per estimator).
    """
    _RUNTIME_CHECKS[0] = bool(enabled)


def runtime_checks() -> bool:
    """The current setting of :func:`set_runtime_checks`."""
    return _RUNTIME_CHECKS[0]


@contextlib.contextmanager
def mode(name: str) -> Iterator[None]:
    """``"carry"``, ``"off"`` or ``"diagnose"``: how traced checks behave inside an estimator."""
    _MODE.append(name)
    try:
        yield
    finally:
        _MODE.pop()


def _current() -> str | None:
    """The innermost :func:`mode`, ``None`` outside estimators."""
    return _MODE[-1] if _MODE else None


def escape(text: str) -> str:
    """``text`` for a check's message template (``{``/``}`` are format fields there)."""
    return text.replace("{", "{{").replace("}", "}}")


def first_failing(ok: jax.Array, value: jax.Array) -> jax.Array:
    """The first entry of ``value`` where ``ok`` is false (``ok`` may drop trailing event axes)."""
    ok = jnp.asarray(ok)
    value = jnp.asarray(value)
    event = value.shape[ok.ndim :]
    shape = jnp.broadcast_shapes(ok.shape, value.shape[: ok.ndim])
    flat_ok = jnp.broadcast_to(ok, shape).reshape(-1)
    flat_value = jnp.broadcast_to(value, shape + event).reshape((-1, *event))
    return flat_value[jnp.argmin(flat_ok)] if flat_ok.size else flat_value.reshape(event)


def require(ok: Any, message: str, value: Any = None) -> jax.Array:
    """Whether the entries of ``ok`` hold, raising or recording a failure.

    ``message`` is a ``str.format`` template with one field, ``{value}``, filled with the
    first entry of ``value`` where ``ok`` fails (escape other braces with :func:`escape`).
    Concrete: raises ``ValueError`` now. Traced: see the module docstring; the caller
    poisons what the check guards with the returned outcome, which broadcasts to ``ok``'s
    shape: ``ok`` itself while an estimator carries checks (poisoning element by element
    fuses into the guarded computation), otherwise a scalar.
    """
    current = _current()
    if current == "off":
        return jnp.asarray(True)
    elementwise = jnp.asarray(ok)
    if current == "carry" and is_traced(elementwise):
        return elementwise  # no reduction: the caller poisons element by element
    ok = jnp.all(elementwise)
    try:
        # A concrete outcome about a traced value (a comparison under grad) is shown, like a
        # traced one, by a callback, which sees the value.
        holds = None if is_traced(value) else bool(ok)
    except jax.errors.ConcretizationTypeError:
        holds = None
    if holds is not None:
        if not holds:
            shown = "" if value is None else _show(first_failing(elementwise, value))
            raise ValueError(message.format(value=shown))
        return jnp.asarray(True)
    shown = jnp.zeros(()) if value is None else first_failing(elementwise, value)
    if current == "diagnose":
        _REGISTERED[0] += 1
        return ok & _host_check(functools.partial(_record, _REGISTERED[0], message), ok, shown)
    if current is None and runtime_checks():
        return ok & _host_check(functools.partial(_raise_if_failed, message), ok, shown)
    return ok


def _host_check(action: Any, ok: jax.Array, shown: jax.Array) -> jax.Array:
    """``action(ok, shown)`` on the host, returning ``True``: tied into the flag the caller poisons
    with, so it runs whenever what it guards is used; under ``vmap``, once for the whole batch."""
    ndim = np.ndim(ok)

    def run(ok: Any, shown: Any) -> np.ndarray:
        ok, shown = np.asarray(ok), np.asarray(shown)
        batch = ok.shape[: ok.ndim - ndim]
        flat_ok = ok.reshape(-1)
        flat_shown = shown.reshape((flat_ok.size, *shown.shape[len(batch) :]))
        for i in np.flatnonzero(~flat_ok)[:1]:
            action(flat_shown[i])
        return np.ones(batch, bool)

    def call(ok: jax.Array, shown: jax.Array) -> jax.Array:
        return jax.pure_callback(
            run, jax.ShapeDtypeStruct((), jnp.bool_), ok, shown, vmap_method="broadcast_all"
        )

    shown = jax.lax.stop_gradient(shown)  # callbacks have no derivative; this one needs none
    # The host is only called when the check fails (a passing call stays on the device; under a
    # vmap of the caller's the condition is batched and the callback runs for the batch).
    return jax.lax.cond(jnp.all(ok), lambda *_: jnp.asarray(True), call, ok, shown)


def _record(index: int, message: str, value: Any) -> None:
    _FAILURES.append((index, message.format(value=_show(value))))


def _raise_if_failed(message: str, value: Any) -> None:
    raise ValueError(message.format(value=_show(value)))


def _show(value: Any) -> str:
    array = np.asarray(value)
    return str(array[()]) if array.ndim == 0 else np.array2string(array, threshold=8)


@contextlib.contextmanager
def diagnosing() -> Iterator[list[tuple[int, str]]]:
    """Re-run a failed step inside this: yields the failures of traced checks (index, message),
    complete once the run's outputs are ready and :func:`jax.effects_barrier` has run."""
    _FAILURES.clear()
    _REGISTERED[0] = 0
    with mode("diagnose"):
        yield _FAILURES


def held(log_prob: jax.Array, ok: Any) -> jax.Array:
    """A site's checks as one scalar, given its ``log_prob`` poisoned with their outcome ``ok``.

    While an estimator carries checks, a failed element made ``log_prob`` NaN, so the scalar is
    read off it (no reduction over ``ok``); otherwise ``ok`` is already a scalar or concrete.
    """
    ok = jnp.asarray(ok)
    if _current() == "carry" and is_traced(ok):
        return ~jnp.isnan(log_prob)
    return jnp.all(ok)


def poison(x: Any, ok: jax.Array) -> Any:
    """``x`` with NaN where the check ``ok`` failed (floating ``x`` only; others unchanged)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return x
    return jnp.where(ok, x, jnp.nan)
