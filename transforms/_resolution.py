"""Which strategy each site gets, and why: the estimator's configuration for one run.

:class:`Config` holds the strategies chosen at the call site and resolves each sample site
once (re-runs of the scope reuse the first decision), recording a :class:`Decision` with the
rule that chose it; :class:`Explanation` prints them (``estimator.explain(...)``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from ppl.transforms._strategies import Auto, Enum, LogExpectationEstimator, Strategy, support_size

from ppl._choice_map import Address, format_address, listing
from ppl._distributions import name

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class Decision:
    """The strategy of one address and the rule that chose it."""

    address: Address
    distribution: str
    strategy: Any
    rule: str
    enumerated: int = 1  # support size when the strategy enumerates

    @property
    def baseline(self) -> str:
        baseline = getattr(self.strategy, "baseline", None)
        return "-" if baseline is None else _spell(baseline)


def _spell(obj: Any) -> str:
    fields = dataclasses.fields(obj) if dataclasses.is_dataclass(obj) else ()
    shown = ", ".join(f"{f.name}={getattr(obj, f.name)!r}" for f in fields if f.name != "baseline")
    return f"{type(obj).__name__}({shown})"


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Per address: the strategy, its baseline, and the rule that chose it."""

    decisions: tuple[Decision, ...]

    def __str__(self) -> str:
        rows = [("address", "distribution", "strategy", "baseline", "rule")]
        for d in self.decisions:
            strategy = type(d.strategy).__name__ if dataclasses.is_dataclass(d.strategy) else repr(d.strategy)
            rows.append((format_address(d.address), d.distribution, strategy, d.baseline, d.rule))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
        return "\n".join(lines)

    def __getitem__(self, address: str | Address) -> Decision:
        wanted = tuple(address.split("/")) if isinstance(address, str) else address
        for d in self.decisions:
            if d.address == wanted:
                return d
        raise KeyError(format_address(wanted))


