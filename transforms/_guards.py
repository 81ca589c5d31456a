"""What an estimator checks of its inputs and outputs, and the pieces its messages use.

The parameters must be floating and reach the value (:func:`check_params`, :func:`probe`);
the compiled step reports whether its value and its gradient are finite
(:func:`finite_flags`, its gradient screen confirmed by :func:`first_non_finite_leaf` on the
host or :func:`confirmed` in a program; :func:`non_finite_message` names the leaf), and inside a
caller's own ``jit``/``vmap`` a host callback raises when one is not
(:func:`raise_in_program`, kept alive by :func:`tie`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero


def tie(out: Any, zero: jax.Array) -> Any:
    """``out`` with ``zero`` added to every floating leaf, so a check computing it is never pruned."""

    def add(x: Any) -> Any:
        return x + zero.astype(x.dtype) if jnp.issubdtype(jnp.result_type(x), jnp.inexact) else x

    return jax.tree_util.tree_map(add, out)


def finite_flags(which: str, out: Any, has_aux: bool) -> jax.Array:
    """``[value finite, gradient screen]`` of a ``value_and_grad`` step's ``Estimate``; of an
    ``estimate`` step's output: ``[value not NaN]``.

    The screen is the finiteness of one number, the sum of all the gradient's entries (per 2-d
    or larger leaf a product with a vector of ones, which runs multithreaded): a NaN or an inf
    anywhere brings it down, and so, rarely, does a sum that overflows although every entry is
    finite. A down screen is therefore confirmed entry by entry before it is reported: on the
    host by :func:`first_non_finite_leaf`, inside a caller's program by :func:`confirmed`. The
    step itself has no branch (``benchmarks/overhead.py`` measures what it costs).
    """
    if which != "value_and_grad":
        value = out[0] if has_aux else out
        return jnp.reshape(~jnp.any(jnp.isnan(value)), (1,))
    value = out.value[0] if has_aux else out.value
    leaves = jax.tree_util.tree_leaves(out.grad)  # floating and non-empty: check_params
    return jnp.stack([jnp.isfinite(value), jnp.isfinite(sum(_entry_sum(x) for x in leaves))])


def _entry_sum(x: jax.Array) -> jax.Array:
    """The sum of ``x``'s entries, in at least float32."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if x.ndim < 2:
        return jnp.sum(x)
    return jnp.sum(jnp.ones(x.shape[0], x.dtype) @ x.reshape(x.shape[0], -1))


def confirmed(which: str, flags: jax.Array, out: Any) -> jax.Array:
    """``flags`` with a down gradient screen decided entry by entry, inside a traced program
    (the entries are read only when the screen is down)."""
    if which != "value_and_grad":
        return flags
    leaves = jax.tree_util.tree_leaves(out.grad)
    grad_ok = jax.lax.cond(
        flags[1],
        lambda: jnp.asarray(True),
        lambda: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])),
    )
    return jnp.stack([flags[0], grad_ok])


def first_non_finite_leaf(params: Any, grad: Any) -> str | None:
    """The path (in ``params``) of the first gradient leaf with a non-finite entry, on the host."""
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    for path, leaf in zip(paths, jax.tree_util.tree_leaves(grad), strict=True):
        if not np.all(np.isfinite(np.asarray(leaf))):
            return path
    return None


def non_finite_message(objective: Any, which: str, params: Any, out: Any, has_aux: bool) -> str | None:
    """Why a step failed when no distribution check did: its value, or which gradient leaf
    (by its path in ``params``), is not finite; ``None`` when both are finite."""
    checked = "every distribution parameter and given value passed its checks"
    if which == "value_and_grad":
        value, grad = out.value, out.grad
    else:
        value, grad = out, None
    value = np.asarray(value[0] if has_aux else value)
    bad_value = np.isnan(value).any() if grad is None else not np.isfinite(value).all()  # as finite_flags
    if bad_value:
        what = "value" if which == "value_and_grad" else "estimate"
        return (
            f"the {what} of {objective!r} is not finite while {checked}: a log of 0, an "
            "overflow, or parameters that diverged"
        )
    if grad is None:
        return None
    path = first_non_finite_leaf(params, grad)
    if path is None:
        return None
    return (
        f"the gradient of params{path} has a non-finite entry while the value is finite and "
        f"{checked}: a log or a division at a boundary value, or an overflow in the gradient"
    )


def raise_in_program(flags: jax.Array, estimator: Any, which: str) -> jax.Array:
    """Inside an enclosing trace: a zero that raises (a host callback) when a flag is down.

    Added to the outputs, so it cannot be pruned; under ``vmap`` it runs once for the batch.
    """
    ndim = np.ndim(flags)

    def check(concrete: Any) -> np.ndarray:
        concrete = np.asarray(concrete)
        down = ~concrete.reshape(-1, concrete.shape[-1]).all(axis=-1)
        if down.any():
            index = int(np.argmax(down))
            raise ValueError(
                f"{estimator!r}: the {which} step has a non-finite value or gradient (at mapped index "
                f"{index}): call estimator.diagnose(key, params, *data) outside jit/vmap with that "
                "element's arguments to find the site"
            )
        return np.zeros(concrete.shape[: concrete.ndim - ndim], np.float32)

    return jax.pure_callback(check, jax.ShapeDtypeStruct((), jnp.float32), flags, vmap_method="broadcast_all")


def probe(leaf: Any, reached: list[bool]) -> Any:
    """Identity on a parameter leaf that records (at trace time) whether a gradient reaches it."""
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
        return leaf

    @jax.custom_vjp
    def probe(x: jax.Array) -> jax.Array:
        return x

    def fwd(x: Any) -> tuple[jax.Array, None]:
        return x.value, None

    def bwd(_: None, g: Any) -> tuple[Any]:
        if not isinstance(g, SymbolicZero):
            reached.append(True)
        return (g,)

    probe.defvjp(fwd, bwd, symbolic_zeros=True)
    return probe(leaf)


def summary(tree: Any) -> str:
    """A short description of a pytree for messages: leaf count, first dtypes and shapes."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return "an empty pytree"
    shapes = ", ".join(f"{jnp.result_type(x)}{list(jnp.shape(x))}" for x in leaves[:4])
    return f"{len(leaves)} leaves: {shapes}" + (", ..." if len(leaves) > 4 else "")


def check_params(params: Any) -> None:
    """``params`` must be a non-empty pytree of floating arrays (what can be differentiated)."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if not leaves:
        raise ValueError(
            "value_and_grad: params (the first argument after the key) is empty; pass the parameters "
            "to differentiate, then the data"
        )
    for path, leaf in leaves:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"value_and_grad: params{jax.tree_util.keystr(path)} has dtype {dtype}; params (the first "
                "argument after the key) are differentiated, so they must be floating-point: pass integer "
                "or boolean data after them, as value_and_grad(key, params, *data)"
            )


def batch_size(data: tuple, in_axes: tuple) -> int:
    """The mapped size, found the way ``jax.vmap`` matches ``in_axes`` to ``data``."""
    if len(in_axes) != len(data):
        raise ValueError(
            f"in_axes has {len(in_axes)} entries for {len(data)} data arguments (params are shared, "
            "so in_axes has one entry per argument after params)"
        )
    if all(a is None for a in jax.tree_util.tree_leaves(in_axes, is_leaf=lambda a: a is None)):
        raise ValueError("in_axes maps no argument: give at least one batched data argument")
    ones = jax.vmap(lambda *a: jnp.zeros(()), in_axes=in_axes)
    return jax.eval_shape(ones, *data).shape[0]
