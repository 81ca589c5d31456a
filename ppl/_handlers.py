"""The effect-handler stack behind ``ppl.sample``.

A handler decides what a sample site does: draw, read a given value, or apply a
gradient strategy. Handlers live on a Python-level stack, so everything here
is ordinary tracing with public JAX APIs: it works under ``jit``, ``vmap`` and
``grad`` alike.

Combinators (``ppl.vmap``, ``ppl.scan``) run their body inside ``jax.vmap`` or
``jax.lax.scan``. A handler cannot carry Python state across that boundary,
so it opens a *block*: it hands the body per-element inputs, runs a child
handler inside the traced body, and absorbs the child's stacked records.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import jax
from numpyro.distributions import Distribution

from ppl._choice_map import Address, format_address
from ppl._compat import trace_state
from ppl._foreign import ForeignEffectGuard

_STACK: list[Handler] = []


def current() -> Handler | None:
    """The innermost active handler, or ``None`` outside any program."""
    return _STACK[-1] if _STACK else None


class Handler(abc.ABC):
    """Base class: address bookkeeping, nesting and the block protocol."""

    #: What runs under this handler, for messages ("program", "objective").
    kind = "program"

    def __init__(self) -> None:
        self._prefix: Address = ()
        self._seen: set[Address] = set()
        self._guard = ForeignEffectGuard(self.kind)
        #: ``None``, or a boolean scalar: whether the branches of ``ppl.switch``/``ppl.cond``
        #: enclosing the sites being run are all selected (a site in an unselected branch is
        #: not part of the execution: its log density counts 0 and its checks do not apply).
        self.mask: jax.Array | None = None

    def __enter__(self) -> Handler:
        # Sample sites must run in the transformation context the handler was entered in: a
        # site inside a jax.lax.cond branch (or a raw jax.vmap/while_loop) would leak its values.
        self.trace = trace_state()
        _STACK.append(self)
        self._guard.__enter__()
        # ppl's checks (the same constraints, with the site's address) replace NumPyro's
        # eager argument validation inside programs.
        self._numpyro_validation = Distribution._validate_args
        Distribution.set_default_validate_args(False)
        return self

    def __exit__(self, *exc: Any) -> None:
        Distribution.set_default_validate_args(self._numpyro_validation)
        self._guard.__exit__(*exc)
        popped = _STACK.pop()
        assert popped is self

    # -- addresses -----------------------------------------------------------
    def claim(self, addr: Address, what: str) -> Address:
        """Register ``prefix + addr``; the same address twice is an error."""
        return self.claim_full(self._prefix + addr, what)

    def claim_full(self, full: Address, what: str) -> Address:
        """Register a full address; the same address twice is an error."""
        if full in self._seen:
            raise ValueError(
                f"address '{format_address(full)}' ({what}) is sampled twice in one "
                "program; give each sample site its own address"
            )
        for other in self._seen:
            n = min(len(other), len(full))
            if other[:n] == full[:n]:
                raise ValueError(
                    f"address '{format_address(full)}' ({what}) overlaps address "
                    f"'{format_address(other)}': one is a prefix of the other"
                )
        self._seen.add(full)
        return full

    def call(self, addr: Address, body: Callable[..., Any], args: tuple) -> Any:
        """Run a nested generative function's body at ``addr``."""
        saved = self._prefix
        self._prefix = saved + addr
        try:
            return body(*args)
        finally:
            self._prefix = saved

    def masked(self, value: jax.Array, fill: Any = 0.0) -> jax.Array:
        """``value`` (a log density, a cost) where the enclosing branches are selected, else ``fill``."""
        return value if self.mask is None else jax.numpy.where(self.mask, value, fill)

    # -- what subclasses define ------------------------------------------------
    @abc.abstractmethod
    def sample(self, addr: Address, d: Any) -> Any: ...

    @abc.abstractmethod
    def block_inputs(self, addr: Address, size: int, own: Callable[[], set[Address] | None]) -> Any:
        """Per-element inputs (leading axis ``size``) for a block at ``addr``.

        ``own()`` gives the set of the block's relative addresses when the block
        has no address of its own, else ``None`` (everything under ``addr``);
        it costs an abstract trace, so call it only when values are given.
        """
        ...

    @abc.abstractmethod
    def child(self, inputs: Any) -> Handler:
        """A handler for one element of a block, given its slice of the inputs."""
        ...

    @abc.abstractmethod
    def discovery_child(self, key: jax.Array) -> Handler:
        """A handler that just draws, used to find a block's addresses."""
        ...

    @abc.abstractmethod
    def sampled_addresses(self) -> set[Address]: ...

    @abc.abstractmethod
    def records(self) -> tuple[Any, Any]:
        """``(arrays, static)``: what a child returns through the traced body."""
        ...

    @abc.abstractmethod
    def absorb(self, addr: Address, kind: str, arrays: Any, static: Any) -> None:
        """Merge a block's stacked child records at ``addr``."""
        ...

    # -- what subclasses may override -------------------------------------------
    def run_element(self, inputs: Any, thunk: Callable[[], Any]) -> tuple[Any, Any, Any]:
        """Run one element of a block (inside its ``jax.vmap``/``lax.scan``): ``(out, arrays, static)``.

        The default runs ``thunk`` once under :meth:`child` and returns the child's records; a
        handler that re-runs the body (with sites set to other values) overrides this.
        """
        child = self.child(inputs)
        child.mask = self.mask
        with child:
            out = thunk()
        arrays, static = child.records()
        return out, arrays, static

    def run_traced(
        self, kind: str, traced: Callable[[Any, Callable[..., Any]], Any], inputs: Any
    ) -> tuple[Any, Any, Any]:
        """Run a block's ``traced`` function (see :func:`run_block`): ``(out, arrays, static)``.

        The default runs each element with :meth:`run_element`; a handler that reorganizes the
        whole block's computation overrides this.
        """
        static_box: list[Any] = []

        def element(element_inputs: Any, thunk: Callable[[], Any]) -> tuple[Any, Any]:
            out, arrays, static = self.run_element(element_inputs, thunk)
            static_box.append(static)
            return out, arrays

        out, arrays = traced(inputs, element)
        return out, arrays, static_box[-1]

    def block_output(self, addr: Address, kind: str, out: Any, static: Any) -> Any:
        """What the block returns to the program, given its stacked outputs (default: those)."""
        return out

    def run_scan(
        self, f: Callable[[Any, Any], tuple[Any, Any]], init: Any, xs: Any, length: int, addr: Address
    ) -> tuple[Any, Any]:
        """Run ``ppl.scan``'s steps under this handler (default: the block protocol over ``lax.scan``)."""
        return run_block("ppl.scan", addr, length, scan_body(f, init, xs, length))


