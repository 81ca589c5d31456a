"""Running one expectation scope: the estimator handler and the surrogate it yields.

``run_scope`` executes an objective program once under an
:class:`EstimatorHandler`, which draws each site by its strategy and records a
ledger. From the ledger it builds the scope's *surrogate*: a scalar whose value
is the plain Monte Carlo value of the program and whose JAX gradient is the
estimator. Continuation-based strategies (``enum``, ``mvd``) re-run the program
with the site's value substituted, the earlier choices held fixed, and the
same keys (hence the same later random numbers).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from ppl.transforms._baselines import leave_one_out_mean
from ppl.transforms._ledger import (
    BlockEntry,
    CostEntry,
    SiteEntry,
    checks_held,
    downstream_costs,
    join,
    site_values,
    split,
    total,
)
from ppl.transforms._resolution import Config
from ppl.transforms._strategies import Site, Strategy

from ppl._checks import held, poison
from ppl._choice_map import Address, format_address, subtree
from ppl._distributions import check_parameters, check_value, name, poison_sample, site_log_prob
from ppl._handlers import Handler, check_leading_axis

sg = jax.lax.stop_gradient

__all__ = ["Config", "EstimatorHandler", "ScopeResult", "run_scope"]


class _Replace(Exception):
    """Raised at a site whose strategy replaces the rest of the scope."""


@dataclasses.dataclass
class Deferred:
    """A score-function site whose baseline needs the other particles (``leave_one_out``).

    ``weight`` multiplies its surrogate (continuation weights of enclosing ``enum`` sites);
    the site's arrays carry any block axes, and gain the particle axis when they leave the
    particles' ``jax.vmap``.
    """

    site: SiteEntry
    downstream: jax.Array
    weight: jax.Array


jax.tree_util.register_pytree_node(
    Deferred,
    lambda d: (
        (d.site.value, d.site.log_prob, d.site.dist_leaves, d.site.key, d.downstream, d.weight),
        (d.site.address, d.site.strategy, d.site.dist_tree),
    ),
    lambda static, ch: Deferred(
        SiteEntry(static[0], static[1], ch[0], ch[1], ch[2], static[2], ch[3]), ch[4], ch[5]
    ),
)


@dataclasses.dataclass
class Aux:
    """Terms a scope cannot finish by itself.

    ``deferred``: leave-one-out sites (:class:`Deferred`), whose baselines need the other
    particles; ``stats``: ``(address, downstream)`` for stateful baseline updates.
    """

    deferred: list[Deferred] = dataclasses.field(default_factory=list)
    stats: list[tuple[str, jax.Array]] = dataclasses.field(default_factory=list)

    def extend(self, other: Aux) -> None:
        self.deferred.extend(other.deferred)
        self.stats.extend(other.stats)


jax.tree_util.register_pytree_node(
    Aux,
    lambda a: ((a.deferred, [d for _, d in a.stats]), tuple(k for k, _ in a.stats)),
    lambda keys, ch: Aux(list(ch[0]), list(zip(keys, ch[1]))),
)


def per_element(strategy: Strategy, entry: SiteEntry, downstream: jax.Array, baseline: Any) -> jax.Array:
    """``Σ strategy.surrogate(site)`` over the elements of a block site (leading axes of ``downstream``).

    Each element's :class:`Site` has that element's distribution, key, value, log density,
    downstream cost and baseline (``baseline`` is broadcast to the block's shape).
    """
    baseline = jnp.broadcast_to(baseline, downstream.shape)

    def one(leaves: Any, key: Any, value: Any, log_prob: Any, k: Any, b: Any) -> jax.Array:
        dist = jax.tree_util.tree_unflatten(entry.dist_tree, leaves)
        return strategy.surrogate(Site(entry.address, dist, key, value, log_prob, k, b))

    fn = one
    for _ in range(downstream.ndim):
        fn = jax.vmap(fn)
    return jnp.sum(fn(entry.dist_leaves, entry.key, entry.value, entry.log_prob, downstream, baseline))


def finish_deferred(deferred: list[Deferred], particles: int) -> jax.Array:
    """The surrogate of leave-one-out sites after the particles' ``jax.vmap`` (leading axis).

    Particle ``k``'s baseline is the mean downstream cost of the others, independent of its
    own draw; its surrogate (by its strategy) is weighted and averaged over particles.
    """
    out = jnp.zeros(())
    for d in deferred:
        b = leave_one_out_mean(d.downstream, axis=0)
        terms = per_element_weighted(d, b)
        out = out + terms / particles
    return out


def per_element_weighted(d: Deferred, baseline: jax.Array) -> jax.Array:
    """``Σ weight · surrogate`` over the particle (and block) axes of a deferred site."""
    entry, strategy = d.site, d.site.strategy
    weight = jnp.broadcast_to(d.weight, d.downstream.shape)
    baseline = jnp.broadcast_to(baseline, d.downstream.shape)

    def one(leaves: Any, key: Any, value: Any, log_prob: Any, k: Any, b: Any, w: Any) -> jax.Array:
        dist = jax.tree_util.tree_unflatten(entry.dist_tree, leaves)
        return w * strategy.surrogate(Site(entry.address, dist, key, value, log_prob, k, b))

    fn = one
    for _ in range(d.downstream.ndim):
        fn = jax.vmap(fn)
    return jnp.sum(
        fn(entry.dist_leaves, entry.key, entry.value, entry.log_prob, d.downstream, baseline, weight)
    )


class EstimatorHandler(Handler):
    """Draws sites by strategy and records the ledger of one scope run."""

    kind = "objective"

    def __init__(
        self,
        key: jax.Array,
        subst: dict[Address, Any],
        config: Config,
        in_block: bool | str,
        base: Address = (),
    ):
        super().__init__()
        # The absolute address of this handler's namespace (a block's address inside
        # the scope), so strategies are looked up by full address.
        self.base = base
        self._block_base: Address = ()
        self.key = key
        self.subst = subst
        self.config = config
        self.in_block = in_block
        self.counter = 0
        self.entries: list[Any] = []
        # Frames record what ``sim``/``generate`` calls see; the root frame is what
        # this handler's block returns (estimated-density functions record their
        # kept choices and estimates there, not their internal sites).
        self.root = new_frame()
        self.frames: list[dict[str, Any]] = [self.root]
        self.aux = Aux()
        # Constrained (observed) sites of ``generate`` calls, by full address;
        # their log densities add to the frames' ``weight``.
        self.observed: dict[Address, Any] = {}
        # Counter for hidden addresses (shared with block children, which may
        # share this namespace; replays restart it, so names are deterministic).
        self.hidden_counter = [0]
        # Positive while sampling without differentiating the sampler (shared with block children).
        self.frozen = [0]

    def next_key(self) -> jax.Array:
        key = jax.random.fold_in(self.key, self.counter)
        self.counter += 1
        return key

    def hidden_address(self, name: str) -> Address:
        """A fresh address for internal choices (``_sir``, ``_sir1``, ...)."""
        count = self.hidden_counter[0]
        self.hidden_counter[0] += 1
        return (f"{name}{count}",) if count else (name,)

    @contextlib.contextmanager
    def frozen_scope(self) -> Iterator[None]:
        """Sites sampled inside are drawn without a strategy: no gradient, no surrogate term."""
        self.frozen[0] += 1
        try:
            yield
        finally:
            self.frozen[0] -= 1

    @contextlib.contextmanager
    def hidden_scope(self, name: str) -> Iterator[None]:
        """Run the body at a fresh hidden address (:meth:`hidden_address`) below the current prefix."""
        saved = self._prefix
        self._prefix = saved + self.hidden_address(name)
        try:
            yield
        finally:
            self._prefix = saved

    def _record(self, address: Address, value: Any, lp: jax.Array, observed: bool = False) -> None:
        record(self.frames, {address: value}, lp, lp if observed else None, lambda sel: lp)

    def sample(self, addr: Address, d: Any) -> Any:
        full = self.claim(addr, name(d))
        ok = check_parameters(self.base + full, d, self.mask)
        key = self.next_key()
        if full in self.observed:
            value, given_ok = check_value(
                self.base + full, d, self.observed[full], "the value given to generate", self.mask
            )
            ok = ok & given_ok
            lp = self.masked(site_log_prob(d, value, ok))
            self.entries.append(SiteEntry(full, None, value, lp, ok=held(lp, ok)))
            self._record(full, value, lp, observed=True)
            return value
        if full in self.subst:
            value = self.subst[full]
            lp = self.masked(site_log_prob(d, value, ok))
            self.entries.append(SiteEntry(full, None, value, lp, ok=held(lp, ok)))
        elif self.config.plain or self.frozen[0]:
            value = poison_sample(d, sg(d.sample(key)), ok)
            lp = self.masked(site_log_prob(d, value, ok))
            self.entries.append(SiteEntry(full, None, value, lp, ok=held(lp, ok)))
        else:
            strategy = self.config.resolve(self.base + full, d, self.in_block)
            value = poison_sample(d, strategy.draw(key, d), ok)
            lp = self.masked(site_log_prob(d, value, ok))
            self.entries.append(SiteEntry.of(full, strategy, value, lp, d, key, held(lp, ok)))
            if strategy.replaces_continuation:
                raise _Replace()
        self._record(full, value, lp)
        return value

    def add_cost(self, cost: Any, what: str) -> None:
        cost = jnp.asarray(cost)
        if cost.shape != ():
            raise ValueError(f"{what} must be a scalar, got shape {cost.shape}")
        self.entries.append(CostEntry(self.masked(cost)))

    # -- block protocol ----------------------------------------------------------
    def block_inputs(self, base: Address, size: int, own: Any) -> Any:
        given = subtree(self.subst, base)
        observed = subtree(self.observed, base)
        owned = own() if given or observed else None
        if owned is not None:
            given = {a: v for a, v in given.items() if a in owned}
            observed = {a: v for a, v in observed.items() if a in owned}
        check_leading_axis("generate", base, observed, size)
        self._block_base = self.base + base
        return jax.random.split(self.next_key(), size), given, observed

    def child(self, inputs: Any) -> EstimatorHandler:
        keys, given, observed = inputs
        child = EstimatorHandler(keys, given, self.config, in_block=True, base=self._block_base)
        child.observed = observed
        child.hidden_counter = self.hidden_counter
        child.frozen = self.frozen
        return child

    def discovery_child(self, key: jax.Array) -> EstimatorHandler:
        child = EstimatorHandler(key, {}, dataclasses.replace(self.config, plain=True), True)
        child.hidden_counter = [self.hidden_counter[0]]  # same names, counter untouched
        return child

    def sampled_addresses(self) -> set[Address]:
        return set(site_values(self.entries))

    def records(self) -> tuple[Any, Any]:
        root = self.root
        arrays, static = split(self.entries)
        return (arrays, dict(root["choices"]), root["score"], root["weight"], self.aux), static

    def absorb(self, base: Address, kind: str, arrays: Any, static: Any) -> None:
        entry_arrays, choices, score, weight, aux = arrays
        entries = join(entry_arrays, static, base)
        for a in site_values(entries):
            self.claim_full(a, kind)
        self.entries.append(BlockEntry(kind, base, entries))
        record(
            self.frames,
            {base + a: v for a, v in choices.items()},
            jnp.sum(score),
            jnp.sum(weight),
            lambda selection: _selected_log_prob(entries, selection),
        )
        self.aux.extend(aux)


def new_frame(select: tuple[Address, ...] | None = None) -> dict[str, Any]:
    """What a ``sim``/``generate`` call accumulates: choices, ``score`` (their log
    density), ``weight`` (of observed sites) and ``selected`` (of sites under ``select``)."""
    zero = jnp.zeros(())
    return {"choices": {}, "score": zero, "weight": zero, "select": select, "selected": zero}


def record(
    frames: list[dict[str, Any]],
    choices: dict[Address, Any],
    score: jax.Array,
    weight: jax.Array | None,
    selected: Any,
) -> None:
    """Add choices (by full address) and their log densities to every open frame.

    ``weight`` is the log density of observed sites among them (``None``: none);
    ``selected(selection)`` gives the log density of the sites under ``selection``.
    """
    for frame in frames:
        frame["choices"].update(choices)
        frame["score"] = frame["score"] + score
        if weight is not None:
            frame["weight"] = frame["weight"] + weight
        if frame["select"] is not None and any(_selected(a, frame["select"]) for a in choices):
            frame["selected"] = frame["selected"] + selected(frame["select"])


def _selected_log_prob(entries: list[Any], selection: tuple[Address, ...]) -> jax.Array:
    out = jnp.zeros(())
    for e in entries:
        if isinstance(e, SiteEntry) and _selected(e.address, selection):
            out = out + jnp.sum(e.log_prob)
        elif isinstance(e, BlockEntry):
            out = out + _selected_log_prob(e.entries, selection)
    return out


def _selected(address: Address, selection: tuple[Address, ...]) -> bool:
    """Whether ``address`` is one of ``selection`` or lies under one of them."""
    return any(address[: len(s)] == s for s in selection)


@dataclasses.dataclass
class ScopeResult:
    """``value``: the plain Monte Carlo value; ``surrogate``: its gradient is the
    estimator (its value is an unbiased, possibly Rao-Blackwellized, estimate)."""

    value: jax.Array
    surrogate: jax.Array
    aux: Aux
    entries: list[Any]


def _cost_sum(entries: list[Any]) -> jax.Array:
    out = jnp.zeros(())
    for e in entries:
        out = out + total(e, 0)
    return out


def run_scope(
    program: Callable[..., Any],
    args: tuple,
    key: jax.Array,
    subst: dict[Address, Any],
    config: Config,
    in_block: bool = False,
) -> ScopeResult:
    """Run ``program(*args)`` as one expectation scope; see the module docstring."""
    handler = EstimatorHandler(key, subst, config, in_block)
    replaced = False
    with handler:
        try:
            ret = program(*args)
            handler.add_cost(ret, "the objective's return value")
        except _Replace:
            replaced = True
    entries = handler.entries
    aux = handler.aux
    costs = _cost_sum(entries)
    rest = sampled_rest = jnp.zeros(())
    if replaced:
        site = entries[-1]
        view = _site_view(program, args, key, subst, config, entries, len(entries) - 1, aux)
        rest = site.strategy.rest(view)
        sampled_rest = view.continuation_value(site.value[None])[0]
    # A failed check (traced) makes the value NaN, whatever the program does with the site.
    value = poison(sg(costs) + sampled_rest, checks_held(entries))
    surrogate = costs + rest
    if config.plain:
        return ScopeResult(value, surrogate, aux, entries)
    top_level = {id(e): i for i, e in enumerate(entries)}
    for site, downstream in downstream_costs(entries, sg(rest)):
        strategy = site.strategy
        if strategy.replaces_continuation:
            continue
        baseline = strategy.baseline
        if baseline is not None and baseline.deferred:
            aux.deferred.append(Deferred(site, sg(downstream), jnp.ones_like(downstream)))
            continue
        if baseline is not None and baseline.stateful:
            aux.stats.append((format_address(site.address), sg(downstream)))
        b = config.baseline_value(site.address, strategy)
        if id(site) in top_level:
            view = _site_view(program, args, key, subst, config, entries, top_level[id(site)], aux)
            view.downstream, view.baseline = downstream, b
            surrogate = surrogate + strategy.surrogate(view)
        else:
            surrogate = surrogate + per_element(strategy, site, downstream, b)
    return ScopeResult(value, surrogate, aux, entries)


def _site_view(
    program: Callable[..., Any],
    args: tuple,
    key: jax.Array,
    subst: dict[Address, Any],
    config: Config,
    entries: list[Any],
    index: int,
    aux: Aux,
) -> Site:
    site = entries[index]
    prefix = {**subst, **site_values(entries[:index])}

    def rerun(value: jax.Array, plain: bool) -> ScopeResult:
        cfg = dataclasses.replace(config, plain=True) if plain else config
        return run_scope(program, args, key, {**prefix, site.address: value}, cfg)

    def continuation(values: jax.Array, weights: jax.Array | None = None) -> jax.Array:
        def one(value: jax.Array) -> tuple[jax.Array, Aux]:
            result = rerun(value, plain=False)
            before = _cost_sum(result.entries[:index])
            return result.surrogate - before, result.aux

        rests, inner = jax.vmap(one)(values)
        if inner.deferred or inner.stats:
            if weights is None:
                raise ValueError(
                    f"address '{format_address(site.address)}': the continuation has "
                    "leave-one-out or stateful baselines; pass weights to continuation()"
                )
            for d in inner.deferred:
                factor = weights.reshape(weights.shape + (1,) * (d.weight.ndim - 1))
                aux.deferred.append(dataclasses.replace(d, weight=d.weight * factor))
            aux.stats.extend(inner.stats)
        return rests

    def continuation_value(values: jax.Array) -> jax.Array:
        def one(value: jax.Array) -> jax.Array:
            result = rerun(value, plain=True)
            return result.value - sg(_cost_sum(result.entries[:index]))

        return sg(jax.vmap(one)(values))

    return Site(
        site.address,
        site.dist,
        site.key,
        site.value,
        site.log_prob,
        continuation=continuation,
        continuation_value=continuation_value,
    )
