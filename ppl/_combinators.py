"""Combinators: independent copies (``vmap``) and time steps (``scan``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

from ppl._choice_map import Address, as_address, format_address
from ppl._gen import GenerativeFunction
from ppl._handlers import Handler, check_context, current, run_block


class VmapGenerativeFunction(GenerativeFunction):
    """``n`` independent copies of a generative function; choices gain a leading axis."""

    def __init__(
        self,
        inner: GenerativeFunction,
        in_axes: int | Sequence[int | None] | None,
        axis_size: int | None,
    ):
        if not isinstance(inner, GenerativeFunction):
            raise TypeError(f"ppl.vmap expects a generative function, got {type(inner).__name__}")
        self.inner = inner
        self.in_axes = in_axes
        self.axis_size = axis_size
        super().__init__(inner.fn)

    def __repr__(self) -> str:
        return f"<ppl.vmap of {self.inner!r}>"

    def _axes(self, args: tuple) -> tuple:
        if isinstance(self.in_axes, (int, type(None))):
            return (self.in_axes,) * len(args)
        axes = tuple(self.in_axes)
        if len(axes) != len(args):
            raise ValueError(f"ppl.vmap: in_axes has {len(axes)} entries for {len(args)} arguments")
        return axes

    def _size(self, args: tuple, axes: tuple) -> int:
        if self.axis_size is not None:
            return self.axis_size
        for arg, axis in zip(args, axes):
            if axis is not None:
                leaves = jax.tree_util.tree_leaves(arg)
                if leaves:
                    return leaves[0].shape[axis]
        raise ValueError("ppl.vmap: no mapped argument; pass axis_size")

    def invoke(self, handler: Handler, addr: Address, args: tuple) -> Any:
        axes = self._axes(args)
        size = self._size(args, axes)
        inner = self.inner

        def traced(inputs: Any, element: Callable[..., Any]) -> Any:
            def one(element_inputs: Any, *element_args: Any) -> Any:
                return element(element_inputs, lambda: inner.invoke(current(), (), element_args))

            return jax.vmap(one, in_axes=(0, *axes), axis_size=size)(inputs, *args)

        return run_block("ppl.vmap", addr, size, traced)


def vmap(
    g: GenerativeFunction,
    in_axes: int | Sequence[int | None] | None = 0,
    axis_size: int | None = None,
) -> VmapGenerativeFunction:
    """Independent copies of ``g`` (a plate): ``ppl.sample("xs", ppl.vmap(g), args)``.

    Arguments are mapped like ``jax.vmap``'s ``in_axes``; every choice of ``g``
    gains a leading axis of size ``axis_size`` (inferred from mapped arguments).

    Example:
        >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, ppl
        >>> @ppl.gen
        ... def point(mu):
        ...     return ppl.sample("x", dist.Normal(mu, 1.0))
        >>> plate = ppl.vmap(point)
        >>> plate.simulate(jax.random.key(0), jnp.zeros(3)).choices["x"].shape
        (3,)
    """
    return VmapGenerativeFunction(g, in_axes, axis_size)


def scan(
    f: Callable[[Any, Any], tuple[Any, Any]],
    init: Any,
    xs: Any = None,
    length: int | None = None,
    *,
    addr: str | Address | None = None,
) -> tuple[Any, Any]:
    """Drop-in for ``jax.lax.scan`` whose step function may contain sample sites.

    Each address sampled in ``f`` holds the stacked values of all steps (leading
    axis = step); ``addr`` nests them under a prefix. Outside a program it is
    plain ``jax.lax.scan``.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, ppl
        >>> @ppl.gen
        ... def walk(n):
        ...     def step(z, _):
        ...         z = ppl.sample("z", dist.Normal(z, 1.0))
        ...         return z, z
        ...     return ppl.scan(step, 0.0, None, length=n)[1]
        >>> walk.simulate(jax.random.key(0), 4).choices["z"].shape
        (4,)
    """
    handler = current()
    if handler is None:
        return jax.lax.scan(f, init, xs, length=length)
    check_context(
        handler, "ppl.scan" if addr is None else f"ppl.scan at '{format_address(as_address(addr))}'"
    )
    if length is None:
        leaves = jax.tree_util.tree_leaves(xs)
        if not leaves:
            raise ValueError("ppl.scan: give xs or length")
        length = leaves[0].shape[0]
    prefix = () if addr is None else as_address(addr)
    return handler.run_scan(f, init, xs, length, prefix)
