"""Elimination along ``ppl.scan``: the chain's factors, the backward recursion, the carry table.

Step 0 runs from ``init``; every later step runs from each row of the previous step's carry table
(the chain's state), giving factors ``ℓ_t(j, k)``, summed by ``β_{t−1}(j) = log Σ_k exp(ℓ_t(j, k) +
β_t(k))``. When the carry table is the same at every step all factors come from one vectorized
pass; otherwise a ``lax.scan`` computes the tables step by step.

A higher-order chain carries more than the step's values (a tuple of the last states): its states
are then the distinct carries, found once at trace time as constants (:func:`_states`, at most
``max_states``; the first steps, whose carries still hold a part of the initial one, run from their
rows of values), and the recursion runs over them, ``β_{t−1}(s) = log Σ_k exp(ℓ_t(s, k) +
β_t(to[s, k]))`` with ``to[s, k]`` the state after ``s`` with the step's values ``k``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ppl.transforms._elimination import Eliminator, Table, _map, _placeholders, _strong, _zero, solve
from ppl.transforms._semirings import Plan, combine_key

from ppl._choice_map import Address, format_address, listing
from ppl._compat import is_traced

__all__ = ["forward"]


def forward(
    plan: Plan,
    base: Address,
    axes: tuple[int, ...],
    f: Callable[[Any, Any], tuple[Any, Any]],
    init: Any,
    xs: Any,
    inputs: tuple[dict, dict, Any],
    length: int,
    mask: jax.Array | None = None,
) -> tuple[Any, Any, jax.Array]:
    """Elimination along a ``ppl.scan``: ``(final carry, ys, log Σ over every step's values)``.

    Step 0 runs from ``init``; every later step from each row of the previous step's carry table,
    giving factors ``ℓ_t(j, k)``, summed by the backward recursion (so that the cost of values
    summed out before the scan, on which ``init`` depends, does not multiply the chain's).
    """
    if length == 0:
        raise ValueError(f"{plan.program}: ppl.scan at '{format_address(base) or '/'}' has length 0")
    where = f"ppl.scan at '{format_address(base) or '/'}'"

    def step_table(carry: Any, x: Any, step_inputs: tuple[dict, dict, Any]) -> Table:
        given, tilts, key = step_inputs
        return solve(
            plan,
            lambda subst: Eliminator(plan, given, tilts, subst, base, axes, key, mask),
            lambda: _step(f, carry, x, where),
            split=lambda out: out,
        )

    init = jax.tree_util.tree_map(jnp.asarray, init)  # what lax.scan hands its step
    for leaf in jax.tree_util.tree_leaves(xs):
        if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != length:
            raise ValueError(f"{where}: length is {length}, but xs has a leaf of shape {jnp.shape(leaf)}")
    first = jax.tree_util.tree_map(lambda v: v[0], (inputs, xs))
    table = step_table(init, first[1], first[0])
    _check_carry(where, init, jax.tree_util.tree_map(lambda v: v[0], table.stacked))
    carries = jax.tree_util.tree_map(_strong, table.stacked)
    y_tree = jax.tree_util.tree_structure(table.shared)
    first_ys = jax.tree_util.tree_leaves(table.shared)
    dependent, sites = set(table.dependent), table.sites
    log_alpha = table.scores
    ys_rest: list[Any] = [x[None] for x in first_ys]
    if length > 1 and log_alpha.shape[0] == 1:
        # No summed-out values in the steps: nothing to eliminate along the chain, and the carry
        # may depend on the previous one freely (a counter, a running sum).
        def plain(carry: Any, packed: Any) -> Any:
            step_inputs, x = packed
            table = step_table(carry, x, step_inputs)
            leaves = [
                _zero(v) if k in table.dependent else v
                for k, v in enumerate(jax.tree_util.tree_leaves(table.shared))
            ]
            dependent.update(table.dependent)
            new = jax.tree_util.tree_map(lambda v: _strong(v[0]).astype(jnp.result_type(v)), table.stacked)
            return new, (table.scores[0], leaves)

        rest = jax.tree_util.tree_map(lambda v: v[1:], (inputs, xs))
        carry0 = jax.tree_util.tree_map(lambda v: _strong(v[0]), carries)
        last, (scores, ys) = jax.lax.scan(plain, carry0, rest, length=length - 1)
        carries = jax.tree_util.tree_map(lambda v: v[None], last)
        log_alpha = log_alpha + jnp.sum(scores)
        ys_rest = _appended(ys_rest, ys)
    elif length > 1:
        box: list[Table] = []

        def from_state(carry: Any, x: Any, step_inputs: Any) -> tuple[Any, Any, list[Any]]:
            table = step_table(carry, x, step_inputs)
            box.append(table)
            leaves = jax.tree_util.tree_leaves(table.shared)
            leaves = [_zero(v) if k in table.dependent else v for k, v in enumerate(leaves)]
            return table.scores, jax.tree_util.tree_map(_strong, table.stacked), leaves

        def coupled() -> None:
            raise _Coupled(
                f"{plan.program}: {where}: the carry after a step depends on the previous step's "
                f"carry beyond the values of this step's summed-out sites ({listing(box[-1].sites)}), "
                f"and not as a higher-order chain (a carry that, within {MAX_LAYERS} steps, holds only "
                "discrete values, the same at every step, at most max_states of them): "
                "the forward algorithm needs the carry to be a function of the last steps' summed-out "
                "values; carry only those values, or keep the sites"
            )

        def from_rows(
            rows: Any, step_inputs: Any, x: Any, first_order: bool = False
        ) -> tuple[Any, Any, list[Any]]:
            """One step from every row of carries: log factors ``(n_rows, n)``, the new carries
            ``(n_rows, n, ...)``, or with ``first_order`` the new carry table ``(n, ...)``, which must
            not depend on the row (else :class:`_Coupled`)."""
            stacked, check = (None, coupled) if first_order else (0, None)
            scores, new, leaves, batched = _map(
                from_state, (rows, x, step_inputs), (0, None, None), stacked, check
            )
            dependent.update(box[-1].dependent | batched)
            return scores, new, [_zero(v[0]) if k in batched else v for k, v in enumerate(leaves)]

        transition = functools.partial(from_rows, first_order=True)

        rest = jax.tree_util.tree_map(lambda v: v[1:], (inputs, xs))
        tables = jax.tree_util.tree_map(lambda v: jnp.broadcast_to(v, (length - 1, *v.shape)), carries)
        step_keys = None if inputs[2] is None else inputs[2][1:]
        try:
            factors, carries, ys = _first_order(transition, carries, tables, rest, length - 1)
        except _Coupled as err:
            # A higher-order chain: its states are the distinct carries (a finite set, found once).
            found = _states(plan, init, first, step_table, from_state, rest, length, err)
            beta, ys = _higher_order(plan, from_rows, carries, found, rest, length, step_keys, err)
            log_alpha = log_alpha + beta
            ys_rest = _appended(ys_rest, ys)
            return _finish(plan, where, inputs, log_alpha, carries, y_tree, ys_rest, dependent, sites)

        # The backward recursion β_{t−1}(j) = log Σ_k exp(ℓ_t(j, k) + β_t(k)): values summed out
        # before the scan (its initial carry) enter through the first step only.
        def backward(b: jax.Array, packed: Any) -> tuple[jax.Array, None]:
            f, key = packed
            return plan.combine(f + b[None, :], axis=1, key=combine_key(key)), None

        beta = jax.lax.scan(backward, jnp.zeros_like(log_alpha), (factors, step_keys), reverse=True)[0]
        log_alpha = log_alpha + beta
        ys_rest = _appended(ys_rest, ys)
    return _finish(plan, where, inputs, log_alpha, carries, y_tree, ys_rest, dependent, sites)


def _finish(
    plan: Plan,
    where: str,
    inputs: Any,
    log_alpha: jax.Array,
    carries: Any,
    y_tree: Any,
    ys_rest: list[Any],
    dependent: set[int],
    sites: tuple[Address, ...],
) -> tuple[Any, Any, jax.Array]:
    """The chain's total over the first step's values, its outputs and its final carry."""
    total = plan.combine(log_alpha, key=None if inputs[2] is None else combine_key(inputs[2][0]))
    ys = _placeholders(
        jax.tree_util.tree_unflatten(y_tree, ys_rest), frozenset(dependent), f"the outputs of {where}", sites
    )
    n = log_alpha.shape[0]
    if n == 1:
        carry = jax.tree_util.tree_map(lambda v: v[0], carries)
    else:
        count = len(jax.tree_util.tree_leaves(carries))
        carry = _placeholders(carries, frozenset(range(count)), f"the final carry of {where}", sites)
    return carry, ys, total


def _first_order(
    transition: Callable[..., Any], carries: Any, tables: Any, rest: Any, steps: int
) -> tuple[Any, Any, Any]:
    """A first-order chain's factors ``(T−1, n_prev, n)``, final carry table and outputs.

    Fast path: the carry table is a function of the step's summed-out values only (not of the carry
    it came from, nor of the step's inputs), so it is the same at every step: every step's factors in
    one vectorized pass. Checked abstractly with the table mapped along the steps, then run with it
    shared (work that depends on it only is not repeated). Otherwise step by step (``lax.scan``).
    """
    try:
        jax.eval_shape(jax.vmap(transition, out_axes=(0, None, 0)), tables, *rest)
        return jax.vmap(transition, in_axes=(None, 0, 0), out_axes=(0, None, 0))(carries, *rest)
    except ValueError as err:
        if "out_axes" not in str(err):
            raise

    def step(carries: Any, packed: Any) -> Any:  # the table changes along the chain
        factors, carries, leaves = transition(carries, *packed)
        return carries, (factors, leaves)

    carries, (factors, ys) = jax.lax.scan(step, carries, rest, length=steps)
    return factors, carries, ys


#: How many steps a higher-order chain's carries may take to become states (about its order), and
#: to close over them.
MAX_LAYERS = 32


class _Coupled(ValueError):
    """The next carry depends on the previous one beyond the step's summed-out values."""


def _higher_order(
    plan: Plan,
    from_rows: Callable[..., Any],
    carries: Any,
    found: tuple[Any, int, jax.Array, jax.Array],
    rest: Any,
    length: int,
    step_keys: Any,
    err: _Coupled,
) -> tuple[jax.Array, list[Any]]:
    """Steps 1.. of a higher-order chain (see :func:`_states`): the backward messages into the first
    step's values, and the steps' outputs.

    The first ``D`` steps run from rows that still hold a part of the initial carry (each step's rows
    are the previous rows times its values, row ``r·n + k``); step ``D`` moves them to the states
    (``to_first``), and every later step runs from the states (the same table at every step: a carry
    that changes with the steps' inputs raises ``err``), ``β_{t−1}(s) = log Σ_k exp(ℓ_t(s, k) +
    β_t(to[s, k]))``.
    """
    states, transient, to_first, to = found

    def key_of(t: int) -> Any:
        return None if step_keys is None else combine_key(step_keys[t])

    factors_by_step, ys = [], None
    rows = carries
    for t in range(transient):
        step = jax.tree_util.tree_map(lambda v, t=t: v[t : t + 1], rest)
        f, new, step_ys = jax.vmap(from_rows, (None, 0, 0))(rows, *step)
        factors_by_step.append(f[0])
        ys = step_ys if ys is None else _appended(ys, step_ys)
        rows = jax.tree_util.tree_map(lambda v: v[0].reshape((-1, *v.shape[3:])), new)
    beta = jnp.zeros(to.shape[0], factors_by_step[0].dtype)
    if length - 1 > transient:
        later = jax.tree_util.tree_map(lambda v: v[transient:], rest)
        from_states = functools.partial(from_rows, states)
        try:
            jax.eval_shape(jax.vmap(from_states, out_axes=(0, None, 0)), *later)
        except ValueError as inner:
            if "out_axes" not in str(inner):
                raise
            raise err from None
        factors, _, later_ys = jax.vmap(from_states, out_axes=(0, None, 0))(*later)
        ys = _appended(ys, later_ys)

        def backward(b: jax.Array, packed: Any) -> tuple[jax.Array, None]:
            f, key = packed
            return plan.combine(f + b[to], axis=1, key=combine_key(key)), None

        later_keys = None if step_keys is None else step_keys[transient:]
        beta = jax.lax.scan(backward, beta, (factors, later_keys), reverse=True)[0]
    # The last transient step moves its rows to the states (unless the chain ends before that);
    # each earlier one to the rows of the next, row r·n + k.
    b = beta[to_first] if length - 1 > transient else jnp.zeros_like(factors_by_step[-1])
    for t in range(transient - 1, -1, -1):
        f = factors_by_step[t]
        b = plan.combine(f + b.reshape(f.shape), axis=1, key=key_of(t))
    return b, ys


def _states(
    plan: Plan,
    init: Any,
    first: Any,
    step_table: Callable[..., Table],
    from_state: Callable[..., Any],
    rest: Any,
    length: int,
    err: _Coupled,
) -> tuple[Any, int, jax.Array, jax.Array]:
    """A higher-order chain's states: every distinct carry that holds no part of the initial carry.

    Returns ``(states, D, to_first, to)``: the stacked states; ``D``, the number of steps until the
    carries hold no part of the initial carry (its order − 1, at most the chain's steps);
    ``to_first[r, k]``, the state after step ``D`` from its ``r``-th row with the step's values
    ``k``; ``to[s, k]``, the state after state ``s`` with the step's values ``k``. The carries must
    become constants, functions of the summed-out values only (not of any traced number), within
    ``MAX_LAYERS`` steps, else ``err`` is raised; at most ``plan.max_states`` states and rows.
    """
    rows: dict[tuple[bytes, ...], int] = {}
    stacked: list[list[np.ndarray]] = []
    treedef: list[Any] = []

    def indices(carries: Any) -> np.ndarray:
        """The state of each new carry ``(m, n, ...)``, added to the states if new: ``(m, n)``."""
        leaves, tree = jax.tree_util.tree_flatten(carries)
        treedef[:] = [tree]
        m, n = leaves[0].shape[:2]
        out = np.empty(m * n, np.int32)
        for r, row in enumerate(zip(*(np.asarray(v).reshape((m * n, *v.shape[2:])) for v in leaves))):
            key = tuple(v.tobytes() + str(v.dtype).encode() for v in row)
            if key not in rows:
                if len(stacked) == plan.max_states:
                    raise ValueError(
                        f"{err} (its carries take more than max_states={plan.max_states} values)"
                    )
                rows[key] = len(stacked)
                stacked.append(list(row))
            out[r] = rows[key]
        return out.reshape(m, n)

    def table(states: list[list[np.ndarray]]) -> Any:
        return jax.tree_util.tree_unflatten(treedef[0], [jnp.asarray(np.stack(c)) for c in zip(*states)])

    def traced(tree: Any) -> bool:
        return any(is_traced(v) for v in jax.tree_util.tree_leaves(tree))

    found: list[Any] = []

    def closure(init: Any) -> None:
        # ``init`` is abstract here (as under jit, whether or not the caller jits): the first steps'
        # carries may hold a part of it; the chain's states are those that hold none.
        with jax.ensure_compile_time_eval():
            carries = step_table(init, first[1], first[0]).stacked
            for t in range(min(length - 1, MAX_LAYERS)):
                step = jax.tree_util.tree_map(lambda v, t=t: v[t], rest)
                new = jax.vmap(lambda c, step=step: from_state(c, step[1], step[0])[1])(carries)
                if not traced(new):
                    found.extend([t + 1, indices(new), step])
                    break
                carries = jax.tree_util.tree_map(lambda v: v.reshape((-1, *v.shape[2:])), new)
                if jax.tree_util.tree_leaves(carries)[0].shape[0] > plan.max_states:
                    raise err
            else:
                if length - 1 > MAX_LAYERS:
                    raise err  # the carries keep a function of the initial one (a counter, a sum)
                found.extend([length - 1, np.zeros((0, 1), np.int32), None])
                return
            transient, _, step = found
            done, to_rows = 0, []
            # Breadth first: the carries after step d + 1 are those after step d's successors; the
            # last step's carries need none.
            for _ in range(min(length - 1 - transient, MAX_LAYERS + 1)):
                if done == len(stacked):
                    break
                if len(to_rows) == MAX_LAYERS:
                    raise err
                frontier, done = stacked[done:], len(stacked)
                new = jax.vmap(lambda c: from_state(c, step[1], step[0])[1])(table(frontier))
                if traced(new):
                    raise err
                to_rows.append(indices(new))
            n = found[1].shape[1]
            to_rows.append(np.zeros((len(stacked) - done, n), np.int32))  # reached at the last step only
            found.append(np.concatenate(to_rows))

    jax.eval_shape(closure, init)
    transient, to_first = found[0], found[1]
    if not stacked:  # the chain ends first: no states
        return None, transient, jnp.asarray(to_first), jnp.zeros((0, 1), jnp.int32)
    return table(stacked), transient, jnp.asarray(to_first), jnp.asarray(found[3])


def _appended(first: list[jax.Array], rest: list[Any]) -> list[jax.Array]:
    """Step 0's outputs (leading axis 1) followed by the other steps' (stacked)."""
    return [jnp.concatenate([a, jnp.asarray(b, a.dtype)]) for a, b in zip(first, rest)]


def _check_carry(where: str, init: Any, carry: Any) -> None:
    """The step's carry must have ``init``'s structure, shapes and dtypes (as ``lax.scan`` requires)."""
    same = jax.tree_util.tree_structure(init) == jax.tree_util.tree_structure(carry) and all(
        jnp.shape(a) == jnp.shape(b) and jnp.result_type(a) == jnp.result_type(b)
        for a, b in zip(jax.tree_util.tree_leaves(init), jax.tree_util.tree_leaves(carry))
    )
    if not same:
        shown = jax.tree_util.tree_map(lambda v: f"{jnp.result_type(v)}{list(jnp.shape(v))}", (init, carry))
        raise TypeError(f"{where}: the step's carry {shown[1]} does not match the initial carry {shown[0]}")


def _step(f: Callable[[Any, Any], tuple[Any, Any]], carry: Any, x: Any, where: str) -> tuple[Any, Any]:
    out = f(carry, x)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"{where}: the step function must return (carry, y), got {type(out).__name__}")
    return out
