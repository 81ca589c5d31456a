"""Exact sums over a program's discrete sites: elimination over plates, the forward algorithm along scans.

:func:`eliminate` computes ``log Σ_z g(choices, z; args)`` over every site of ``g`` that
``choices`` leaves out (each must have a finite support), or ``max_z`` of it. It re-runs parts of
the program with the summed-out sites set to each of their values, vectorized with ``jax.vmap``:

* at the top level, and inside one element of a ``ppl.vmap`` plate, the rest of the element is
  re-run for each value of its next unset site (depth first: several sites in one element cost the
  product of their supports; elements are independent, so a plate costs its size times that);
* along a ``ppl.scan`` (:mod:`ppl.transforms._chains`) each step runs for every pair (previous
  state, current values), and the states are eliminated by the backward recursion in log space,
  ``β_{t−1}(j) = log Σ_k exp(ℓ_t(j, k) + β_t(k))``, cost ``T·K²``. The carry is the state: it must
  depend on the previous step only through the step's summed-out values (a Markov chain in them),
  or be one of finitely many constants (a tuple of the last states: a higher-order chain).

The reductions (sum, max, sample) live in :mod:`ppl.transforms._semirings`.

This is tensor variable elimination (Obermeyer et al., 2019) for programs whose summed-out values
stay inside their plate element or scan step. A value that leaves them (returned from a plate's
element, from a step as its output, or as the scan's final carry) would couple elements or steps;
it comes out as a :class:`SummedOut` placeholder that raises, naming the sites, where it is used.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
from ppl.transforms._semirings import Plan, combine_key

from ppl import _checks
from ppl._choice_map import Address, format_address, listing, never_sampled, subtree
from ppl._compat import is_traced
from ppl._distributions import check_parameters, check_value, joint_support, name, site_log_prob, support_size
from ppl._handlers import Handler, check_leading_axis, discover_addresses, scan_body
from ppl._interpreter import Interpreter

__all__ = ["Plan", "SummedOut", "eliminate"]


class SummedOut:
    """A value that depends on summed-out sites and left their plate element or scan step.

    Using it in any computation raises: summing out a site whose value reaches other elements or
    steps is not elimination any more (the elements would be coupled).
    """

    def __init__(self, message: str):
        object.__setattr__(self, "_message", message)

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError(self._message)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise ValueError(self._message)

    def __repr__(self) -> str:
        return f"<summed out: {self._message}>"

    __array__ = __bool__ = __float__ = __int__ = __index__ = __len__ = __iter__ = _fail
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _fail
    __floordiv__ = __rfloordiv__ = __mod__ = __pow__ = __rpow__ = __matmul__ = __rmatmul__ = _fail
    __neg__ = __pos__ = __abs__ = __getitem__ = __lt__ = __le__ = __gt__ = __ge__ = _fail
    __eq__ = __ne__ = __and__ = __or__ = __xor__ = __invert__ = _fail  # type: ignore[assignment]
    __hash__ = None  # type: ignore[assignment]


class _Unset(Exception):
    """Raised at the first site of a run that is neither given nor set: sum it out."""

    def __init__(self, handler: Eliminator, address: Address, dist: nd.Distribution):
        super().__init__(format_address(address))
        self.handler, self.address, self.dist = handler, address, dist


class _Found(Exception):
    """Stops the abstract run of :meth:`Eliminator._first_unset`."""


class Eliminator(Handler):
    """One run of a program (or of a block's element) with some sites given and some set.

    ``given``: values of the kept sites; ``tilts``: per summed-out address, ``(τ, λ)``: the log
    weight ``τ[j] + Σ λ·v_j`` is added to its ``j``-th value ``v_j`` (their gradients are the
    posterior marginals and mean under log-sum-exp, the MAP under max); ``subst``: the values (with
    their index in the support) of the summed-out sites set so far in this element.
    """

    def __init__(
        self,
        plan: Plan,
        given: dict[Address, Any],
        tilts: dict[Address, Any],
        subst: dict[Address, tuple[Any, Any]],
        base: Address = (),
        axes: tuple[int, ...] = (),
        key: jax.Array | None = None,
        mask: jax.Array | None = None,
    ):
        super().__init__()
        self.mask = mask
        self.plan, self.given, self.tilts, self.subst, self.base = plan, given, tilts, subst, base
        #: With ``reduce="sample"``: the key of this element's (or step's) blocks' noise.
        self.key = key
        self.counter = 0
        #: The sizes of the enclosing blocks (plates and scans), outermost first.
        self.axes = axes
        self.score = jnp.zeros(())
        self.used: set[Address] = set()
        self.sampled: set[Address] = set()
        self._block_base: Address = ()
        self._block_axes: tuple[int, ...] = ()

    def sample(self, addr: Address, d: Any) -> Any:
        full = self.claim(addr, name(d))
        where = self.base + full
        ok = check_parameters(where, d, self.mask)
        self.sampled.add(full)
        if full in self.given:
            self.used.add(full)
            value, given_ok = check_value(where, d, self.given[full], self.plan.role, self.mask)
            lp = self.masked(site_log_prob(d, value, ok & given_ok))
        elif full in self.subst:
            value, index = self.subst[full]
            lp = site_log_prob(d, value, ok)
            if self.mask is not None:
                # In an unselected branch the site is not part of the execution: under a sum each
                # of its n values weighs 1/n (their sum is 1), under a max all weigh 1.
                fill = 0.0 if self.plan.reduce == "max" else -math.log(support_size(d))
                lp = self.masked(lp, fill)
            if full in self.tilts:
                tilt, linear = self.tilts[full]
                lp = lp + tilt[index] + jnp.sum(linear * value)
        else:
            raise _Unset(self, full, d)
        self.score = self.score + lp
        return value

    def check_all_used(self) -> None:
        extra = sorted(set(self.given) - self.used)
        if extra:
            sampled = [self.base + a for a in self.sampled]
            raise ValueError(never_sampled(self.plan.program, "the program", self.base + extra[0], sampled))

    # -- blocks ------------------------------------------------------------------
    def block_inputs(self, base: Address, size: int, own: Any) -> Any:
        given, tilts = subtree(self.given, base), subtree(self.tilts, base)
        owned = own() if given or tilts else None
        if owned is not None:
            given = {a: v for a, v in given.items() if a in owned}
            tilts = {a: v for a, v in tilts.items() if a in owned}
        check_leading_axis(self.plan.program, self.base + base, given, size)
        self.used.update(base + a for a in given)
        self._block_base = self.base + base
        self._block_axes = (*self.axes, size)
        keys = None
        if self.key is not None:
            keys = jax.random.split(jax.random.fold_in(self.key, self.counter), size)
            self.counter += 1
        return given, tilts, keys

    def child(self, inputs: Any) -> Eliminator:
        return self.element_handlers(inputs)({})

    def element_handlers(self, inputs: Any) -> Callable[[dict[Address, Any]], Eliminator]:
        """``subst ↦`` a handler for one element of the block being entered, given its inputs."""
        given, tilts, key = inputs
        plan, base, axes, mask = self.plan, self._block_base, self._block_axes, self.mask
        return lambda subst: Eliminator(plan, given, tilts, subst, base, axes, key, mask)

    def discovery_child(self, key: jax.Array) -> Handler:
        return Interpreter(key, {}, "discover", program=self.plan.program)

    def sampled_addresses(self) -> set[Address]:
        return set(self.sampled)

    def records(self) -> tuple[Any, Any]:
        return self.score, None

    def run_element(self, inputs: Any, thunk: Callable[[], Any]) -> tuple[Any, Any, Any]:
        table = solve(self.plan, self.element_handlers(inputs), thunk)
        total = self.plan.combine(table.scores, key=combine_key(inputs[2]))
        return table.shared, total, (self._block_base, table.dependent, table.sites)

    def run_traced(
        self, kind: str, traced: Callable[[Any, Callable[..., Any]], Any], inputs: Any
    ) -> tuple[Any, Any, Any]:
        """A plate whose elements share their first summed-out site's support: that site's values
        are mapped *outside* the plate (tables ``(values, elements, ...)``, the layout XLA reduces
        fastest), the rest of each element as in :meth:`run_element`."""
        first = self._first_unset(traced, inputs) if kind == "ppl.vmap" else None
        if first is None:
            return super().run_traced(kind, traced, inputs)
        address, where, values = first
        plan, base = self.plan, self._block_base
        n = values.shape[0]
        statics: list[Any] = []
        trees: list[Any] = []

        def with_value(value: jax.Array, index: jax.Array) -> tuple[Any, Any, list[Any]]:
            def element(element_inputs: Any, thunk: Callable[[], Any]) -> tuple[Any, Any]:
                table = solve(
                    plan,
                    self.element_handlers(element_inputs),
                    thunk,
                    subst={address: (value, index)},
                    count=n,
                )
                statics.append((table.dependent, table.sites))
                return table.shared, plan.combine(table.scores, key=combine_key(element_inputs[2]))

            out, rest = traced(inputs, element)
            leaves, tree = jax.tree_util.tree_flatten(out)
            trees.append(tree)
            return rest, (), leaves

        scores, _, leaves, batched = _map(with_value, (jnp.asarray(values), jnp.arange(n)))
        keys = inputs[2]
        if keys is None:
            totals = plan.combine(scores, axis=0)
        else:  # each element reduces with its own key (folded: the rest of the element used it)
            totals = jax.vmap(lambda s, k: plan.combine(s, key=combine_key(jax.random.fold_in(k, 1))))(
                scores.T, keys
            )
        dependent, sites = statics[-1]
        out = jax.tree_util.tree_unflatten(trees[-1], leaves)
        return out, totals, (base, dependent | batched, (where, *sites))

    def _first_unset(
        self, traced: Callable[[Any, Callable[..., Any]], Any], inputs: Any
    ) -> tuple[Address, Address, Any] | None:
        """The plate elements' first summed-out site and its values, if they are constants (found by
        an abstract run of the block that stops there); ``None`` otherwise."""
        plan = self.plan
        found: list[Any] = []

        def element(element_inputs: Any, thunk: Callable[[], Any]) -> tuple[Any, Any]:
            handler = self.element_handlers(element_inputs)({})
            _, stop = _run_until_unset(handler, thunk)
            if stop is None:
                found.append(None)
            else:
                with jax.ensure_compile_time_eval():  # a support that depends on no traced value
                    where, values = _support(plan, handler, stop, 1)
                found.append((stop.address, where, None if is_traced(values) else np.asarray(values)))
            raise _Found()

        try:
            jax.eval_shape(lambda: traced(inputs, element))
        except _Found:
            pass
        if not found or found[-1] is None or found[-1][2] is None:
            return None
        return found[-1]

    def absorb(self, base: Address, kind: str, arrays: Any, static: Any) -> None:
        self.score = self.score + jnp.sum(arrays)

    def block_output(self, addr: Address, kind: str, out: Any, static: Any) -> Any:
        base, dependent, sites = static
        what = f"the value returned by each element of {kind} at '{format_address(base) or '/'}'"
        return _placeholders(out, dependent, what, sites)

    def run_scan(
        self, f: Callable[[Any, Any], tuple[Any, Any]], init: Any, xs: Any, length: int, addr: Address
    ) -> tuple[Any, Any]:
        prefix = self._prefix + addr

        def own() -> set[Address] | None:
            return None if addr else discover_addresses(self, scan_body(f, init, xs, length), length)

        from ppl.transforms._chains import forward  # the chain recursion builds on this module

        inputs = self.block_inputs(prefix, length, own)
        carry, ys, total = forward(
            self.plan, self._block_base, self._block_axes, f, init, xs, inputs, length, self.mask
        )
        self.score = self.score + total
        return carry, ys


@dataclasses.dataclass
class Table:
    """One element's (or step's) runs over the joint values of its summed-out sites.

    ``scores``: ``(n,)`` log densities, one per joint value; ``stacked``: the part of the output
    kept per value (a scan step's carry), leading axis ``n``; ``shared``: the rest, which must be
    the same for every value (``dependent`` lists its leaves that are not, zeroed here);
    ``sites``: the summed-out addresses.
    """

    scores: jax.Array
    stacked: Any
    shared: Any
    dependent: frozenset[int]
    sites: tuple[Address, ...]


def solve(
    plan: Plan,
    make: Callable[[dict[Address, Any]], Eliminator],
    body: Callable[[], Any],
    split: Callable[[Any], tuple[Any, Any]] = lambda out: ((), out),
    subst: dict[Address, Any] | None = None,
    count: int = 1,
) -> Table:
    """Run ``body`` under ``make(subst)``; at its first unset site, re-run it for each value.

    ``split(out)`` gives ``(stacked, shared)`` parts of the body's output (see :class:`Table`).
    """
    subst = {} if subst is None else subst
    handler = make(subst)
    out, unset = _run_until_unset(handler, body)
    if unset is None:
        handler.check_all_used()
        stacked, shared = split(out)
        stacked = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], stacked)
        return Table(handler.score[None], stacked, shared, frozenset(), ())
    where, values = _support(plan, handler, unset, count)
    n = values.shape[0]
    box: list[Table] = []

    def one(value: jax.Array, index: jax.Array) -> tuple[Any, Any, list[Any]]:
        table = solve(plan, make, body, split, {**subst, unset.address: (value, index)}, count * n)
        box.append(table)
        leaves = jax.tree_util.tree_leaves(table.shared)
        leaves = [_zero(x) if k in table.dependent else x for k, x in enumerate(leaves)]
        return table.scores, table.stacked, leaves

    scores, stacked, leaves, batched = _map(one, (values, jnp.arange(n)))
    inner = box[-1]
    tree = jax.tree_util.tree_structure(inner.shared)
    leaves = [_zero(x[0]) if k in batched else x for k, x in enumerate(leaves)]
    return Table(
        scores.reshape(-1),
        jax.tree_util.tree_map(lambda x: x.reshape((-1, *x.shape[2:])), stacked),
        jax.tree_util.tree_unflatten(tree, leaves),
        inner.dependent | batched,
        (where, *inner.sites),
    )


def _run_until_unset(handler: Eliminator, body: Callable[[], Any]) -> tuple[Any, _Unset | None]:
    """``(body(), None)`` under ``handler``, or ``(None, stop)`` at its first unset site."""
    with handler:
        try:
            return body(), None
        except _Unset as stop:
            if stop.handler is not handler:
                raise
            return None, stop


def _support(plan: Plan, handler: Eliminator, unset: _Unset, count: int) -> tuple[Address, jax.Array]:
    """The full address and the joint values of the unset site, checked (``count``: the joint
    values of the element's sites set so far)."""
    where = handler.base + unset.address
    if isinstance(unset.dist, nd.Independent):
        raise ValueError(
            f"{plan.program}: address '{format_address(where)}' ({name(unset.dist)}): a discrete site with "
            "event dimensions cannot be summed out; sample its elements in a ppl.vmap plate (or without "
            "to_event), or keep it"
        )
    values = joint_support(where, unset.dist) if _finite(unset.dist) else _refuse(plan, where, unset.dist)
    n = values.shape[0]
    if plan.found is not None:
        plan.found[where] = (handler.axes, n, values.shape[1:], values.dtype)
    if count * n > plan.max_states:
        raise ValueError(
            f"{plan.program}: summing out address '{format_address(where)}' ({name(unset.dist)}, {n} values) "
            f"makes {count * n} joint values in one element, more than max_states={plan.max_states}: "
            "sites that are independent copies belong in a ppl.vmap plate (each element is then summed "
            "separately), or keep some of them"
        )
    return where, values


def _map(
    fn: Callable[..., tuple[Any, Any, list[Any]]],
    args: tuple,
    in_axes: Any = 0,
    stacked_axis: int | None = 0,
    coupled: Callable[[], None] | None = None,
) -> tuple[Any, Any, list[Any], frozenset[int]]:
    """``jax.vmap(fn, in_axes)`` over ``args``; ``fn`` returns ``(scores, stacked, leaves)``.

    ``stacked`` is mapped along ``stacked_axis`` (``None``: it must not depend on the mapped
    arguments, else ``coupled()`` is called); each of ``leaves`` comes out unbatched where it
    does not depend on them. Returns the outputs and the set of leaves that do (still batched).
    """

    def run(axes: Any, stacked: Any = stacked_axis, abstract: bool = False) -> Any:
        mapped = jax.vmap(fn, in_axes=in_axes, out_axes=(0, stacked, axes))
        return jax.eval_shape(mapped, *args) if abstract else mapped(*args)

    def fits(axes: Any, stacked: Any = stacked_axis) -> bool:
        try:
            run(axes, stacked, abstract=True)
        except ValueError as err:
            if "out_axes" not in str(err):
                raise
            return False
        return True

    try:
        return (*run(None), frozenset())
    except ValueError as err:
        if "out_axes" not in str(err):
            raise
    if coupled is not None and not fits(0):
        coupled()
    count = len(run(0, 0, abstract=True)[2])

    def dependent(group: range) -> frozenset[int]:
        """The leaves of ``group`` that depend on the mapped arguments (group testing: one
        abstract trace per group, halved where some do, so few dependent leaves cost few traces)."""
        if len(group) < count and fits([None if i in group else 0 for i in range(count)]):
            return frozenset()
        if len(group) == 1:
            return frozenset(group)
        half = len(group) // 2
        return dependent(group[:half]) | dependent(group[half:])

    batched = dependent(range(count)) if count else frozenset()
    return (*run([0 if k in batched else None for k in range(count)]), batched)


def _strong(x: Any) -> jax.Array:
    """``x`` as an array of its own dtype, not weakly typed (scan carries must match exactly)."""
    x = jnp.asarray(x)
    return x.astype(x.dtype)


def _zero(x: Any) -> jax.Array:
    return jnp.zeros(jnp.shape(x), jnp.result_type(x))


def _finite(d: nd.Distribution) -> bool:
    return bool(getattr(d, "has_enumerate_support", False))


def _refuse(plan: Plan, where: Address, d: nd.Distribution) -> jax.Array:
    raise ValueError(
        f"{plan.program}: address '{format_address(where)}' ({name(d)}) has no value given and no "
        "finite support to sum over: give its value (keep it), or sample it with a guide"
    )


def _placeholders(out: Any, dependent: frozenset[int], what: str, sites: tuple[Address, ...]) -> Any:
    if not dependent:
        return out
    leaves, tree = jax.tree_util.tree_flatten(out)
    message = (
        f"{what} depends on the summed-out {listing(sites) if sites else 'sites'}: a summed-out value "
        "cannot leave its plate element or scan step (the elements or steps using it would be "
        "coupled, and elimination per element is not possible); use it inside the element or step, "
        "or keep the site (give its value, or sample it with a guide: reinforce or mvd there)"
    )
    leaves = [SummedOut(message) if k in dependent else x for k, x in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(tree, leaves)


def eliminate(
    g: Any,
    given: dict[Address, Any],
    args: tuple,
    plan: Plan,
    tilts: dict[Address, Any] | None = None,
    key: jax.Array | None = None,
) -> jax.Array:
    """``log Σ_z g(given, z; args)`` (or ``max_z``) over every site ``given`` leaves out.

    Checks of traced numbers (parameters, given values) poison the sum instead of calling the
    host at every element and step. Inside an estimator that is its usual protocol; outside one,
    a NaN result is diagnosed: called eagerly, the elimination is re-run with the checks recorded
    and the first failure raised (address, distribution, value); under the caller's ``jax.jit``
    one host check on the result raises a message saying so.
    """

    def run() -> jax.Array:
        table = solve(
            plan,
            lambda subst: Eliminator(plan, given, tilts or {}, subst, key=key),
            lambda: g.invoke(_current(), (), args),
        )
        return plan.combine(table.scores, key=combine_key(key))

    if _checks._current() is not None:  # inside an estimator: its own protocol
        return run()
    with _checks.mode("carry"):
        total = run()
    if not _checks.runtime_checks():
        return total
    if not is_traced(total):
        if bool(jnp.isnan(total)):
            with _checks.diagnosing() as failures:
                jax.block_until_ready(run())
                jax.effects_barrier()
                recorded = sorted(failures)
            if recorded:
                raise ValueError(recorded[0][1])
        return total
    message = _checks.escape(
        f"{plan.program}: the log marginal is NaN: a distribution's parameter or a given value failed "
        "its check, or the model computed a NaN (call it eagerly, outside jax.jit/grad/vmap, for the "
        "address, the distribution and the value)"
    )
    return _checks.poison(total, _checks.require(~jnp.isnan(total), message))


def _current() -> Handler:
    from ppl._handlers import current

    handler = current()
    assert handler is not None
    return handler
