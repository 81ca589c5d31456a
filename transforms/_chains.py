"""Elimination along ``ppl.scan``: the chain's factors, the backward recursion, the carry table.

Step 0 runs from ``init``; every later step runs from each row of the previous step's carry table
(the chain's state), giving factors ``ℓ_t(j, k)``, summed by ``β_{t−1}(j) = log Σ_k exp(ℓ_t(j, k) +
β_t(k))``. When the carry table is the same at every step all factors come from one vectorized
pass; otherwise a ``lax.scan`` computes the tables step by step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from ppl.transforms._elimination import Eliminator, Table, _map, _placeholders, _strong, _zero, solve
from ppl.transforms._semirings import Plan, combine_key

from ppl._choice_map import Address, format_address, listing

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
            raise ValueError(
                f"{plan.program}: {where}: the carry after a step depends on the previous step's "
                f"carry beyond the values of this step's summed-out sites ({listing(box[-1].sites)}): "
                "the forward algorithm needs the carry to be a function of the current step's "
                "summed-out values (a Markov chain in them); carry only those values, or keep the sites"
            )

        def transition(carries: Any, step_inputs: Any, x: Any) -> tuple[Any, Any, list[Any]]:
            """One step from every previous state: log factors ``(n_prev, n)``, the new carry table."""
            scores, new_carries, leaves, batched = _map(
                from_state, (carries, x, step_inputs), (0, None, None), None, coupled
            )
            dependent.update(box[-1].dependent | batched)
            return scores, new_carries, [_zero(v[0]) if k in batched else v for k, v in enumerate(leaves)]

        rest = jax.tree_util.tree_map(lambda v: v[1:], (inputs, xs))
        tables = jax.tree_util.tree_map(lambda v: jnp.broadcast_to(v, (length - 1, *v.shape)), carries)
        try:
            # Fast path: the carry table is a function of the step's summed-out values only (not of
            # the carry it came from, nor of the step's inputs), so it is the same at every step:
            # every step's factors in one vectorized pass. Checked abstractly with the table mapped
            # along the steps, then run with it shared (work that depends on it only is not repeated).
            jax.eval_shape(jax.vmap(transition, out_axes=(0, None, 0)), tables, *rest)
            factors, carries, ys = jax.vmap(transition, in_axes=(None, 0, 0), out_axes=(0, None, 0))(
                carries, *rest
            )
        except ValueError as err:
            if "out_axes" not in str(err):
                raise

            def step(carries: Any, packed: Any) -> Any:  # the table changes along the chain
                factors, carries, leaves = transition(carries, *packed)
                return carries, (factors, leaves)

            carries, (factors, ys) = jax.lax.scan(step, carries, rest, length=length - 1)
        # The backward recursion β_{t−1}(j) = log Σ_k exp(ℓ_t(j, k) + β_t(k)): values summed out
        # before the scan (its initial carry) enter through the first step only.
        step_keys = None if inputs[2] is None else inputs[2][1:]

        def backward(b: jax.Array, packed: Any) -> tuple[jax.Array, None]:
            f, key = packed
            return plan.combine(f + b[None, :], axis=1, key=combine_key(key)), None

        beta = jax.lax.scan(backward, jnp.zeros_like(log_alpha), (factors, step_keys), reverse=True)[0]
        log_alpha = log_alpha + beta
        ys_rest = _appended(ys_rest, ys)
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
