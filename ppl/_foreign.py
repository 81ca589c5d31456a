"""Foreign effects: NumPyro primitives reached while a ppl program runs are an error.

A ``numpyro.sample`` (or ``param``, ``plate``, ``factor``, ``deterministic``...) inside a
``@ppl.gen`` function or an objective is not a ppl sample site: left alone it would draw
from NumPyro's own handlers, or from none, and the objective would silently miss it (an
ELBO of exactly 0, a plate that is ignored). While any ppl handler is active, a guard sits
on NumPyro's handler stack and turns every NumPyro message into a clear error.
"""

from __future__ import annotations

from typing import Any

from numpyro.primitives import Messenger

_ROUTE = {
    "sample": "use ppl.sample(address, distribution)",
    "plate": "use ppl.vmap(g) over a generative function for independent copies",
    "param": "pass parameters as arguments (a pytree) of the program",
    "deterministic": "return the value, or record it with the objective's aux output",
}


class ForeignEffectGuard(Messenger):
    """Raises on any NumPyro message; pushed by every ppl handler while it is active."""

    def __init__(self, where: str):
        super().__init__()
        self.where = where

    def process_message(self, msg: Any) -> None:
        kind = msg.get("type", "effect")
        name = msg.get("name")
        site = f"numpyro.{kind}({name!r})" if name is not None else f"numpyro.{kind}"
        route = _ROUTE.get(kind, "write the program with ppl.sample, ppl.vmap and ppl.scan")
        raise RuntimeError(
            f"{site} was reached inside a ppl {self.where}: NumPyro primitives are not ppl sample "
            f"sites, and the estimator would silently miss them; {route}. NumPyro models and "
            "guides cannot be used as ppl programs yet"
        )
