"""Choice maps: nested dicts of arrays keyed by address.

An *address* is a tuple of strings. A plain string ``"z"`` names the top-level
address ``("z",)``; ``"enc/z"`` and ``("enc", "z")`` name the same nested
address. A *choice map* is a nested ``dict`` whose leaves are arrays; it is an
ordinary JAX pytree, so it passes through ``jit``, ``vmap`` and ``grad``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

Address = tuple[str, ...]
ChoiceMap = dict[str, Any]


def as_address(addr: str | Address) -> Address:
    """Normalize ``"a/b"``, ``("a", "b")`` or ``"a"`` to a tuple address."""
    if isinstance(addr, str):
        parts = tuple(addr.split("/"))
    elif isinstance(addr, tuple):
        parts = addr
    else:
        raise TypeError(f"an address is a string or a tuple of strings, got {addr!r}")
    if not parts or not all(isinstance(p, str) and p for p in parts):
        raise TypeError(f"an address is a non-empty string or tuple of strings, got {addr!r}")
    return parts


def format_address(addr: Address) -> str:
    """The ``"a/b"`` spelling of an address, used in messages."""
    return "/".join(addr)


def flatten(choices: ChoiceMap | None, prefix: Address = ()) -> dict[Address, Any]:
    """Flatten a nested choice map to ``{address: leaf}``."""
    flat: dict[Address, Any] = {}
    if choices is None:
        return flat
    if not isinstance(choices, dict):
        raise TypeError(f"a choice map is a dict, got {type(choices).__name__}")
    for key, value in choices.items():
        if not isinstance(key, str):
            raise TypeError(f"choice map keys are strings, got {key!r}")
        addr = prefix + as_address(key)
        if isinstance(value, dict):
            flat.update(flatten(value, addr))
        else:
            flat[addr] = value
    return flat


def unflatten(flat: dict[Address, Any]) -> ChoiceMap:
    """Inverse of :func:`flatten`."""
    nested: ChoiceMap = {}
    for addr, value in flat.items():
        node = nested
        for part in addr[:-1]:
            node = node.setdefault(part, {})
        node[addr[-1]] = value
    return nested


def merge(*choice_maps: ChoiceMap) -> ChoiceMap:
    """Merge choice maps; an address given twice is an error.

    Example:
        >>> merge({"z": 1.0}, {"x": 2.0})
        {'z': 1.0, 'x': 2.0}
    """
    flat: dict[Address, Any] = {}
    for cm in choice_maps:
        for addr, value in flatten(cm).items():
            if addr in flat:
                raise ValueError(f"merge: address '{format_address(addr)}' is given twice")
            flat[addr] = value
    return unflatten(flat)


def subtree(flat: dict[Address, Any], prefix: Address) -> dict[Address, Any]:
    """The entries of a flat map under ``prefix``, with the prefix removed."""
    n = len(prefix)
    return {a[n:]: v for a, v in flat.items() if a[:n] == prefix and len(a) > n}


def nearest(address: Address, candidates: Iterable[Address], limit: int = 3) -> list[str]:
    """The candidate addresses most like ``address``, spelled ``"a/b"``, best first.

    Addresses ending like ``address`` come first (``z`` finds ``particles/z``), then close
    spellings.
    """
    names = sorted({format_address(c) for c in candidates})
    wanted = format_address(address)
    suffix = [n for n in names if n.endswith("/" + wanted) or wanted.endswith("/" + n)]
    close = difflib.get_close_matches(wanted, names, n=limit, cutoff=0.6)
    out = list(dict.fromkeys(suffix + close))
    return out[:limit]


def suggest(address: Address, candidates: Iterable[Address]) -> str:
    """``"; did you mean 'particles/z'?"``, or ``""`` when nothing is near."""
    found = nearest(address, candidates)
    if not found:
        return ""
    return "; did you mean " + " or ".join(f"'{n}'" for n in found) + "?"


def listing(addresses: Iterable[Address], limit: int = 8) -> str:
    """``"'a', 'b/c', ... (12 in all)"`` for messages; ``"none"`` when empty."""
    names = sorted({format_address(a) for a in addresses})
    if not names:
        return "none"
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def never_sampled(who: str, program: str, address: Address, sampled: Iterable[Address]) -> str:
    """The message for a given address that a program never samples (with the ones it does)."""
    sampled = list(sampled)
    return (
        f"{who}: the choice map has address '{format_address(address)}', which {program} never samples; "
        f"it samples {listing(sampled)}{suggest(address, sampled)}"
    )
