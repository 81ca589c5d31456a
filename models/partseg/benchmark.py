r"""The benchmark behind ``python -m ppl.models.partseg``: every method on identical inputs, tables and JSON.

For each data seed and each category, :func:`~ppl.models.partseg.data.make_dataset` draws ``--shapes``
examples (shape → views → superpoints → noisy masks); every row of
:data:`~ppl.models.partseg.pipeline.VARIANTS` (the PartSLIP heuristic, hard EM, soft EM, EM run to
convergence, EM from random logits, EM from the ground truth, the ground-truth upper bound) then
segments the *same* examples, each with the same key ``fold_in(key(seed), index)``.
:func:`~ppl.models.partseg.metrics.evaluate` scores each row over the set (AP50 and mIoU, also per
part class); superpoint purity (:func:`~ppl.models.partseg.metrics.superpoint_purity`) shows how much
the superpoints cap any grouping.

Times (``time.perf_counter``, one process, shapes run one after another):

* ``s/shape``: median wall time of ``run_variant`` per shape (heuristic, evidence counts, EM,
  post-processing; data generation excluded and reported apart), over every call but the row's
  first in the process;
* ``EM s``: the same for the E/M iterations alone (``em.run_em``, blocked until ready), the part the
  "≤ 1 s per shape" target is about; the paper's 174 s per shape is end to end, with detection and
  SAM;
* ``1st call``: the row's first call in the process, which includes compiling the EM (shown in the
  category where it happened; rows with equal EM settings, e.g. ``em-hard``, ``em-random`` and
  ``em-truth``, share one compiled EM, so only the first of them pays).

The AP50 and mIoU columns are mean ± std over seeds (one value per seed, each over that seed's
shapes); the summary gives the EM − heuristic AP50 gain per category (mean ± std of the paired
per-seed differences) and checks the issue's targets: hard EM beats the heuristic by ≥ 10 AP50
points on every category, and the E/M iterations take ≤ 1 s per shape on CPU. A shape on which a row
raises ``ValueError`` (for instance more initial instances than EM slots) counts as an empty
prediction for that row and is reported as ``fail k/n``; below resolution 160 the heuristic's
over-segmentation (up to ~80 instances at 96²) makes this common.

Loops run seed by seed, within a seed category by category, within a category shape by shape (every
row on one shape, then the next shape). With ``--json`` the file is rewritten (atomically) after each
(seed, category) block and every 30 s within one (the unfinished block scored on its shapes so far,
marked ``"partial"``), so a run stopped by a timeout keeps what it did; ``--report PATH`` prints the
tables of such a file.

Run: ``python -m ppl.models.partseg [--quick] [--shapes N] [--seeds N] [--resolution R]
[--noise mild|heavy|clean] [--categories chair,table] [--variants heuristic,em-hard,truth]
[--no-progress] [--json PATH]``. ``--noise`` picks the mask noise preset
(:meth:`~ppl.models.partseg.masks.MaskNoise.level`): ``mild`` (default) is a good detector, ``heavy``
the regime of the reference's prototype.
Sizes: ``--quick`` is 4 shapes × 1 seed per category at resolution 160 with rows heuristic, em-hard
and truth (about 6 s on 2 CPU cores, compilation included); the default is 50 shapes × 3 seeds at
resolution 160 with all rows (about 11 min on 2 CPU cores: 225 s per seed, em-converge a third of it);
``benchmarks/gpu_partseg.sh`` runs resolution 512 on the GPU machine.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from ppl.models._records import (
    int_at_least,
    machine_info,
    name_list,
    nonnegative_int,
    positive_int,
    read_report,
)
from ppl.models.partseg import data, em, metrics, pipeline, postprocess
from ppl.models.partseg.masks import NOISE_LEVELS, MaskNoise
from ppl.models.partseg.types import CATEGORIES, PART_CLASSES

from ppl import transforms as T

#: The ``--quick`` preset (CI): shapes, seeds, resolution, rows.
QUICK = {"shapes": 4, "seeds": 1, "resolution": 160, "variants": ("heuristic", "em-hard", "truth")}
#: The default preset.
DEFAULT = {"shapes": 50, "seeds": 3, "resolution": 160, "variants": tuple(pipeline.VARIANTS)}
#: The issue's targets.
TARGET_GAIN = 10.0
TARGET_EM_SECONDS = 1.0
#: The row whose gain over the heuristic and whose E/M time the targets are about.
EM_ROW = "em-hard"
BASE_ROW = "heuristic"


# -- timing -------------------------------------------------------------------------------------
class EMTimer:
    """Wall time of every ``em.run_em`` call (blocked until ready) while :meth:`patch` is active.

    The pipeline calls ``em.run_em`` through the module, so swapping the module attribute sees
    every E/M run; if a call site bypasses it, no times are recorded and the column reads n/a.
    """

    def __init__(self) -> None:
        self.seconds: list[float] = []

    @contextlib.contextmanager
    def patch(self) -> Iterator[EMTimer]:
        original = em.run_em

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = jax.block_until_ready(original(*args, **kwargs))
            self.seconds.append(time.perf_counter() - start)
            return out

        em.run_em = timed
        try:
            yield self
        finally:
            em.run_em = original


def _empty_prediction(num_points: int) -> postprocess.Instances:
    return postprocess.Instances(
        np.full(num_points, -1, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32)
    )


def example_key(seed: int, index: int) -> jax.Array:
    """The EM key of example ``index`` of data seed ``seed`` (the same for every row)."""
    return jax.random.fold_in(jax.random.key(seed), index)


# -- one (seed, category) block -----------------------------------------------------------------
def run_block(
    category: str,
    seed: int,
    shapes: int,
    resolution: int,
    variants: Sequence[str],
    first_calls: dict[str, dict[str, Any]],
    bar: Any = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_s: float = 30.0,
    noise: MaskNoise | None = None,
) -> dict[str, Any]:
    """Generate ``shapes`` examples of ``category`` from ``seed`` and run every row on each.

    Shapes are the outer loop (each example is generated, then every row segments it), so the rows
    interleave in time and a stopped block still holds a consistent set of shapes for every row.
    ``first_calls`` (row → record of its first call in the process) is filled in place: a row's
    first call is kept out of its per-shape times (it includes compilation). ``checkpoint``, if
    given, receives the block scored on the shapes done so far (``"partial": True``) at most every
    ``checkpoint_s`` seconds. ``noise`` sets the mask noise (default: :class:`MaskNoise`'s rates).
    """
    num_classes = len(PART_CLASSES[category])
    examples: list[data.Example] = []
    data_s = 0.0
    rows: dict[str, dict[str, list[Any]]] = {
        name: {"preds": [], "s": [], "em_s": [], "failures": []} for name in variants
    }

    def score(partial: bool) -> dict[str, Any]:
        truth = [e.shape for e in examples]
        return {
            "seed": seed,
            "partial": partial,
            "data_s": data_s,
            "purity": [metrics.superpoint_purity(e.superpoints, e.shape.instance) for e in examples],
            "num_superpoints": [e.num_superpoints for e in examples],
            "num_points": [len(e.shape.points) for e in examples],
            "variants": {
                name: {
                    **metrics.evaluate(truth, r["preds"], num_classes),
                    "s": list(r["s"]),
                    "em_s": list(r["em_s"]),
                    "failures": list(r["failures"]),
                }
                for name, r in rows.items()
            },
        }

    last = time.perf_counter()
    for i in range(shapes):
        t = time.perf_counter()
        example = data.make_example(category, data.example_seed(seed, i), resolution=resolution, noise=noise)
        data_s += time.perf_counter() - t
        examples.append(example)
        if bar is not None:
            bar.set_postfix_str(f"seed {seed} {category} {i + 1}/{shapes}", refresh=False)
            bar.update(1)
        for name, r in rows.items():
            timer = EMTimer()
            t = time.perf_counter()
            failed = False
            with timer.patch():
                try:
                    pred = pipeline.run_variant(example, name, example_key(seed, i))
                except ValueError as err:
                    pred = _empty_prediction(len(example.shape.points))
                    r["failures"].append({"index": i, "error": str(err)})
                    failed = True
            elapsed = time.perf_counter() - t
            em_s = sum(timer.seconds) if timer.seconds else None
            r["preds"].append(pred)
            if failed:  # not timed: it stopped early
                pass
            elif name not in first_calls:
                first_calls[name] = {"category": category, "seed": seed, "s": elapsed, "em_s": em_s}
            else:
                r["s"].append(elapsed)
                if em_s is not None:
                    r["em_s"].append(em_s)
            if bar is not None:
                bar.update(1)
        if checkpoint is not None and i + 1 < shapes and time.perf_counter() - last >= checkpoint_s:
            checkpoint(score(partial=True))
            last = time.perf_counter()
    return score(partial=False)


# -- aggregation --------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> dict[str, float | None]:
    ok = [v for v in values if v is not None and np.isfinite(v)]
    if not ok:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(ok)), "std": float(np.std(ok)), "n": len(ok)}


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def summarize_category(blocks: Sequence[dict[str, Any]], variants: Sequence[str]) -> dict[str, Any]:
    """Per row: AP50/mIoU mean ± std over seeds, per-class means, per-shape time medians."""
    purity = [p for b in blocks for p in b["purity"]]
    shapes = sum(len(b["purity"]) for b in blocks)
    out: dict[str, Any] = {
        "seeds": [b["seed"] for b in blocks],
        "shapes": shapes,
        "purity": {"mean": float(np.mean(purity)), "min": float(np.min(purity))} if purity else None,
        "num_superpoints": _mean_std([s for b in blocks for s in b["num_superpoints"]]),
        "data_s_per_shape": sum(b["data_s"] for b in blocks) / max(shapes, 1),
        "variants": {},
    }
    for name in variants:
        rows = [b["variants"][name] for b in blocks if name in b["variants"]]
        if not rows:
            continue
        seconds = [s for r in rows for s in r["s"]]
        em_seconds = [s for r in rows for s in r["em_s"]]
        out["variants"][name] = {
            "AP50": _mean_std([r["AP50"] for r in rows]),
            "mIoU": _mean_std([r["mIoU"] for r in rows]),
            "AP50_per_class": _column_means([r["AP50_per_class"] for r in rows]),
            "IoU_per_class": _column_means([r["IoU_per_class"] for r in rows]),
            "s_median": _median(seconds),
            "s_mean": float(np.mean(seconds)) if seconds else None,
            "em_s_median": _median(em_seconds),
            "timed_shapes": len(seconds),
            "failures": sum(len(r["failures"]) for r in rows),
            "runs": sum(len(b["purity"]) for b in blocks if name in b["variants"]),
        }
    return out


def _column_means(rows: list[list[float | None]]) -> list[float | None]:
    """Per column, the mean of the finite entries (None where there is none)."""
    arr = np.array([[np.nan if v is None else v for v in r] for r in rows], float)
    finite = np.isfinite(arr)
    sums = np.where(finite, arr, 0.0).sum(0)
    counts = finite.sum(0)
    return [float(t / n) if n else None for t, n in zip(sums, counts)]


def _ran(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The categories with at least one (possibly partial) block."""
    return {c: cat for c, cat in record["categories"].items() if cat["blocks"]}


def gains(record: dict[str, Any], row: str, base: str = BASE_ROW) -> dict[str, dict[str, float | None]]:
    """Per category: ``row`` − ``base`` AP50, mean ± std over the seeds where both ran (paired)."""
    out = {}
    for category, cat in _ran(record).items():
        diffs = [
            b["variants"][row]["AP50"] - b["variants"][base]["AP50"]
            for b in cat["blocks"]
            if row in b["variants"] and base in b["variants"]
        ]
        out[category] = _mean_std(diffs)
    return out


def targets(record: dict[str, Any]) -> dict[str, Any]:
    """The issue's two targets, evaluated on ``record`` (None where a needed row did not run)."""
    gain = gains(record, EM_ROW)
    means = [g["mean"] for g in gain.values()]
    gain_met = None if not means or any(m is None for m in means) else all(m >= TARGET_GAIN for m in means)
    em_times = [
        c["summary"]["variants"][EM_ROW]["em_s_median"]
        for c in _ran(record).values()
        if EM_ROW in c["summary"]["variants"] and c["summary"]["variants"][EM_ROW]["em_s_median"] is not None
    ]
    em_s = float(np.median(em_times)) if em_times else None
    return {
        "gain_row": EM_ROW,
        "gain": gain,
        "gain_target": TARGET_GAIN,
        "gain_met": gain_met,
        "categories_missing": [c for c in record["categories"] if c not in gain],
        "em_s_per_shape": em_s,
        "em_s_target": TARGET_EM_SECONDS,
        "em_s_met": None if em_s is None else em_s <= TARGET_EM_SECONDS,
        "em_s_platform": record["machine"]["backend"],
    }


# -- tables -------------------------------------------------------------------------------------
def _fmt_ms(stat: dict[str, Any], signed: bool = False) -> str:
    if stat is None or stat.get("mean") is None:
        return "n/a"
    sign = "+" if signed else ""
    if stat["n"] > 1:
        return f"{stat['mean']:{sign}.1f}±{stat['std']:.1f}"
    return f"{stat['mean']:{sign}.1f}"


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _fmt_class(value: float | None) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.1f}"


