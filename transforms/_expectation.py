"""``@expectation`` objective programs and their gradient estimators."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from ppl.transforms._estimator import Estimate, Estimator
from ppl.transforms._resolution import Config
from ppl.transforms._scope import EstimatorHandler, new_frame, run_scope
from ppl.transforms._strategies import LogExpectationEstimator, Strategy, auto

from ppl._choice_map import Address, ChoiceMap, as_address, flatten, format_address, unflatten
from ppl._gen import GenerativeFunction, Trace
from ppl._handlers import current

sg = jax.lax.stop_gradient


def _handler(what: str) -> EstimatorHandler:
    handler = current()
    if not isinstance(handler, EstimatorHandler):
        raise RuntimeError(f"{what} is only available inside an @expectation objective program")
    return handler


def _run_frame(
    handler: EstimatorHandler,
    g: GenerativeFunction,
    args: tuple,
    observed: dict[Address, Any] | None = None,
    select: tuple[Address, ...] | None = None,
) -> tuple[Trace, jax.Array, jax.Array]:
    """Run ``g`` under ``handler`` at its current prefix, recording a frame.

    Returns the trace (addresses relative to the prefix), the log density of the
    ``observed`` sites, and the log density of the sites under ``select``.
    """
    prefix = handler._prefix
    observed_full = {prefix + a: v for a, v in (observed or {}).items()}
    clash = set(observed_full) & set(handler.observed)
    if clash:
        raise ValueError(f"generate: address '{format_address(min(clash))}' is constrained twice")
    frame = new_frame(None if select is None else tuple(prefix + a for a in select))
    handler.frames.append(frame)
    handler.observed.update(observed_full)
    try:
        retval = g.invoke(handler, (), args)
    finally:
        handler.frames[:] = [f for f in handler.frames if f is not frame]
        for a in observed_full:
            handler.observed.pop(a, None)
    missing = sorted(set(observed_full) - set(frame["choices"]))
    if missing:
        raise ValueError(
            f"generate: the choice map has address '{format_address(missing[0][len(prefix) :])}', "
            f"which {g!r} never samples"
        )
    choices = {a[len(prefix) :]: v for a, v in frame["choices"].items()}
    return Trace(unflatten(choices), retval, frame["score"]), frame["weight"], frame["selected"]


def _check_gen(g: Any, what: str) -> None:
    if not isinstance(g, GenerativeFunction):
        raise TypeError(f"{what} expects a generative function, got {type(g).__name__}")


def sim(g: GenerativeFunction, *args: Any, differentiate: bool = True) -> Trace:
    """Sample a trace of ``g`` inside an objective; each site follows its strategy.

    The trace's ``score`` is ``log g(choices; args)``, differentiable in the
    parameters (and in the choices of reparameterized sites). For a generative
    function with an estimated density (:func:`marginal`, :func:`normalize`)
    ``-score`` is the log of an unbiased estimate of the *reciprocal* density.

    With ``differentiate=False`` the sampler is not differentiated: the arguments are
    stopped, the sites are drawn without strategies (no surrogate terms, nothing for
    ``auto()`` to choose) and the whole trace carries no gradient. Objectives whose
    gradient comes from re-scoring the samples (VIMCO, wake-sleep) draw them this way.
    """
    handler = _handler("sim")
    _check_gen(g, "sim")
    if differentiate:
        return _run_frame(handler, g, args)[0]
    with handler.frozen_scope():
        trace = _run_frame(handler, g, stop_gradient(args))[0]
    return stop_gradient(trace)


def stop_gradient(tree: Any) -> Any:
    """``jax.lax.stop_gradient`` on every array leaf of ``tree`` (other leaves unchanged)."""

    def stop(leaf: Any) -> Any:
        return (
            jax.lax.stop_gradient(leaf)
            if isinstance(leaf, jax.Array | np.ndarray | np.generic | float)
            else leaf
        )

    return jax.tree_util.tree_map(stop, tree)


def generate(g: GenerativeFunction, constraints: ChoiceMap, *args: Any) -> tuple[Trace, jax.Array]:
    """Importance step inside an objective: constrained choices fixed, the others sampled.

    Returns ``(trace, log_weight)``: the unconstrained sites are drawn from the
    program itself (each by its strategy), and ``log_weight`` is the sum of the
    constrained sites' log densities, ``log g(constraints | other choices)``:
    ``E[exp(log_weight)]`` is the marginal density of the constraints.
    """
    handler = _handler("generate")
    _check_gen(g, "generate")
    trace, weight, _ = _run_frame(handler, g, args, observed=flatten(constraints))
    return trace, weight


def density(g: GenerativeFunction, choices: ChoiceMap, *args: Any) -> jax.Array:
    """``log g(choices; args)``: every address of ``g`` must be given, and no other.

    For a generative function with an estimated density (:func:`marginal`,
    :func:`normalize`) this is the log of an unbiased estimate of the density,
    computed with sample sites of the enclosing objective (so only inside one).
    """
    _check_gen(g, "density")
    estimated = getattr(g, "density_in_objective", None)
    if estimated is not None:
        return estimated(_handler("density of an estimated-density generative function"), choices, args)
    return g.assess(choices, *args)[0]


def resolved_strategies(prefix: str | Address = ()) -> dict[Address, Strategy]:
    """Inside an objective: the strategies the sample sites under ``prefix`` have resolved to so far.

    Keys are full addresses; ``prefix`` is relative to the current program (``()``: all).
    Objectives that need a property of their sites' gradients (DReG needs pathwise ones)
    ask here, after sampling them.
    """
    handler = _handler("resolved_strategies")
    base = handler.base + handler._prefix + (as_address(prefix) if prefix else ())
    return {
        address: decision.strategy
        for address, decision in handler.config.decisions.items()
        if address[: len(base)] == base and isinstance(decision.strategy, Strategy)
    }


def add_cost(cost: jax.Array) -> None:
    """Add a scalar to the objective's value at this point of the program.

    The scope's value is the sum of its added costs and its return value. A
    score-function term multiplies only the costs added after its site (causal
    Rao-Blackwellization), so adding costs as soon as they are known lowers
    variance without changing the expectation.
    """
    _handler("add_cost").add_cost(cost, "add_cost's argument")


class Expectation:
    """An objective program: its expected value is the objective.

    Create with :func:`expectation`. ``estimator(...)`` picks strategies;
    ``estimate``/``value_and_grad`` here use the default estimator (``auto()``).
    Calling it inside another objective program opens a nested scope whose
    estimate (value and surrogate gradient) is used as a deterministic value.
    """

    def __init__(self, fn: Callable[..., Any], has_aux: bool = False):
        self.fn = fn
        self.has_aux = has_aux
        functools.update_wrapper(self, fn)
        self._default: Estimator | None = None

    def __repr__(self) -> str:
        return f"<expectation {getattr(self.fn, '__name__', self.fn)!r}>"

    def estimator(
        self,
        strategies: dict[str | Address, Strategy | LogExpectationEstimator] | None = None,
        default: Strategy | None = None,
        particles: int = 1,
        in_axes: tuple | None = None,
        reduce: str = "mean",
        has_aux: bool | None = None,
        jit: bool = True,
        checks: str | None = None,
    ) -> Estimator:
        """A gradient estimator with per-address ``strategies`` (others use ``default``).

        Called as ``value, grad, state = est.value_and_grad(key, params, *data)``: the
        first argument after the key is what is differentiated (see :class:`Estimator`).
        ``in_axes`` (as in ``jax.vmap``, one entry per data argument) runs the objective
        once per datum of a batch, each with its own key, and reduces the values with
        ``reduce`` (``"mean"`` or ``"sum"``). With ``has_aux`` (default: as declared by
        :func:`expectation`) the program returns ``(value, aux)`` as with
        ``jax.value_and_grad``: ``aux`` (any pytree, gradient stopped) comes back beside
        the value, stacked along a leading axis per particle and per datum. ``checks``:
        ``"deferred"``, ``"sync"`` or ``"off"`` (default: :func:`ppl.set_runtime_checks`).
        """
        return Estimator(
            self,
            strategies or {},
            default or auto(),
            particles,
            in_axes=in_axes,
            reduce=reduce,
            has_aux=self.has_aux if has_aux is None else has_aux,
            jit=jit,
            checks=checks,
        )

    @property
    def default_estimator(self) -> Estimator:
        if self._default is None:
            self._default = self.estimator()
        return self._default

    def estimate(self, key: jax.Array, *args: Any) -> jax.Array:
        """A plain Monte Carlo estimate of the objective (one run, no strategies)."""
        if self.has_aux:
            return self.default_estimator.estimate(key, *args)
        config = Config({}, auto(), 1, plain=True, args=args)
        return run_scope(self.fn, args, key, {}, config).value

    def value_and_grad(self, key: jax.Array, params: Any, *data: Any) -> Estimate:
        """``(value, grad, state)`` of the default estimator (``auto()``), w.r.t. ``params``."""
        return self.default_estimator.value_and_grad(key, params, *data)

    def __call__(self, *args: Any) -> jax.Array:
        handler = current()
        if not isinstance(handler, EstimatorHandler):
            raise RuntimeError(
                f"{self!r} is an objective program: use .estimate(key, *args), "
                ".value_and_grad(key, *args) or .estimator(...)"
            )
        if self.has_aux:
            raise ValueError(f"{self!r} returns (value, aux): it cannot be nested in another objective")
        result = run_scope(self.fn, args, handler.next_key(), {}, handler.config, handler.in_block)
        handler.aux.extend(result.aux)
        # The plain Monte Carlo value, with the estimator's gradient.
        return result.value + result.surrogate - sg(result.surrogate)


def expectation(fn: Callable[..., Any] | None = None, *, has_aux: bool = False) -> Any:
    """Mark a function as an objective program; its expected value is the objective.

    Inside, ``ppl.sample`` draws random choices, :func:`sim` samples traces of
    generative functions, :func:`density` evaluates log densities and
    :func:`add_cost` adds terms. The return value (a scalar) is added last; with
    ``@expectation(has_aux=True)`` the program returns ``(value, aux)`` and its
    estimators return ``aux`` beside the value.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, ppl
        >>> from ppl import transforms as T
        >>> @T.expectation
        ... def objective(theta):
        ...     x = ppl.sample("x", dist.Normal(theta, 1.0))
        ...     return x**2
        >>> est = objective.estimator(strategies={"x": T.reinforce()})
        >>> value, grad = est.value_and_grad(jax.random.key(0), 1.0)
    """
    if fn is None:
        return lambda f: Expectation(f, has_aux)
    return Expectation(fn, has_aux)
