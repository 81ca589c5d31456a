"""``@expectation`` objective programs and their gradient estimators."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from ppl.transforms._baselines import leave_one_out_mean
from ppl.transforms._ledger import SiteEntry, site_values
from ppl.transforms._scope import Aux, Config, EstimatorHandler, new_frame, run_scope
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


def sim(g: GenerativeFunction, *args: Any) -> Trace:
    """Sample a trace of ``g`` inside an objective; each site follows its strategy.

    The trace's ``score`` is ``log g(choices; args)``, differentiable in the
    parameters (and in the choices of reparameterized sites). For a generative
    function with an estimated density (:func:`marginal`, :func:`normalize`)
    ``-score`` is the log of an unbiased estimate of the *reciprocal* density.
    """
    handler = _handler("sim")
    _check_gen(g, "sim")
    return _run_frame(handler, g, args)[0]


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
        argnums: int | tuple[int, ...] = 0,
        jit: bool = True,
        in_axes: Any = None,
        reduce: str = "mean",
        has_aux: bool | None = None,
    ) -> Estimator:
        """A gradient estimator with per-address ``strategies`` (others use ``default``).

        ``in_axes`` (as in ``jax.vmap``, one entry per argument) runs the
        objective once per datum of a batch, each with its own key, and reduces
        the values with ``reduce`` (``"mean"`` or ``"sum"``). With ``has_aux``
        (default: as declared by :func:`expectation`) the program returns
        ``(value, aux)`` as with ``jax.value_and_grad``: ``aux`` (any pytree,
        gradient stopped) comes back beside the value, stacked along a leading
        axis per particle and per datum.
        """
        return Estimator(
            self,
            strategies or {},
            default or auto(),
            particles,
            argnums,
            jit,
            in_axes=in_axes,
            reduce=reduce,
            has_aux=self.has_aux if has_aux is None else has_aux,
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

    def value_and_grad(self, key: jax.Array, *args: Any) -> tuple[jax.Array, Any]:
        """``(value, gradient)`` of the default estimator, w.r.t. the first argument."""
        return self.default_estimator.value_and_grad(key, *args)

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


class Estimator:
    """A jitted gradient estimator of an objective program.

    Two call forms::

        value, grad = est.value_and_grad(key, *args)                  # stateless
        (value, grad), state = est.value_and_grad(key, *args, state=state)

    With ``has_aux=True`` every ``value`` above is ``(value, aux)``.

    The second is required when any site has a stateful baseline
    (``running_average``, ``learned``); create the state with
    ``est.init(*args)``. The gradient is w.r.t. ``args[argnums]`` (a pytree,
    Optax-ready: for maximization pass ``-grad`` to ``optimizer.update``).

    With ``particles=K`` the objective is run K times independently (vmapped);
    the value is the mean and ``leave_one_out`` baselines use the other
    particles.
    """

    def __init__(
        self,
        objective: Expectation,
        strategies: dict[str | Address, Strategy | LogExpectationEstimator],
        default: Strategy,
        particles: int,
        argnums: int | tuple[int, ...],
        jit: bool,
        in_axes: Any = None,
        reduce: str = "mean",
        has_aux: bool = False,
    ):
        if particles < 1:
            raise ValueError(f"particles must be >= 1, got {particles}")
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
        if in_axes is not None and not isinstance(in_axes, tuple):
            raise TypeError(f"in_axes must be a tuple with one entry per argument, got {in_axes!r}")
        self.in_axes, self.reduce, self.has_aux = in_axes, reduce, has_aux
        for s in (*strategies.values(), default):
            if not isinstance(s, Strategy | LogExpectationEstimator):
                raise TypeError(f"strategies must be Strategy objects, got {s!r}")
        if isinstance(default, LogExpectationEstimator):
            raise TypeError(f"default must be a sample-site Strategy, got {default!r}")
        self.objective = objective
        self.strategies = {as_address(k): v for k, v in strategies.items()}
        self.default = default
        self.particles = particles
        self.argnums = argnums
        self._value_and_grad = jax.jit(self._value_and_grad_impl) if jit else self._value_and_grad_impl
        self._estimate = jax.jit(self._estimate_impl) if jit else self._estimate_impl

    def _config(self, args: tuple, state: Any) -> Config:
        return Config(self.strategies, self.default, self.particles, state=state, args=args)

    def _check_addresses(self, config: Config) -> None:
        unknown = sorted(set(self.strategies) - config.used)
        if unknown:
            raise ValueError(
                f"strategies: no sample site at address '{format_address(unknown[0])}' in {self.objective!r}"
            )

    def _run(self, key: jax.Array, args: tuple, state: Any) -> tuple[Any, jax.Array, Any, Config]:
        """``(value or (value, aux), surrogate, new state, config)``."""
        config = self._config(args, state)
        if self.in_axes is None:
            value, surrogate, aux, out = self._run_one(key, args, config)
        else:
            size = _batch_size(args, self.in_axes)
            keys = jax.random.split(key, size)
            values, surrogates, aux, out = jax.vmap(
                lambda k, a: self._run_one(k, a, config), in_axes=(0, self.in_axes)
            )(keys, args)
            reduce = jnp.mean if self.reduce == "mean" else jnp.sum
            value, surrogate = reduce(values), reduce(surrogates)
        self._check_addresses(config)
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
        value, surrogate = jnp.mean(values), jnp.mean(surrogates)
        for w, lp, d in aux.deferred:
            b = leave_one_out_mean(d, axis=0)
            surrogate = surrogate + jnp.sum(w * sg(d - b) * (lp - sg(lp))) / self.particles
        return value, surrogate, Aux([], aux.stats), out

    def _update_state(self, config: Config, state: Any, aux: Aux, args: tuple) -> Any:
        if state is None:
            return None
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

    def _split_args(self, args: tuple) -> tuple[Callable[[Any], tuple], Any]:
        nums = (self.argnums,) if isinstance(self.argnums, int) else tuple(self.argnums)
        for n in nums:
            if not -len(args) <= n < len(args):
                raise ValueError(f"argnums {self.argnums} out of range for {len(args)} arguments")

        def rebuild(diff: Any) -> tuple:
            full = list(args)
            parts = (diff,) if isinstance(self.argnums, int) else diff
            for n, part in zip(nums, parts):
                full[n] = part
            return tuple(full)

        diff = args[self.argnums] if isinstance(self.argnums, int) else tuple(args[n] for n in nums)
        return rebuild, diff

    def _value_and_grad_impl(self, key: jax.Array, args: tuple, state: Any) -> Any:
        rebuild, diff = self._split_args(args)

        def surrogate_fn(diff: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
            value, surrogate, new_state, _ = self._run(key, rebuild(diff), state)
            return surrogate, (value, new_state)

        grad, (value, new_state) = jax.grad(surrogate_fn, has_aux=True)(diff)
        return value, grad, new_state

    def _estimate_impl(self, key: jax.Array, args: tuple, state: Any) -> Any:
        return self._run(key, args, state)[0]

    def init(self, *args: Any) -> dict[str, Any]:
        """The estimator state: one entry per site with a stateful baseline."""
        found: dict[str, Any] = {}

        def trace() -> None:
            config = self._config(args, None)
            config.state = _InitState(config)
            self._run_for_init(config, args)
            found.update(config.stateful)

        jax.eval_shape(trace)
        return {address: baseline.init() for address, baseline in found.items()}

    def _run_for_init(self, config: Config, args: tuple) -> None:
        key = jax.random.key(0)
        if self.in_axes is None:
            self._run_one(key, args, config)
        else:
            keys = jax.random.split(key, _batch_size(args, self.in_axes))
            jax.vmap(lambda k, a: self._run_one(k, a, config)[0], in_axes=(0, self.in_axes))(keys, args)

    def value_and_grad(self, key: jax.Array, *args: Any, state: Any = None) -> Any:
        """``(value, grad)``, or ``((value, grad), new_state)`` when ``state`` is given."""
        value, grad, new_state = self._value_and_grad(key, args, state)
        if state is None:
            return value, grad
        return (value, grad), new_state

    def grad(self, key: jax.Array, *args: Any, state: Any = None) -> Any:
        """The gradient estimate alone (and the new state when ``state`` is given)."""
        out = self.value_and_grad(key, *args, state=state)
        return out[1] if state is None else (out[0][1], out[1])

    def estimate(self, key: jax.Array, *args: Any, state: Any = None) -> Any:
        """The estimator's value (with ``has_aux``, ``(value, aux)``): the plain Monte Carlo
        value for the same key."""
        return self._estimate(key, args, state)


def _batch_size(args: tuple, in_axes: tuple) -> int:
    """The mapped size, found the way ``jax.vmap`` matches ``in_axes`` to ``args``."""
    if len(in_axes) != len(args):
        raise ValueError(f"in_axes has {len(in_axes)} entries for {len(args)} arguments")
    if all(a is None for a in jax.tree_util.tree_leaves(in_axes, is_leaf=lambda a: a is None)):
        raise ValueError("in_axes maps no argument: give at least one batched argument")
    ones = jax.vmap(lambda *a: jnp.zeros(()), in_axes=in_axes)
    return jax.eval_shape(ones, *args).shape[0]


class _InitState(dict):
    """During ``init``: each stateful baseline reads its own initial state."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config

    def __contains__(self, key: object) -> bool:
        return key in self.config.stateful

    def __getitem__(self, key: str) -> Any:
        return self.config.stateful[key].init()