def format_category(category: str, cat: dict[str, Any], first_calls: dict[str, dict[str, Any]]) -> str:
    """One category's table: rows = variants; AP50, mIoU (mean ± std over seeds), per-class AP50,
    median seconds per shape (end to end, E/M alone) and the first call."""
    s = cat["summary"]
    classes = PART_CLASSES[category]
    cw = max(7, *(len(c) + 1 for c in classes))
    head = (
        f"{'variant':<13}{'AP50':>11}{'mIoU':>11}"
        + "".join(f"{c:>{cw}}" for c in classes)
        + f"{'s/shape':>9}{'EM s':>8}{'1st call':>10}"
    )
    purity = s["purity"]
    sps = s["num_superpoints"]
    lines = [
        f"{category}: {s['shapes']} shapes ({len(s['seeds'])} seed(s): {', '.join(map(str, s['seeds']))}), "
        f"resolution {cat['resolution']}, {sps['mean']:.0f} superpoints/shape, superpoint purity "
        f"{purity['mean']:.1f}% (min {purity['min']:.1f}%), data {s['data_s_per_shape']:.3f} s/shape"
        + "".join(
            f"; seed {b['seed']} stopped after {len(b['purity'])} shapes"
            for b in cat["blocks"]
            if b.get("partial")
        ),
        f"AP50 / mIoU: mean±std over seeds (%); per-class AP50 (mean over seeds) under {', '.join(classes)}",
        head,
        "-" * len(head),
    ]
    for name, v in s["variants"].items():
        first = first_calls.get(name)
        first_s = first["s"] if first and first["category"] == category else None
        fails = f"  fail {v['failures']}/{v['runs']}" if v["failures"] else ""
        lines.append(
            f"{name:<13}{_fmt_ms(v['AP50']):>11}{_fmt_ms(v['mIoU']):>11}"
            + "".join(f"{_fmt_class(a):>{cw}}" for a in v["AP50_per_class"])
            + f"{_fmt_s(v['s_median']):>9}{_fmt_s(v['em_s_median']):>8}{_fmt_s(first_s):>10}"
            + fails
        )
    return "\n".join(lines)


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "NOT met")


