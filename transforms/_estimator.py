"""Estimators: an objective program with its strategies, as jitted ``value_and_grad`` steps.

One calling convention for every estimator::

    state = est.init(params, *data)                       # {} unless a baseline keeps state
    value, grad, state = est.value_and_grad(key, params, *data, state=state)

``params`` (any pytree of floating arrays) is what is differentiated; ``grad`` has its
structure, always. ``data`` are the objective's other arguments, never differentiated.
Checks of traced numbers (parameters, data, the value and the gradient) run inside the
compiled step and are carried out of it as an error value (:mod:`ppl._checks`); see
:class:`Estimator` for when they are raised.
"""

from __future__ import annotations

import dataclasses
import operator
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ppl.transforms._guards import (
    batch_size,
    check_params,
    confirmed,
    finite_flags,
    first_non_finite_leaf,
    non_finite_message,
    probe,
    raise_in_program,
    summary,
    tie,
)
from ppl.transforms._ledger import SiteEntry, site_values
from ppl.transforms._resolution import Config, Explanation
from ppl.transforms._scope import Aux, finish_deferred, run_scope
from ppl.transforms._strategies import LogExpectationEstimator, Strategy

from ppl import _checks
from ppl._choice_map import Address, as_address, format_address, listing, suggest
from ppl._compat import is_traced

sg = jax.lax.stop_gradient
_MODES = ("deferred", "sync", "off")


class StrategyWarning(UserWarning):
    """``auto()`` fell back from enumeration, or left a score-function site without a baseline."""


class Estimate(NamedTuple):
    """What ``value_and_grad`` returns: unpack as ``value, grad, state = ...``.

    Attributes:
        value: the plain Monte Carlo value of the objective for this key (with ``has_aux``,
            ``(value, aux)``).
        grad: the gradient estimate, a pytree with the structure of ``params``.
        state: the estimator state for the next call (``{}`` when nothing keeps state).
    """

    value: Any
    grad: Any
    state: dict[str, Any]


def positive_count(particles: Any, what: str = "particles") -> int:
    """A count (particles, samples, steps) as a positive Python int (NumPy integers accepted,
    booleans refused)."""
    try:
        if isinstance(particles, bool | np.bool_):
            raise TypeError
        count = operator.index(particles)
    except TypeError:
        raise TypeError(f"{what} must be a positive integer, got {particles!r}") from None
    if count < 1:
        raise ValueError(f"{what} must be a positive integer, got {count}")
    return count