def check_context(handler: Handler, what: str) -> None:
    """Sites and blocks must run in the transformation context their handler was entered in."""
    if trace_state() != handler.trace:
        raise RuntimeError(
            f"{what} runs inside a JAX transformation opened within the program (jax.lax.cond/switch/"
            "while_loop/fori_loop, jax.vmap, jax.jit, jax.checkpoint, ...): its values and log densities "
            "would leak out of it. Sample outside it: ppl.vmap for independent copies, ppl.scan for "
            "loops, ppl.switch/ppl.cond for branches"
        )


def check_leading_axis(role: str, base: Address, values: dict[Address, Any], size: int) -> None:
    """Values given for a block's sites must have the block's size as leading axis."""
    for a, v in values.items():
        shape = jax.numpy.shape(v)
        if not shape or shape[0] != size:
            raise ValueError(
                f"{role}: the value at address '{format_address(base + a)}' has shape "
                f"{shape}, but the combinator there has {size} elements (leading axis)"
            )


def scan_body(
    f: Callable[[Any, Any], tuple[Any, Any]], init: Any, xs: Any, length: int
) -> Callable[[Any, Callable[..., Any]], Any]:
    """``ppl.scan``'s ``traced`` function for :func:`run_block`: ``lax.scan`` over the steps."""

    def traced(inputs: Any, element: Callable[..., Any]) -> Any:
        def step(carry: Any, packed: Any) -> Any:
            element_inputs, x = packed
            (new_carry, y), records = element(element_inputs, lambda: f(carry, x))
            return new_carry, (y, records)

        carry, (ys, records) = jax.lax.scan(step, init, (inputs, xs), length=length)
        return (carry, ys), records

    return traced


def run_block(
    kind: str,
    addr: Address,
    size: int,
    traced: Callable[[Any, Callable[..., Any]], Any],
) -> Any:
    """Run a combinator body under the current handler's block protocol.

    ``traced(inputs, element)`` must map (with ``jax.vmap`` or ``jax.lax.scan``)
    over the leading axis of ``inputs`` a function that calls
    ``element(element_inputs, thunk)``, where ``thunk()`` runs the body;
    ``element`` returns ``(body_result, records)``, and ``traced`` returns the
    stacked ``(results, records)``.
    """
    handler = current()
    assert handler is not None, "run_block needs an active handler"
    base = handler._prefix + addr

    # A block without its own address shares its parent's namespace: find
    # which addresses are its own before slicing the parent's inputs.
    def own() -> set[Address] | None:
        return None if addr else discover_addresses(handler, traced, size)

    inputs = handler.block_inputs(base, size, own)
    out, arrays, static = handler.run_traced(kind, traced, inputs)
    handler.absorb(base, kind, arrays, static)
    return handler.block_output(base, kind, out, static)


def discover_addresses(
    handler: Handler, traced: Callable[[Any, Callable[..., Any]], Any], size: int
) -> set[Address]:
    """The relative addresses a block samples, found by an abstract trace."""
    found: list[set[Address]] = []

    def run() -> None:
        def element(element_key: Any, thunk: Callable[[], Any]) -> tuple[Any, Any]:
            child = handler.discovery_child(element_key)
            with child:
                out = thunk()
            found.append(child.sampled_addresses())
            return out, ()

        traced(jax.random.split(jax.random.key(0), size), element)

    jax.eval_shape(run)
    return found[-1]