def format_summary(record: dict[str, Any]) -> str:
    """The AP50 gains over the heuristic per category and the two targets."""
    cats = list(_ran(record))
    variants = record["config"]["variants"]
    lines = []
    if BASE_ROW in variants:
        em_rows = [v for v in variants if v.startswith("em")]
        head = f"{'AP50 − heuristic':<18}" + "".join(f"{c:>14}" for c in cats)
        lines += [head, "-" * len(head)]
        for row in em_rows:
            g = gains(record, row)
            lines.append(f"{row:<18}" + "".join(f"{_fmt_ms(g[c], signed=True):>14}" for c in cats))
        lines.append("")
    t = record["targets"]
    gain_text = ", ".join(f"{c} {_fmt_ms(t['gain'][c], signed=True)}" for c in cats)
    lines.append(
        f"EM (hard) − heuristic AP50 per category: {gain_text}  "
        f"[target ≥ {TARGET_GAIN:g} on every category: {_verdict(t['gain_met'])}"
        + (f"; {', '.join(t['categories_missing'])} did not run" if t.get("categories_missing") else "")
        + "]"
    )
    em_s = t["em_s_per_shape"]
    em_text = "n/a" if em_s is None else f"{em_s:.3f} s"
    where = t["em_s_platform"]
    note = "" if where == "cpu" else f" (measured on {where}; the target is for CPU)"
    compile_note = ""
    first = record["first_calls"].get(EM_ROW)
    if first and first.get("em_s") is not None and em_s is not None:
        compile_note = f"; first call {first['em_s']:.2f} s (≈ {first['em_s'] - em_s:.2f} s compilation)"
    lines.append(
        f"E/M iterations per shape ({EM_ROW}, median after compilation): {em_text}{compile_note}  "
        f"[target ≤ {TARGET_EM_SECONDS:g} s on CPU: {_verdict(t['em_s_met'])}{note}]"
    )
    return "\n".join(lines)