class Estimator:
    """A jitted gradient estimator of an objective program (create with ``objective.estimator``).

    ``value_and_grad(key, params, *data, state=None)`` returns an :class:`Estimate`
    ``(value, grad, state)``; ``grad(...)`` the gradient alone; ``estimate(...)`` the value
    alone; ``init(params, *data)`` the state (``{}`` unless a site has a stateful baseline
    or a ``log_expectation`` a stateful estimator, which then need ``state=``).

    With ``particles=K`` the objective is run K times independently (vmapped); the value is
    the mean and ``leave_one_out`` baselines use the other particles. With ``in_axes`` (one
    entry per data argument, as in ``jax.vmap``) it is run once per datum and reduced.

    Checks (``checks``; default from :func:`ppl.set_runtime_checks`, read at each call):
    distribution parameters, given values (data) and the step's value and gradient are
    checked inside the compiled step. ``"deferred"`` (default when checks are on) raises a
    failure of a call at the next call of this estimator or at :meth:`check` (no host
    synchronization on the hot path), except the first call, which raises at once;
    ``"sync"`` raises in the same call (one host synchronization per call); ``"off"`` checks
    only what is concrete at trace time. Inside an enclosing ``jit``/``vmap`` a failure is
    raised by a host callback.
    """

    def __init__(
        self,
        objective: Any,
        strategies: dict[str | Address, Strategy | LogExpectationEstimator],
        default: Strategy,
        particles: Any = 1,
        in_axes: tuple | None = None,
        reduce: str = "mean",
        has_aux: bool = False,
        jit: bool = True,
        checks: str | None = None,
    ):
        self.particles = positive_count(particles)
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
        if in_axes is not None and not isinstance(in_axes, tuple):
            raise TypeError(f"in_axes must be a tuple with one entry per data argument, got {in_axes!r}")
        if checks is not None and checks not in _MODES:
            raise ValueError(
                f"checks must be one of {', '.join(_MODES)} (or None: the default), got {checks!r}"
            )
        for s in (*strategies.values(), default):
            if not isinstance(s, Strategy | LogExpectationEstimator):
                raise TypeError(f"strategies must be Strategy objects, got {s!r}")
        if isinstance(default, LogExpectationEstimator):
            raise TypeError(f"default must be a sample-site Strategy, got {default!r}")
        self.objective = objective
        self.strategies = {as_address(k): v for k, v in strategies.items()}
        self.default = default
        self.in_axes, self.reduce, self.has_aux = in_axes, reduce, has_aux
        self.checks = checks
        self._jit = jit
        self._compiled: dict[tuple[str, bool], Any] = {}
        self._pending: Any = None
        self._calls = 0
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"<estimator of {self.objective!r}>"

    # -- one run ---------------------------------------------------------------
    def _config(self, args: tuple, state: Any) -> Config:
        return Config(self.strategies, self.default, self.particles, state=state, args=args)

    def _finish_config(self, config: Config) -> None:
        unknown = sorted(set(self.strategies) - config.used)
        if unknown:
            address = unknown[0]
            raise ValueError(
                f"strategies: no sample site or log_expectation at address '{format_address(address)}' in "
                f"{self.objective!r}; its addresses are {listing(config.seen)}{suggest(address, config.seen)}"
            )
        for message in config.warnings():
            if message not in self._warned:
                self._warned.add(message)
                warnings.warn(message, StrategyWarning, stacklevel=4)

    def _run(self, key: jax.Array, args: tuple, state: Any) -> tuple[Any, jax.Array, Any, Config]:
        """``(value or (value, aux), surrogate, new state, config)``."""
        config = self._config(args, state)
        if self.in_axes is None:
            value, surrogate, aux, out = self._run_one(key, args, config)
        else:
            size = batch_size(args[1:], self.in_axes)
            keys = jax.random.split(key, size)
            axes = (None, *self.in_axes)
            values, surrogates, aux, out = jax.vmap(
                lambda k, a: self._run_one(k, a, config), in_axes=(0, axes)
            )(keys, args)
            reduce = jnp.mean if self.reduce == "mean" else jnp.sum
            value, surrogate = reduce(values), reduce(surrogates)
        self._finish_config(config)
        new_state = self._update_state(config, state, aux, args)
        return ((value, out) if self.has_aux else value), surrogate, new_state, config

    def _scope(self, key: jax.Array, args: tuple, config: Config) -> tuple[Any, Any]:
        """One run of the program: its scope result and its ``aux`` output (``None`` without)."""
        if not self.has_aux:
            return run_scope(self.objective.fn, args, key, {}, config), None
        outputs: list[Any] = []

        def program(*a: Any) -> Any:
            out = self.objective.fn(*a)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(
                    f"{self.objective!r} is estimated with has_aux=True: return (value, aux), "
                    f"got {type(out).__name__}"
                )
            outputs.append(out[1])
            return out[0]

        result = run_scope(program, args, key, {}, config)
        last = result.entries[-1] if result.entries else None
        if isinstance(last, SiteEntry) and last.strategy is not None and last.strategy.replaces_continuation:
            # The program stopped at a continuation strategy's site: its aux is that of the
            # sampled continuation, the program re-run with the same choices and keys.
            outputs.clear()
            plain = dataclasses.replace(config, plain=True)
            run_scope(program, args, key, site_values(result.entries), plain)
        # Otherwise the first run is the program's own; later ones are continuation re-runs.
        return result, jax.tree_util.tree_map(sg, outputs[0])

    def _run_one(self, key: jax.Array, args: tuple, config: Config) -> tuple[jax.Array, jax.Array, Aux, Any]:
        """One datum: ``particles`` independent runs, leave-one-out terms finished."""
        if self.particles == 1:
            result, out = self._scope(key, args, config)
            return result.value, result.surrogate, result.aux, out
        keys = jax.random.split(key, self.particles)

        def one(k: jax.Array) -> tuple[jax.Array, jax.Array, Aux, Any]:
            r, out = self._scope(k, args, config)
            return r.value, r.surrogate, r.aux, out

        values, surrogates, aux, out = jax.vmap(one)(keys)
        surrogate = jnp.mean(surrogates) + finish_deferred(aux.deferred, self.particles)
        return jnp.mean(values), surrogate, Aux([], aux.stats), out

    def _update_state(self, config: Config, state: Any, aux: Aux, args: tuple) -> Any:
        if state is None:
            return {}
        new_state = dict(state)
        for address, baseline in config.stateful.items():
            if self.in_axes is not None and hasattr(baseline, "optimizer"):
                raise ValueError(
                    f"address '{address}': learned baselines are not available with in_axes batching yet; "
                    "use running_average or leave_one_out"
                )
            ds = [d for a, d in aux.stats if a == address]
            if ds:
                new_state[address] = baseline.update(state[address], ds, args)
        return new_state

    # -- the compiled steps ----------------------------------------------------
    def _value_and_grad_impl(self, key: jax.Array, args: tuple, state: Any) -> Estimate:
        params, data = args[0], args[1:]
        check_params(params)  # at trace time: dtypes and structure are what jit compiles for
        reached: list[bool] = []

        def surrogate_fn(p: Any) -> tuple[jax.Array, tuple[Any, Any]]:
            p = jax.tree_util.tree_map(lambda leaf: probe(leaf, reached), p)
            value, surrogate, new_state, _ = self._run(key, (p, *data), state)
            return surrogate, (value, new_state)

        try:
            grad, (value, new_state) = jax.grad(surrogate_fn, has_aux=True)(params)
        except (TypeError, IndexError, KeyError) as e:
            e.add_note(
                f"(while tracing {self.objective!r} with params = {summary(params)} and data = "
                f"{summary(data)}: the call is value_and_grad(key, params, *data), parameters first)"
            )
            raise
        if not any(reached):
            raise ValueError(
                f"value_and_grad: the value of {self.objective!r} does not depend on params, the first "
                f"argument after the key (got {summary(params)}); call value_and_grad(key, params, *data) "
                "with the parameters to differentiate first and the data after them"
            )
        return Estimate(value, grad, new_state)

    def _estimate_impl(self, key: jax.Array, args: tuple, state: Any) -> Any:
        return self._run(key, args, state)[0]

    def _mode(self) -> str:
        if self.checks is not None:
            return self.checks
        return "deferred" if _checks.runtime_checks() else "off"

    def _compiled_fn(self, which: str, checked: bool) -> Any:
        """The compiled step: ``out``, or ``(flags, out)`` when ``checked`` (flags: all true when
        the value, and each gradient leaf, are finite)."""
        fn = self._compiled.get((which, checked))
        if fn is None:
            impl = self._value_and_grad_impl if which == "value_and_grad" else self._estimate_impl

            def traced(key: jax.Array, args: tuple, state: Any) -> Any:
                with _checks.mode("carry" if checked else "off"):
                    out = impl(key, args, state)
                return (finite_flags(which, out, self.has_aux), out) if checked else out

            fn = jax.jit(traced) if self._jit else traced
            self._compiled[(which, checked)] = fn
        return fn

    def _call(self, which: str, key: jax.Array, args: tuple, state: Any) -> Any:
        mode = self._mode()
        if mode == "off":
            return self._compiled_fn(which, False)(key, args, state)
        flags, out = self._compiled_fn(which, True)(key, args, state)
        if is_traced(flags):  # inside the caller's jit/vmap: a callback raises
            return tie(out, raise_in_program(confirmed(which, flags, out), self, which))
        previous, self._pending = self._pending, None
        first = self._calls == 0
        self._calls += 1
        if previous is not None:
            self._settle(
                previous, "the previous call of this estimator (reported one call late: checks='deferred')"
            )
        current = (which, key, args, state, flags, out)
        if mode == "sync" or first:
            self._settle(current, None)
        else:
            self._pending = current
        return out

    def _settle(self, call: tuple, when: str | None) -> None:
        """Block on a call's flags; if one is down (a down gradient screen once confirmed entry by
        entry on the host), diagnose the call and raise."""
        which, key, args, state, flags, out = call
        flags = np.asarray(flags)
        if flags.all():
            return
        if which == "value_and_grad" and flags[0] and first_non_finite_leaf(args[0], out.grad) is None:
            return  # the gradient screen's sum overflowed; every entry is finite
        self._diagnose(which, key, args, state, out, when)

    def _diagnose(
        self, which: str, key: jax.Array, args: tuple, state: Any, out: Any, when: str | None
    ) -> None:
        """Re-run a call eagerly with traced checks recorded; raise the first failure, else say
        which of the output's value or gradient leaves (``out``'s, or the re-run's) is not finite."""
        suffix = "" if when is None else f" [in {when}]"
        impl = self._value_and_grad_impl if which == "value_and_grad" else self._estimate_impl
        try:
            with _checks.diagnosing() as failures:
                rerun = jax.block_until_ready(impl(key, args, state))
                jax.effects_barrier()
                recorded = sorted(failures)
        except ValueError as e:
            raise ValueError(f"{e}{suffix}") from None
        if recorded:
            raise ValueError(recorded[0][1] + suffix)
        message = non_finite_message(
            self.objective, which, args[0], rerun if out is None else out, self.has_aux
        )
        if message is not None:
            raise ValueError(message + suffix)
        if out is not None:  # the compiled step's flags were down, yet nothing is found
            raise ValueError(f"{self!r}: the {which} step reported a non-finite result{suffix}")

    # -- public ----------------------------------------------------------------

    def init(self, params: Any = None, *data: Any) -> dict[str, Any]:
        """The estimator state: one entry per site with a stateful baseline or estimator."""
        args = () if params is None and not data else (params, *data)
        found: dict[str, Any] = {}

        def trace() -> None:
            config = self._config(args, None)
            config.state = _InitState(config)
            with _checks.mode("off"):
                self._run_for_init(config, args)
            found.update(config.stateful)

        jax.eval_shape(trace)
        return {address: baseline.init() for address, baseline in found.items()}

    def _run_for_init(self, config: Config, args: tuple) -> None:
        key = jax.random.key(0)
        if self.in_axes is None:
            self._run_one(key, args, config)
        else:
            keys = jax.random.split(key, batch_size(args[1:], self.in_axes))
            axes = (None, *self.in_axes)
            jax.vmap(lambda k, a: self._run_one(k, a, config)[0], in_axes=(0, axes))(keys, args)

    def value_and_grad(self, key: jax.Array, params: Any, *data: Any, state: Any = None) -> Estimate:
        """``(value, grad, state)``: the objective's value, its gradient w.r.t. ``params``, the new state."""
        return self._call("value_and_grad", key, (params, *data), state)

    def grad(self, key: jax.Array, params: Any, *data: Any, state: Any = None) -> Any:
        """The gradient estimate alone (a pytree like ``params``); ``state`` is read, not advanced."""
        return self.value_and_grad(key, params, *data, state=state).grad

    def estimate(self, key: jax.Array, *args: Any, state: Any = None) -> Any:
        """The plain Monte Carlo value for ``key`` (with ``has_aux``, ``(value, aux)``);
        ``args`` are ``params, *data``."""
        return self._call("estimate", key, args, state)

    def check(self) -> None:
        """Raise the failure of the last call, if any (waits for that call to finish)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._settle(pending, "the last call of this estimator")

    def diagnose(self, key: jax.Array, params: Any, *data: Any, state: Any = None) -> None:
        """Run ``value_and_grad`` eagerly with every traced check recorded; raise the first failure
        (or name the non-finite value or gradient leaf); return ``None`` when all is well.

        For a failure seen inside your own ``jit``/``vmap``, where the estimator cannot re-run.
        """
        self._diagnose("value_and_grad", key, (params, *data), state, None, None)

    def explain(self, params: Any = None, *data: Any, show: bool = True) -> Explanation:
        """Per address: the strategy, its baseline and the rule that chose it (printed when ``show``).

        Traces the objective abstractly with these arguments (nothing is computed).
        """
        args = () if params is None and not data else (params, *data)
        box: list[Config] = []

        def trace() -> None:
            config = self._config(args, None)
            config.state = _InitState(config)
            with _checks.mode("off"):
                self._run_for_init(config, args)
            box.append(config)

        jax.eval_shape(trace)
        config = box[0]
        self._finish_config(config)
        explanation = Explanation(tuple(config.decisions.values()))
        if show:
            print(explanation)
        return explanation


class _InitState(dict):
    """During ``init``: each stateful baseline reads its own initial state."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config

    def __contains__(self, key: object) -> bool:
        return key in self.config.stateful

    def __getitem__(self, key: str) -> Any:
        return self.config.stateful[key].init()
