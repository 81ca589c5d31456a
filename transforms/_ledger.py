"""What one run of an objective scope records, in program order.

Entries are sites (with the arrays a strategy needs), costs (scalars the
objective adds, its return value last) and blocks (the stacked entries of a
``ppl.vmap`` or ``ppl.scan`` body). Blocks cross ``jax.vmap``/``lax.scan`` as
``(arrays, static)`` pairs: :func:`split` and :func:`join`.

Causal Rao-Blackwellization lives here (:func:`downstream_costs`): a site's
downstream cost is the sum of the costs recorded after it in the same scope.
Inside a ``ppl.scan`` body, the site of step t sees the costs of its own step
after it, of all later steps, and after the scan; inside a ``ppl.vmap`` body,
the costs after it in its own copy (other copies are independent of it) and
after the block.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ppl._choice_map import Address


@dataclasses.dataclass
class SiteEntry:
    """A sample site. Inside a block its arrays carry the block's leading axes, and its
    distribution is kept flattened (``dist_leaves`` stacked, ``dist_tree`` static) so that
    :meth:`element` can rebuild one element's distribution."""

    address: Address
    strategy: Any  # None for a substituted (fixed) site
    value: jax.Array
    log_prob: jax.Array
    dist_leaves: Any = None
    dist_tree: Any = None
    key: Any = None
    ok: Any = True  # the site's checks (parameters, given value) held

    @classmethod
    def of(
        cls,
        address: Address,
        strategy: Any,
        value: jax.Array,
        log_prob: jax.Array,
        dist: Any,
        key: Any,
        ok: Any,
    ) -> SiteEntry:
        leaves, tree = jax.tree_util.tree_flatten(dist)
        return cls(address, strategy, value, log_prob, leaves, tree, key, ok)

    @property
    def dist(self) -> Any:
        """The distribution (at the top level of a scope; inside a block, see :meth:`element`)."""
        return jax.tree_util.tree_unflatten(self.dist_tree, self.dist_leaves)


@dataclasses.dataclass
class CostEntry:
    value: jax.Array


@dataclasses.dataclass
class BlockEntry:
    kind: str
    address: Address
    entries: list[Any]


def split(entries: list[Any]) -> tuple[list[Any], list[Any]]:
    arrays, static = [], []
    for e in entries:
        if isinstance(e, SiteEntry):
            arrays.append((e.value, e.log_prob, e.dist_leaves, e.key, jnp.asarray(e.ok)))
            static.append(("site", e.address, e.strategy, e.dist_tree))
        elif isinstance(e, CostEntry):
            arrays.append(e.value)
            static.append(("cost",))
        else:
            sub_arrays, sub_static = split(e.entries)
            arrays.append(sub_arrays)
            static.append(("block", e.kind, e.address, sub_static))
    return arrays, static


def join(arrays: list[Any], static: list[Any], prefix: Address = ()) -> list[Any]:
    entries: list[Any] = []
    for a, s in zip(arrays, static):
        if s[0] == "site":
            entries.append(SiteEntry(prefix + s[1], s[2], a[0], a[1], a[2], s[3], a[3], a[4]))
        elif s[0] == "cost":
            entries.append(CostEntry(a))
        else:
            entries.append(BlockEntry(s[1], prefix + s[2], join(a, s[3], prefix)))
    return entries


def _sum_beyond(x: jax.Array, ndim: int) -> jax.Array:
    return jnp.sum(x, axis=tuple(range(ndim, x.ndim)))


def total(entry: Any, ndim: int) -> jax.Array:
    """Sum of an entry's costs, keeping the first ``ndim`` (enclosing block) axes."""
    if isinstance(entry, CostEntry):
        return _sum_beyond(entry.value, ndim)
    if isinstance(entry, BlockEntry):
        out = jnp.zeros(())
        for e in entry.entries:
            out = out + total(e, ndim)
        return out
    return jnp.zeros(())


def downstream_costs(
    entries: list[Any], after: jax.Array, ndim: int = 0
) -> list[tuple[SiteEntry, jax.Array]]:
    """``[(site, k)]`` for every non-fixed site, ``k`` its downstream cost (block-shaped)."""
    out: list[tuple[SiteEntry, jax.Array]] = []
    running = after
    for e in reversed(entries):
        if isinstance(e, SiteEntry):
            if e.strategy is not None:
                out.append((e, running))
        elif isinstance(e, BlockEntry):
            steps = jnp.zeros(())
            for inner in e.entries:
                steps = steps + total(inner, ndim + 1)  # per element of the block
            steps = jnp.broadcast_to(steps, _leading_shape(e, ndim + 1))
            base = jnp.expand_dims(running, -1)
            if e.kind == "ppl.scan":
                later = jnp.flip(jnp.cumsum(jnp.flip(steps, -1), -1), -1) - steps
                inner_after = base + later
            else:
                inner_after = jnp.broadcast_to(base, steps.shape)
            out.extend(downstream_costs(e.entries, inner_after, ndim + 1))
            running = running + jnp.sum(steps, axis=-1)
        else:
            running = running + total(e, ndim)
    return out


def _leading_shape(block: BlockEntry, ndim: int) -> tuple[int, ...]:
    for leaf in jax.tree_util.tree_leaves(split(block.entries)[0]):
        return leaf.shape[:ndim]
    raise ValueError("empty block")  # pragma: no cover


def checks_held(entries: list[Any]) -> jax.Array:
    """Whether every site's checks held (blocks included): a scalar."""
    ok = jnp.asarray(True)
    for e in entries:
        if isinstance(e, SiteEntry):
            ok = ok & jnp.all(e.ok)
        elif isinstance(e, BlockEntry):
            ok = ok & checks_held(e.entries)
    return ok


def site_values(entries: list[Any]) -> dict[Address, jax.Array]:
    """Every sampled value in ``entries`` by full address (blocks stacked)."""
    out: dict[Address, jax.Array] = {}
    for e in entries:
        if isinstance(e, SiteEntry):
            out[e.address] = e.value
        elif isinstance(e, BlockEntry):
            out.update(site_values(e.entries))
    return out
