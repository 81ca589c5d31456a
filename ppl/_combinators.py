"""Combinators: independent copies (``vmap``), time steps (``scan``) and branches (``switch``, ``cond``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

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


def switch(
    index: Any,
    branches: Sequence[Callable[..., Any]],
    *operands: Any,
    addr: str | Address | None = None,
) -> Any:
    """Drop-in for ``jax.lax.switch`` whose branches may contain sample sites.

    Branch ``j``'s sites live at ``addr/j/...`` (``j/...`` without ``addr``), so every branch
    has its own addresses. All branches run, as ``jax.lax.switch`` does under ``jax.vmap``, and
    the selected branch's output is returned (``index`` is clamped to the branches, as there);
    a site of an unselected branch is drawn but is not part of the execution: its log density
    counts 0 and the traced checks of its parameters and values do not apply. The trace holds a
    value at every branch's addresses; ``assess`` needs them all and ignores the unselected ones.

    ``index`` is typically a discrete sample site, and any strategy applies there: ``enum`` (each
    value re-runs the rest with its branch selected), ``reinforce``, ``mvd``; an exact
    :func:`ppl.transforms.marginal` sums it out with the branches' own discrete sites (a site of
    an unselected branch contributes a factor 1: each of its ``n`` values weighs ``1/n``). The
    branches must return the same tree of arrays (shapes and dtypes). Outside a program this is
    plain ``jax.lax.switch``.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, ppl
        >>> @ppl.gen
        ... def model():
        ...     k = ppl.sample("k", dist.Categorical(jnp.array([0.2, 0.8])))
        ...     loc = ppl.switch(
        ...         k,
        ...         [lambda: ppl.sample("a", dist.Normal(-1.0, 0.1)), lambda: jnp.asarray(3.0)],
        ...         addr="which",
        ...     )
        ...     return ppl.sample("x", dist.Normal(loc, 1.0))
        >>> sorted(ppl.flatten(model.simulate(jax.random.key(0)).choices))
        [('k',), ('which', '0', 'a'), ('x',)]
    """
    branches = tuple(branches)
    if not branches or not all(callable(b) for b in branches):
        raise TypeError("ppl.switch: branches must be a non-empty sequence of functions")
    handler = current()
    if handler is None:
        return jax.lax.switch(index, branches, *operands)
    where = "ppl.switch" if addr is None else f"ppl.switch at '{format_address(as_address(addr))}'"
    check_context(handler, where)
    index = jnp.asarray(index)
    if index.shape != () or not jnp.issubdtype(index.dtype, jnp.integer):
        raise TypeError(
            f"{where}: the index must be an integer scalar, got {index.dtype} of shape {index.shape}"
        )
    index = jnp.clip(index, 0, len(branches) - 1).astype(jnp.int32)
    names = tuple(str(j) for j in range(len(branches)))
    return _branches(handler, where, index, branches, names, operands, addr)


def cond(
    pred: Any,
    true_fn: Callable[..., Any],
    false_fn: Callable[..., Any],
    *operands: Any,
    addr: str | Address | None = None,
) -> Any:
    """Drop-in for ``jax.lax.cond`` whose branches may contain sample sites.

    As :func:`switch` with two branches, whose sites live at ``addr/true/...`` and
    ``addr/false/...``; ``pred`` is a boolean (or integer: nonzero is true) scalar.

    Example:
        >>> import jax, numpyro.distributions as dist, ppl
        >>> @ppl.gen
        ... def model():
        ...     rain = ppl.sample("rain", dist.Bernoulli(0.3))
        ...     wet = ppl.cond(
        ...         rain,
        ...         lambda: ppl.sample("wet", dist.Bernoulli(0.9)),
        ...         lambda: ppl.sample("wet", dist.Bernoulli(0.1)),
        ...     )
        ...     return wet
        >>> sorted(ppl.flatten(model.simulate(jax.random.key(0)).choices))
        [('false', 'wet'), ('rain',), ('true', 'wet')]
    """
    handler = current()
    if handler is None:
        return jax.lax.cond(pred, true_fn, false_fn, *operands)
    where = "ppl.cond" if addr is None else f"ppl.cond at '{format_address(as_address(addr))}'"
    check_context(handler, where)
    pred = jnp.asarray(pred)
    if pred.shape != () or not (pred.dtype == jnp.bool_ or jnp.issubdtype(pred.dtype, jnp.integer)):
        raise TypeError(
            f"{where}: the predicate must be a boolean scalar, got {pred.dtype} of shape {pred.shape}"
        )
    index = (pred != 0).astype(jnp.int32)
    return _branches(handler, where, index, (false_fn, true_fn), ("false", "true"), operands, addr)


def _branches(
    handler: Handler,
    where: str,
    index: jax.Array,
    branches: tuple[Callable[..., Any], ...],
    names: tuple[str, ...],
    operands: tuple,
    addr: str | Address | None,
) -> Any:
    """Run every branch with the handler's mask narrowed to it; select the outputs by ``index``."""
    prefix = () if addr is None else as_address(addr)
    outer = handler.mask
    outs = []
    try:
        for j, (branch, label) in enumerate(zip(branches, names)):
            selected = index == j
            handler.mask = selected if outer is None else outer & selected
            outs.append(handler.call((*prefix, label), branch, operands))
    finally:
        handler.mask = outer
    return _select(where, index, outs, names)


def _select(where: str, index: jax.Array, outs: list[Any], names: tuple[str, ...]) -> Any:
    """``outs[index]``, leaf by leaf; the branches must agree on structure, shapes and dtypes."""
    trees = [jax.tree_util.tree_structure(out) for out in outs]
    for name, tree in zip(names[1:], trees[1:]):
        if tree != trees[0]:
            raise TypeError(
                f"{where}: branch '{name}' returns {tree}, branch '{names[0]}' {trees[0]}: "
                "every branch must return the same structure"
            )
    columns = zip(*(jax.tree_util.tree_leaves(out) for out in outs))
    selected = []
    for leaves in columns:
        leaves = [jnp.asarray(x) for x in leaves]
        for name, leaf in zip(names[1:], leaves[1:]):
            if leaf.shape != leaves[0].shape or leaf.dtype != leaves[0].dtype:
                raise TypeError(
                    f"{where}: branch '{name}' returns a {leaf.dtype}{list(leaf.shape)} where branch "
                    f"'{names[0]}' returns a {leaves[0].dtype}{list(leaves[0].shape)}: every branch "
                    "must return arrays of the same shapes and dtypes"
                )
        selected.append(leaves[0] if len(leaves) == 1 else jax.lax.select_n(index, *leaves))
    return jax.tree_util.tree_unflatten(trees[0], selected)
