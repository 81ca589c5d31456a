"""The handler behind ``simulate``, ``assess`` and ``generate``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ppl._choice_map import Address, format_address, listing, never_sampled, subtree, suggest
from ppl._distributions import check_parameters, check_value, name, poison_sample, site_log_prob
from ppl._handlers import Handler, check_leading_axis


class Interpreter(Handler):
    """Draw unconstrained sites from ``key``; read constrained ones from ``constraints``.

    ``simulate`` gives a key and no constraints, ``assess`` constraints and no
    key (every site must be given), ``generate`` both. Records the choices, the
    total log density (``score``) and the log density of the constrained sites
    (``weight``).
    """

    def __init__(
        self,
        key: jax.Array | None,
        constraints: dict[Address, Any],
        role: str,
        base: Address = (),
        program: str = "the program",
    ):
        super().__init__()
        self.base = base
        self.program = program
        self.key = key
        self.constraints = constraints
        self.role = role
        self.counter = 0
        self.choices: dict[Address, Any] = {}
        self.score = jnp.zeros(())
        self.weight = jnp.zeros(())
        self.used: set[Address] = set()
        self._block_base: Address = ()  # the absolute address of the block being entered

    def next_key(self) -> jax.Array:
        key = jax.random.fold_in(self.key, self.counter)
        self.counter += 1
        return key

    def sample(self, addr: Address, d: Any) -> Any:
        full = self.claim(addr, name(d))
        ok = check_parameters(self.base + full, d, self.mask)
        if full in self.constraints:
            self.used.add(full)
            value, given_ok = check_value(
                self.base + full, d, self.constraints[full], f"the value given to {self.role}", self.mask
            )
            if self.key is not None:
                self.counter += 1
            lp = self.masked(site_log_prob(d, value, ok & given_ok))
            self.weight = self.weight + lp
        elif self.key is None:
            given = [self.base + a for a in self.constraints]
            raise ValueError(
                f"{self.role}: {self.program} samples address '{format_address(self.base + full)}' "
                f"({name(d)}), but the choice map has no value for it (every sample site needs one); "
                f"the choice map has {listing(given)}{suggest(self.base + full, given)}"
            )
        else:
            value = poison_sample(d, d.sample(self.next_key()), ok)
            lp = self.masked(site_log_prob(d, value, ok))
        self.choices[full] = value
        self.score = self.score + lp
        return value

    def block_inputs(self, base: Address, size: int, own: Any) -> Any:
        keys = None if self.key is None else jax.random.split(self.next_key(), size)
        given = subtree(self.constraints, base)
        owned = own() if given else None
        if owned is not None:
            given = {a: v for a, v in given.items() if a in owned}
        check_leading_axis(self.role, self.base + base, given, size)
        self._block_base = self.base + base
        return keys, given

    def child(self, inputs: Any) -> Interpreter:
        keys, given = inputs
        return Interpreter(keys, given, self.role, self._block_base, self.program)

    def discovery_child(self, key: jax.Array) -> Interpreter:
        return Interpreter(key, {}, "discover", program=self.program)

    def sampled_addresses(self) -> set[Address]:
        return set(self.choices)

    def records(self) -> tuple[Any, Any]:
        self.check_all_used()
        return (self.choices, self.score, self.weight), None

    def absorb(self, base: Address, kind: str, arrays: Any, static: Any) -> None:
        choices, score, weight = arrays
        self.used.update(base + a for a in choices)
        for a, v in choices.items():
            self.claim_full(base + a, kind)
            self.choices[base + a] = v
        self.score = self.score + jnp.sum(score)
        self.weight = self.weight + jnp.sum(weight)

    def check_all_used(self) -> None:
        extra = sorted(set(self.constraints) - self.used - set(self.choices))
        if extra:
            sampled = [self.base + a for a in self.choices]
            raise ValueError(never_sampled(self.role, self.program, self.base + extra[0], sampled))