def format_report(record: dict[str, Any]) -> str:
    """Every category's table, then the summary."""
    parts = [format_category(c, cat, record["first_calls"]) for c, cat in _ran(record).items()]
    head = f"mask noise: {record['config'].get('noise', 'mild')}"
    return "\n\n".join([head, *parts, format_summary(record)])


def _finish(record: dict[str, Any]) -> None:
    for cat in _ran(record).values():
        cat["summary"] = summarize_category(cat["blocks"], record["config"]["variants"])
    record["targets"] = targets(record)


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="partseg", mininterval=0.5, unit="run")


def run(
    categories: Sequence[str],
    shapes: int,
    seeds: int,
    resolution: int,
    variants: Sequence[str],
    first_seed: int = 0,
    progress: bool = True,
    json_path: str | None = None,
    log: Callable[[str], None] | None = print,
    noise: str = "mild",
) -> dict[str, Any]:
    """The whole benchmark; returns the record (see :func:`main` for the options).

    ``json_path`` is checked before anything runs and written as strict JSON, atomically.
    """
    if json_path:
        T.check_output_path(json_path, "--json")
    mask_noise = MaskNoise.level(noise)
    record: dict[str, Any] = {
        "config": {
            "categories": list(categories),
            "shapes": shapes,
            "seeds": list(range(first_seed, first_seed + seeds)),
            "resolution": resolution,
            "noise": noise,
            "mask_noise": repr(mask_noise),
            "variants": list(variants),
            "em_configs": {
                v: repr(pipeline.VARIANTS[v][1]) for v in variants if pipeline.VARIANTS[v][1] is not None
            },
            "methods": {v: pipeline.VARIANTS[v][0] for v in variants},
            "key": "fold_in(key(seed), index)",
        },
        "machine": machine_info(),
        "categories": {
            c: {"resolution": resolution, "classes": list(PART_CLASSES[c]), "blocks": []} for c in categories
        },
        "first_calls": {},
        "seconds": {},
        "complete": False,
    }
    start = time.perf_counter()
    total = seeds * len(categories) * shapes * (1 + len(variants))
    bar = _progress_bar(total, progress)
    try:
        for seed in record["config"]["seeds"]:
            for category in categories:
                t = time.perf_counter()
                blocks = record["categories"][category]["blocks"]

                def save(partial: dict[str, Any], blocks: list[dict[str, Any]] = blocks) -> None:
                    blocks.append(partial)
                    record["seconds"]["total"] = time.perf_counter() - start
                    _finish(record)
                    T.write_json(record, json_path)
                    blocks.pop()

                block = run_block(
                    category,
                    seed,
                    shapes,
                    resolution,
                    variants,
                    record["first_calls"],
                    bar,
                    checkpoint=save if json_path else None,
                    noise=mask_noise,
                )
                block["block_s"] = time.perf_counter() - t
                record["categories"][category]["blocks"].append(block)
                if log is not None:
                    scores = ", ".join(
                        f"{n} {r['AP50']:.1f}" for n, r in block["variants"].items() if r["AP50"] is not None
                    )
                    fails = sum(len(r["failures"]) for r in block["variants"].values())
                    text = f"seed {seed} {category} ({block['block_s']:.0f} s): AP50 {scores}"
                    text += f" ({fails} failed runs)" if fails else ""
                    (bar.write if bar is not None else log)(text)
                if json_path:
                    record["seconds"]["total"] = time.perf_counter() - start
                    _finish(record)
                    T.write_json(record, json_path)
    finally:
        if bar is not None:
            bar.close()
    record["seconds"]["total"] = time.perf_counter() - start
    record["complete"] = True
    _finish(record)
    if json_path:
        T.write_json(record, json_path)
    return record


