"""One shape end to end: the heuristic or the EM from a chosen start, then the shared post-processing.

Methods (all on identical inputs: the example's views, superpoints and noisy masks):

- ``"heuristic"``: the PartSLIP grouping (:mod:`.heuristic`);
- ``"em"``: EM (:mod:`.em`) from the heuristic's instances (saturated one-hot logits);
- ``"em-random"``: EM from random logits over as many slots as the heuristic's start;
- ``"em-truth"``: EM from the ground-truth majority instance of every superpoint;
- ``"truth"``: the ground-truth upper bound given the superpoints (:func:`.metrics.upper_bound`).

Sizes are padded (:data:`MAX_LABELS`, :data:`MAX_SUPERPOINTS`, ``em.MAX_INSTANCES``), so
every shape of a benchmark reuses one compiled EM.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ppl.models.partseg import em, heuristic, metrics, postprocess
from ppl.models.partseg.counts import count_evidence
from ppl.models.partseg.data import Example, validate
from ppl.models.partseg.superpoints import majority
from ppl.models.partseg.types import PART_CLASSES

MAX_LABELS = 40
MAX_SUPERPOINTS = 512
METHODS = ("heuristic", "em", "em-random", "em-truth", "truth")


def truth_superpoint_instances(example: Example) -> np.ndarray:
    """Each superpoint's majority ground-truth instance (−1 for unlabeled majorities)."""
    return majority(example.superpoints, example.shape.instance)


def largest_instances(instances: np.ndarray, limit: int) -> np.ndarray:
    """Renumber to ``0..n−1``, keeping at most the ``limit`` largest instances (by superpoint
    count); the rest become −1 (the EM's "rest" slot)."""
    labels = postprocess.relabel(instances)
    sizes = np.bincount(labels[labels >= 0])
    if sizes.size <= limit:
        return labels
    keep = np.sort(np.argsort(-sizes, kind="stable")[:limit])
    return postprocess.relabel(np.where(np.isin(labels, keep), labels, -1))


def em_instances(
    example: Example, start: np.ndarray | None, key: jax.Array, config: em.EMConfig | None = None
) -> np.ndarray:
    """EM from ``start`` (``(S,)`` instance per superpoint, −1 = rest; ``None``: random) → ``(S,)``."""
    num = example.num_superpoints
    if num > MAX_SUPERPOINTS:
        raise ValueError(f"{num} superpoints exceed MAX_SUPERPOINTS = {MAX_SUPERPOINTS}")
    ev = count_evidence(example.views, example.masks, example.superpoints, MAX_LABELS, MAX_SUPERPOINTS)
    init_key, run_key = jax.random.split(key)
    if start is None:
        heuristic_start = heuristic.heuristic_instances(
            example.shape.points, example.superpoints, example.views, example.masks
        )
        used = min(int(postprocess.relabel(heuristic_start).max()) + 8, em.MAX_INSTANCES)
        logits, slot_valid = em.random_logits(init_key, MAX_SUPERPOINTS, used)
    else:
        padded = np.full(MAX_SUPERPOINTS, -1)
        padded[:num] = largest_instances(start, em.MAX_INSTANCES - 1)
        logits, slot_valid = em.initial_logits(padded)
    out, _ = em.run_em(
        jnp.asarray(logits),
        jnp.asarray(slot_valid),
        jnp.asarray(ev.counts),
        jnp.asarray(ev.totals),
        jnp.asarray(ev.label_valid),
        run_key,
        config or em.EMConfig(),
    )
    return np.asarray(jnp.argmax(out, -1))[:num]


def segment(
    example: Example, method: str, key: jax.Array | None = None, config: em.EMConfig | None = None
) -> postprocess.Instances:
    """Predicted part instances of one example by ``method`` (see the module docstring)."""
    validate(example.shape, example.views, example.masks, example.superpoints)
    key = jax.random.key(0) if key is None else key
    if method == "heuristic":
        instances = heuristic.heuristic_instances(
            example.shape.points, example.superpoints, example.views, example.masks
        )
    elif method == "em":
        start = heuristic.heuristic_instances(
            example.shape.points, example.superpoints, example.views, example.masks
        )
        instances = em_instances(example, start, key, config)
    elif method == "em-random":
        instances = em_instances(example, None, key, config)
    elif method == "em-truth":
        instances = em_instances(example, truth_superpoint_instances(example), key, config)
    elif method == "truth":
        return metrics.upper_bound(example.shape, example.superpoints)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    num_classes = len(PART_CLASSES[example.shape.category])
    return postprocess.postprocess(
        example.shape.points,
        example.views,
        example.masks,
        instances,
        num_classes,
        superpoints=example.superpoints,
    )


#: The benchmark's rows: name → (method, EM settings). ``em-converge`` runs the M-step
#: toward convergence (20 Adam steps per view instead of the paper's one).
VARIANTS: dict[str, tuple[str, em.EMConfig | None]] = {
    "heuristic": ("heuristic", None),
    "em-hard": ("em", em.EMConfig()),
    "em-soft": ("em", em.EMConfig(e_step="soft")),
    "em-converge": ("em", em.EMConfig(m_steps=20, learning_rate=0.1)),
    "em-random": ("em-random", em.EMConfig()),
    "em-truth": ("em-truth", em.EMConfig()),
    "truth": ("truth", None),
}


def run_variant(example: Example, name: str, key: jax.Array | None = None) -> postprocess.Instances:
    """``segment`` with the settings of benchmark row ``name`` (see :data:`VARIANTS`)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    method, config = VARIANTS[name]
    return segment(example, method, key, config)
