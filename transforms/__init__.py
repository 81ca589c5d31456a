"""ppl.transforms: objective programs and per-site gradient strategies.

Write an objective with :func:`expectation`; inside it use ``ppl.sample``,
:func:`sim`, :func:`density` and :func:`add_cost`. Pick a strategy per address
at the call site: ``objective.estimator(strategies={"z": reparam()}, default=auto())``.
"""

from ppl.transforms._baselines import (
    Baseline,
    constant,
    learned,
    leave_one_out,
    leave_one_out_mean,
    none,
    running_average,
)
from ppl.transforms._expectation import (
    Estimator,
    Expectation,
    add_cost,
    density,
    expectation,
    sim,
)
from ppl.transforms._strategies import (
    MVD,
    Auto,
    Enum,
    Reinforce,
    Reparam,
    Site,
    Strategy,
    auto,
    enum,
    mvd,
    reinforce,
    reparam,
)

__all__ = [
    "MVD",
    "Auto",
    "Baseline",
    "Enum",
    "Estimator",
    "Expectation",
    "Reinforce",
    "Reparam",
    "Site",
    "Strategy",
    "add_cost",
    "auto",
    "constant",
    "density",
    "enum",
    "expectation",
    "learned",
    "leave_one_out",
    "leave_one_out_mean",
    "mvd",
    "none",
    "reinforce",
    "reparam",
    "running_average",
    "sim",
]
