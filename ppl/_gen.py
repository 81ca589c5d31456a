"""Generative functions: ``@gen``, ``sample``, traces."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax

from ppl._choice_map import Address, ChoiceMap, as_address, flatten, unflatten
from ppl._distributions import as_distribution
from ppl._handlers import Handler, check_context, current
from ppl._interpreter import Interpreter


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Trace:
    """One execution of a generative function.

    Attributes:
        choices: the random choices, a nested dict keyed by address.
        retval: the function's return value.
        score: ``log p(choices; args)``, the joint log density of all choices.
    """

    choices: ChoiceMap
    retval: Any
    score: jax.Array


class GenerativeFunction:
    """A Python function with addressed random choices.

    Create one with :func:`gen`. All methods are pure and take explicit keys, so
    they compose with ``jax.jit``, ``jax.vmap`` and ``jax.grad``.
    """

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<generative function {getattr(self.fn, '__name__', self.fn)!r}>"

    def __call__(self, *args: Any) -> Any:
        raise TypeError(
            f"{self!r} is a generative function: call it as ppl.sample(address, g, *args) "
            "inside another program, or use g.simulate(key, *args)"
        )

    # How the function runs under a handler at ``addr``; combinators override.
    def invoke(self, handler: Handler, addr: Address, args: tuple) -> Any:
        return handler.call(addr, self.fn, args)

    def _interpret(self, handler: Interpreter, args: tuple) -> Any:
        with handler:
            retval = self.invoke(handler, (), args)
        handler.check_all_used()
        return retval

    def simulate(self, key: jax.Array, *args: Any) -> Trace:
        """Run forward, drawing every choice: a trace with its joint log density."""
        handler = Interpreter(key, {}, "simulate", program=repr(self))
        retval = self._interpret(handler, args)
        return Trace(unflatten(handler.choices), retval, handler.score)

    def assess(self, choices: ChoiceMap, *args: Any) -> tuple[jax.Array, Any]:
        """``(log p(choices; args), retval)`` with every choice given."""
        handler = Interpreter(None, flatten(choices), "assess", program=repr(self))
        retval = self._interpret(handler, args)
        return handler.score, retval

    def generate(self, key: jax.Array, constraints: ChoiceMap, *args: Any) -> tuple[Trace, jax.Array]:
        """Importance step: constrained choices fixed, the rest drawn from the program.

        Returns the trace and the log weight ``log p(constraints | drawn choices)``,
        the sum of the constrained sites' log densities (the proposal for the
        unconstrained choices is the program itself, so their terms cancel).
        """
        handler = Interpreter(key, flatten(constraints), "generate", program=repr(self))
        retval = self._interpret(handler, args)
        return Trace(unflatten(handler.choices), retval, handler.score), handler.weight


def gen(fn: Callable[..., Any]) -> GenerativeFunction:
    """Turn a Python function with ``ppl.sample`` sites into a generative function.

    Example:
        >>> import jax, numpyro.distributions as dist, ppl
        >>> @ppl.gen
        ... def model(mu):
        ...     z = ppl.sample("z", dist.Normal(mu, 1.0))
        ...     return ppl.sample("x", dist.Normal(z, 0.5))
        >>> trace = model.simulate(jax.random.key(0), 0.0)
        >>> sorted(trace.choices)
        ['x', 'z']
    """
    return GenerativeFunction(fn)


def sample(addr: str | Address, d: Any, *args: Any) -> Any:
    """A random choice at ``addr``: from a distribution, or a nested generative call.

    ``d`` is a NumPyro distribution, a TFP-on-JAX distribution, or a
    :class:`GenerativeFunction` (then ``args`` are its arguments and its choices
    nest under ``addr``). What the site does (draw, read a value, apply a
    gradient strategy) is decided by the enclosing handler.
    """
    address = as_address(addr)
    handler = current()
    if handler is None:
        raise RuntimeError(
            f"ppl.sample('{'/'.join(address)}', ...) was called outside a program: call it "
            "inside a @ppl.gen function or an @expectation objective"
        )
    check_context(handler, f"ppl.sample('{'/'.join(address)}', ...)")
    if isinstance(d, GenerativeFunction):
        return d.invoke(handler, address, args)
    if args:
        raise TypeError(f"address '{'/'.join(address)}': extra arguments are only for generative functions")
    return handler.sample(address, as_distribution(d, address))
