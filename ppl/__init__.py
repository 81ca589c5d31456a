"""ppl: generative programs, objective programs and per-site gradient strategies for JAX.

The language lives here (``gen``, ``sample``, traces, choice maps, combinators);
the estimator machinery is :mod:`ppl.transforms`; applications are
:mod:`ppl.models`.
"""

from ppl._checks import set_runtime_checks
from ppl._choice_map import Address, ChoiceMap, as_address, flatten, merge, unflatten
from ppl._combinators import VmapGenerativeFunction, cond, scan, switch, vmap
from ppl._gen import GenerativeFunction, Trace, gen, sample
from ppl._tfp import TFPDistribution

__all__ = [
    "Address",
    "ChoiceMap",
    "GenerativeFunction",
    "TFPDistribution",
    "Trace",
    "VmapGenerativeFunction",
    "as_address",
    "cond",
    "flatten",
    "gen",
    "merge",
    "sample",
    "scan",
    "set_runtime_checks",
    "switch",
    "unflatten",
    "vmap",
]

__version__ = "0.1.0"