# -- entry point --------------------------------------------------------------------------------
render_resolution = int_at_least(8, "an integer ≥ 8")  # argparse type: a render resolution


def result_problems(record: dict[str, Any]) -> list[str]:
    """Why a finished record holds no usable result: no category ran, or a row's AP50 or mIoU
    is missing or non-finite in some category (empty list when the record is fine)."""
    ran = _ran(record)
    if not ran:
        return ["no category ran"]
    problems = []
    for category, cat in ran.items():
        for name, row in cat["summary"]["variants"].items():
            for metric in ("AP50", "mIoU"):
                mean = row[metric]["mean"]
                if mean is None or not math.isfinite(mean):
                    problems.append(f"{category} {name} {metric}")
    return problems


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description="Multi-view 3D part segmentation: PartSLIP heuristic vs PartSLIP++ EM variants "
        "on generated shapes (AP50, mIoU, seconds per shape)."
    )
    parser.add_argument("--quick", action="store_true", help="CI-sized run: 4 shapes × 1 seed, 160², 3 rows")
    parser.add_argument(
        "--shapes", type=positive_int, default=None, help="shapes per category and seed (default 50)"
    )
    parser.add_argument("--seeds", type=positive_int, default=None, help="data seeds (default 3)")
    parser.add_argument(
        "--first-seed", type=nonnegative_int, default=0, help="seeds run first-seed … first-seed+N−1"
    )
    parser.add_argument(
        "--resolution", type=render_resolution, default=None, help="render resolution, ≥ 8 (default 160)"
    )
    parser.add_argument(
        "--noise",
        default="mild",
        choices=NOISE_LEVELS,
        help="mask noise preset (MaskNoise.level; default: mild)",
    )
    parser.add_argument(
        "--categories",
        type=name_list(CATEGORIES, "category", "category(ies)"),
        default=list(CATEGORIES),
        help="comma-separated",
    )
    parser.add_argument(
        "--variants",
        type=name_list(tuple(pipeline.VARIANTS), "variant"),
        default=None,
        help=f"rows, comma-separated (default all: {','.join(pipeline.VARIANTS)})",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", default=None, help="write the record here (rewritten after each block)")
    parser.add_argument("--report", default=None, help="print the tables of a JSON record and exit")
    args = parser.parse_args(argv)

    if args.report:
        record, text = read_report(parser, args.report, format_report)
        print(text)
        if not record.get("complete", True):
            print("(partial record: the run stopped before its end)")
        return record

    preset = QUICK if args.quick else DEFAULT
    shapes = preset["shapes"] if args.shapes is None else args.shapes
    seeds = preset["seeds"] if args.seeds is None else args.seeds
    resolution = preset["resolution"] if args.resolution is None else args.resolution
    variants = list(preset["variants"]) if args.variants is None else args.variants
    if args.json:
        try:
            T.check_output_path(args.json, "--json")
        except ValueError as e:
            parser.error(str(e))

    record = run(
        args.categories,
        shapes,
        seeds,
        resolution,
        variants,
        first_seed=args.first_seed,
        progress=not args.no_progress,
        json_path=args.json,
        noise=args.noise,
    )
    print()
    print(format_report(record))
    m = record["machine"]
    print(f"\ntotal {record['seconds']['total']:.0f} s on {m['device']} ({m['usable_cpus']} usable CPUs)")
    problems = result_problems(record)
    if problems:
        raise SystemExit(f"error: no finite result for {', '.join(problems)}")
    return record