@dataclasses.dataclass
class Config:
    """Static settings of one estimator run, shared by nested scopes and re-runs."""

    strategies: dict[Address, Strategy | LogExpectationEstimator]
    default: Strategy
    particles: int
    plain: bool = False
    state: Any = None
    args: tuple = ()
    used: set[Address] = dataclasses.field(default_factory=set)
    stateful: dict[str, Any] = dataclasses.field(default_factory=dict)
    decisions: dict[Address, Decision] = dataclasses.field(default_factory=dict)
    #: Sites whose automatic choice deserves a warning, by note ("over budget", "no baseline").
    notes: dict[str, list[Address]] = dataclasses.field(default_factory=dict)
    #: Every sample-site and log_expectation address met (for messages about unknown ones).
    seen: set[Address] = dataclasses.field(default_factory=set)

    max_enumeration: int = 0

    def warnings(self) -> list[str]:
        """What ``auto()`` chose that the user should know: one message per kind, naming the sites."""
        out = []
        over = self.notes.get("over budget", [])
        if over:
            out.append(
                f"auto: the enumeration budget (max_enumeration={self.max_enumeration} continuations, the "
                f"product of the enumerated supports) is spent, so {listing(over)} use the score function "
                "instead of enumeration; choose their strategies explicitly, or raise "
                "auto(max_enumeration=...)"
            )
        bare = [a for a in self.notes.get("no baseline", []) if a not in over]
        if bare:
            out.append(
                f"auto: {listing(bare)} get a score-function gradient without a baseline (high variance): "
                "run the estimator with particles=K >= 2 for a leave-one-out baseline, or choose e.g. "
                "reinforce(running_average()) for them"
            )
        return out

    def enumeration_cost(self) -> int:
        """The number of continuations the enumerated sites so far cost (their supports multiplied)."""
        return math.prod(d.enumerated for d in self.decisions.values())

    def resolve(self, address: Address, d: Any, in_block: bool | str) -> Strategy:
        """The strategy of the sample site at ``address``; ``in_block`` is true (or names
        the enclosing construct) where continuation strategies are unavailable."""
        self.seen.add(address)
        if address in self.decisions:
            return self.decisions[address].strategy
        explicit = address in self.strategies
        strategy = self.strategies[address] if explicit else self.default
        where = f"address '{format_address(address)}' ({name(d)})"
        if isinstance(strategy, LogExpectationEstimator):
            raise ValueError(
                f"{where} is a sample site: {type(strategy).__name__} is an estimator for "
                "log_expectation terms"
            )
        if explicit:
            self.used.add(address)
            rule = f"strategies['{format_address(address)}']"
        else:
            rule = "the default"
        if isinstance(strategy, Auto):
            auto = strategy
            strategy, why, note = auto.choose(address, d, in_block, self.particles, self.enumeration_cost())
            rule = f"auto: {why}"
            # Hidden sites (``_sir``, ``_mh``...) are the library's own: explain lists them, no warning.
            if note is not None and not any(part.startswith("_") for part in address):
                self.notes.setdefault(note, []).append(address)
                self.max_enumeration = auto.max_enumeration
        strategy.check(address, d)
        if in_block and strategy.uses_continuation:
            inside = in_block if isinstance(in_block, str) else "ppl.vmap or ppl.scan"
            raise ValueError(
                f"{type(strategy).__name__.lower()} at {where}: continuation strategies are not "
                f"available inside {inside}: the rest of the objective cannot be re-run for one element "
                "alone (per-element enumeration and weak derivatives of a block's sites are not built "
                "yet); use reparam or reinforce there (with leave_one_out across particles), or, for a "
                "model's discrete sites, sum them out exactly: marginal(model, keep=[...], inference=exact())"
            )
        baseline = strategy.baseline
        if baseline is not None and baseline.deferred and self.particles < 2:
            raise ValueError(
                f"leave_one_out baseline at {where} needs particles >= 2: use "
                "objective.estimator(..., particles=K)"
            )
        if baseline is not None and baseline.stateful:
            self.stateful[format_address(address)] = baseline
        enumerated = support_size(d) if isinstance(strategy, Enum) else 1
        self.decisions[address] = Decision(address, name(d), strategy, rule, enumerated)
        return strategy

    def resolve_log_expectation(self, address: Address) -> LogExpectationEstimator:
        """The estimator chosen for the ``log_expectation`` term at ``address``."""
        self.seen.add(address)
        where = f"log_expectation at address '{format_address(address)}'"
        estimator = self.strategies.get(address)
        if estimator is None:
            raise ValueError(
                f"{where}: the log of an expectation has no unbiased gradient, so choose its "
                "estimator: strategies={'%s': T.compositional(gamma) | T.self_normalized_bound() "
                "| T.naive()}" % format_address(address)
            )
        self.used.add(address)
        if not isinstance(estimator, LogExpectationEstimator):
            raise ValueError(
                f"{where}: {type(estimator).__name__} is a sample-site strategy; use "
                "T.compositional, T.self_normalized_bound or T.naive"
            )
        if estimator.stateful:
            self.stateful[format_address(address)] = estimator
        if address not in self.decisions:
            self.decisions[address] = Decision(
                address, "log_expectation", estimator, f"strategies['{format_address(address)}']"
            )
        return estimator

    def estimator_state(self, address: Address, estimator: Any, kind: str = "estimator") -> Any:
        """The state of a stateful baseline or log-expectation estimator (stopped gradient)."""
        key = format_address(address)
        if self.state is None or key not in self.state:
            raise ValueError(
                f"address '{key}' has a stateful {kind} ({type(estimator).__name__}): create the state "
                "with state = estimator.init(params, *data) and pass state=state to value_and_grad"
            )
        return jax.tree_util.tree_map(sg, self.state[key])

    def baseline_value(self, address: Address, strategy: Strategy) -> jax.Array:
        baseline = strategy.baseline
        if baseline is None or baseline.deferred:
            return jnp.zeros(())
        if not baseline.stateful:
            return baseline.value((), self.args)
        return sg(baseline.value(self.estimator_state(address, baseline, "baseline"), self.args))
