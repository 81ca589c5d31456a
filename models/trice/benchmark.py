r"""The benchmark behind ``python -m ppl.models.trice``: TRICE against STaR, rejection sampling,
direct answer tuning and gold rationales, on one pretrained model, data and sampling budget.

Per seed: pretrain (or load from the cache) an imperfect base model
(:func:`~ppl.models.trice.pretrain.load_or_pretrain`), draw the training and held-out questions
(:func:`~ppl.models.trice.tasks.make_splits`), and run every method of
:data:`~ppl.models.trice.train.METHODS` from that base (:func:`~ppl.models.trice.train.train`).
Reported, mean ± std over seeds:

* held-out greedy accuracy per k, its mean, and the hard split (k ≥ 6);
* the training marginal ``p_θ(y | x)`` (sampled accuracy on training questions);
* the last step's acceptance rate (TRICE; for rejection sampling, the fraction of questions with
  a correct proposal) and the milliseconds per step after compilation;
* gradient variance (seed 0, along the TRICE-CV run): at each evaluation point, the trace of
  the covariance of the basic, control-variate and subsampled estimators over ``redraws``
  redraws of the proposals at frozen parameters and memory, against the acceptance rate.

Targets (the issue's): TRICE-CV beats STaR and rejection sampling on held-out accuracy of the
hard split; its gradient variance is ≥ 5× below the basic estimator's once acceptance > 0.9.

Run: ``python -m ppl.models.trice [--quick] [--task chain-sum|pointer] [--steps N] [--seeds N]
[--train-questions N] [--batch-size M] [--mode full|soft_prompt] [--learning-rate LR]
[--methods trice-cv,star,...] [--json PATH] [--figures DIR] [--checkpoints DIR] [--report PATH]``.
Flags are checked before anything runs (positive counts, a finite positive learning rate, known
and distinct method names, writable output paths); ``--checkpoints DIR`` keeps one checkpoint
per method and seed (:func:`~ppl.models.trice.train.train`), so a stopped benchmark resumes
where it stopped, and refuses a file of another configuration. The command exits non-zero with
a message on misuse, on a checkpoint it cannot resume, on a diverged run, and on empty or
non-finite results. The default is
chain-sum, 1024 training and 600 held-out questions, full fine-tuning with Adam 1e-4 for 100
steps of ``M = 64``, 3 seeds (about 10 minutes on 2 CPU cores); ``--quick`` is the CI-sized run
(a small pretraining, 32 training questions, 6 steps, 1 seed); ``benchmarks/gpu_trice.sh`` runs a
larger configuration on the GPU machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ppl.models._records import machine_info, name_list, positive_float, positive_int, read_report
from ppl.models.trice import pretrain, tasks, train, trice

from ppl import transforms as T

HARD_K = 6
TARGET_VARIANCE_RATIO = 5.0
TARGET_ACCEPTANCE = 0.9

QUICK = {
    "train": 32,
    "heldout": 60,
    "config": train.TrainConfig(steps=6, batch_size=8, eval_every=3, star_steps=5, train_eval=16),
    "pretrain": dataclasses.replace(pretrain.DEFAULT, steps=60, warmup=10, chunk=30, pool_size=2000),
    "redraws": 8,
    "seeds": 1,
}
DEFAULT = {
    "train": 1024,
    "heldout": 600,
    "config": train.TrainConfig(),
    "pretrain": pretrain.DEFAULT,
    "redraws": 64,
    "seeds": 3,
}


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}


def hard_accuracy(per_k: dict[int, float]) -> float:
    return float(np.mean([a for k, a in per_k.items() if int(k) >= HARD_K]))


def variance_probe(config: train.TrainConfig, redraws: int, train_split: tasks.Example, at: set[int]) -> Any:
    """An ``on_eval`` callback for the TRICE-CV run: at the steps in ``at``, the trace of the
    covariance of each estimator over ``redraws`` proposal redraws, at the run's current
    parameters and memory (its first ``M`` questions), and the acceptance rate there."""
    m = config.batch_size
    batch = trice.Question(jnp.asarray(train_split.prompt[:m]), jnp.asarray(train_split.answer[:m]))
    estimators: dict[str, Any] = {}

    def probe(state: train.TrainState, frozen: Any) -> dict[str, Any]:
        step = int(state.step)
        if step not in at:
            return {}
        if not estimators:
            model = trice.cot_model(frozen)
            for name in trice.ESTIMATORS:
                estimators[name] = trice.estimator(model, name, m if name == "subsampled" else None)
        row: dict[str, float] = {}
        for name, est in estimators.items():
            variance, acceptance = trice.gradient_variance(
                jax.random.key(1000 + step), est, state.params, batch, trice.memory(state.memory[:m]), redraws
            )
            row[name] = float(variance)
            row["acceptance"] = float(acceptance)
        return {"variance": row}

    return probe


def variance_points(config: train.TrainConfig, points: int = 5) -> set[int]:
    """About ``points`` evaluation steps spread over the run (always the first and the last)."""
    evals = sorted({*range(0, config.steps, config.eval_every), config.steps})
    picks = np.linspace(0, len(evals) - 1, min(points, len(evals))).round().astype(int)
    return {evals[i] for i in picks}


def run(
    task: str,
    methods: Sequence[str],
    seeds: int,
    preset: dict[str, Any],
    log: Any = print,
    json_path: str | None = None,
    checkpoints: str | None = None,
) -> dict[str, Any]:
    """The whole benchmark; returns the record.

    ``json_path``: rewritten (strict JSON, atomically) after every seed and at the end.
    ``checkpoints``: an existing folder for one checkpoint per method and seed
    (:func:`checkpoint_path`); runs resume from them.
    """
    if json_path:
        T.check_output_path(json_path, "--json")
    if checkpoints is not None:
        check_folder(checkpoints, "--checkpoints", create=False)
    config = preset["config"]
    record: dict[str, Any] = {
        "config": {
            "task": task,
            "methods": list(methods),
            "seeds": seeds,
            "train": preset["train"],
            "heldout": preset["heldout"],
            "train_config": dataclasses.asdict(config),
            "pretrain": dataclasses.asdict(preset["pretrain"]),
            "redraws": preset["redraws"],
        },
        "machine": machine_info(),
        "runs": {m: [] for m in methods},
        "base": [],
    }
    start = time.perf_counter()
    for seed in range(seeds):
        t = time.perf_counter()
        base = pretrain.load_or_pretrain(task, seed, config=preset["pretrain"])
        train_split, heldout = tasks.make_splits(task, preset["train"], preset["heldout"], seed)
        base_acc = pretrain.evaluate_accuracy(jax.random.key(seed), base, heldout)
        guide_acc = pretrain.evaluate_accuracy(jax.random.key(seed), base, heldout, hinted=True)
        record["base"].append(
            {"seed": seed, "heldout": base_acc, "guide": guide_acc, "s": time.perf_counter() - t}
        )
        log(
            f"seed {seed}: base held-out {pretrain.mean_accuracy(base_acc):.3f}, "
            f"guide {pretrain.mean_accuracy(guide_acc):.3f}"
        )
        for method in methods:
            probe = None
            if seed == 0 and method == "trice-cv":
                probe = variance_probe(config, preset["redraws"], train_split, variance_points(config))
            path = checkpoint_path(checkpoints, task, method, seed) if checkpoints is not None else None
            result = train.train(
                method, base, train_split, heldout, config, seed=seed, checkpoint=path, on_eval=probe
            )
            final = result.history[-1]
            record["runs"][method].append(
                {
                    "seed": seed,
                    "history": result.history,
                    "seconds": result.seconds,
                    "step_ms": result.step_ms,
                }
            )
            if probe is not None:
                record["variance"] = [
                    {"step": h["step"], **h["variance"]} for h in result.history if "variance" in h
                ]
            log(
                f"seed {seed} {method} ({result.seconds:.0f} s): held-out {final['heldout_mean']:.3f}, "
                f"hard {hard_accuracy(final['heldout']):.3f}"
            )
        if json_path:
            T.write_json(record, json_path)
    record["seconds"] = time.perf_counter() - start
    record["summary"] = summarize(record)
    if json_path:
        T.write_json(record, json_path)
    return record


def checkpoint_path(folder: str, task: str, method: str, seed: int) -> str:
    """The checkpoint of one run of the benchmark in ``folder``."""
    return os.path.join(folder, f"trice-{task}-{method}-seed{seed}.npz")


def check_folder(path: str, what: str, create: bool = True) -> str:
    """Fail now if ``path`` cannot be an output folder: not a file, and either an existing
    writable folder or (``create``) a new one inside an existing folder, created here."""
    if not path:
        raise ValueError(f"{what}: the folder name is empty")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{what} {path!r} is a file, not a folder")
    if not os.path.isdir(path):
        if not create:
            raise ValueError(f"{what} {path!r}: no such folder (create it first)")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise ValueError(f"{what} {path!r}: the folder {parent!r} does not exist")
        try:
            os.mkdir(path)
        except OSError as e:
            raise ValueError(f"{what} {path!r}: cannot create it ({e.strerror})") from e
    T.check_output_path(os.path.join(path, "write-check"), what)
    return path


def nonfinite(record: dict[str, Any]) -> list[str]:
    """The paths of the non-finite numbers among a record's results (base model, every run's
    history, the variance rows)."""
    found: list[str] = []

    def walk(obj: Any, path: str) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{path}.{k}")
        elif isinstance(obj, list | tuple):
            for i, v in enumerate(obj):
                walk(v, f"{path}[{i}]")
        elif isinstance(obj, float) and not math.isfinite(obj):
            found.append(path.lstrip("."))

    for key in ("base", "runs", "variance"):
        walk(record.get(key), key)
    return found


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    """Per method: mean ± std over seeds of the final evaluation; the targets."""
    out: dict[str, Any] = {"methods": {}}
    for method, runs in record["runs"].items():
        if not runs:
            continue
        finals = [r["history"][-1] for r in runs]
        ks = sorted(finals[0]["heldout"], key=int)
        out["methods"][method] = {
            "heldout_per_k": {str(k): _mean_std([f["heldout"][k] for f in finals]) for k in ks},
            "heldout_mean": _mean_std([f["heldout_mean"] for f in finals]),
            "hard": _mean_std([hard_accuracy(f["heldout"]) for f in finals]),
            "train_p": _mean_std([f["train_p"] for f in finals]),
            "acceptance": _mean_std([f["acceptance"] for f in finals]) if "acceptance" in finals[0] else None,
            "seconds": _mean_std([r["seconds"] for r in runs]),
        }
    methods = out["methods"]
    if "trice-cv" in methods:
        ours = methods["trice-cv"]["hard"]["mean"]
        out["beats"] = {m: ours > methods[m]["hard"]["mean"] for m in ("star", "rejection") if m in methods}
    curve = record.get("variance")
    if curve:
        high = [r for r in curve if r["acceptance"] > TARGET_ACCEPTANCE]
        out["variance_ratio_high_acceptance"] = [_ratio(r["basic"], r["control_variate"]) for r in high]
        out["variance_met"] = bool(high) and all(
            x >= TARGET_VARIANCE_RATIO for x in out["variance_ratio_high_acceptance"]
        )
    return out


def format_report(record: dict[str, Any]) -> str:
    summary = record.get("summary") or summarize(record)
    lines = []
    base = record["base"]
    lines.append(
        "base model held-out greedy accuracy: "
        + ", ".join(
            f"seed {b['seed']} {pretrain.mean_accuracy(b['heldout']):.3f} "
            f"(guide {pretrain.mean_accuracy(b['guide']):.3f})"
            for b in base
        )
    )
    methods = summary["methods"]
    if methods:
        ks = list(next(iter(methods.values()))["heldout_per_k"])
        head = (
            f"{'method':<17}"
            + "".join(f"{'k=' + k:>12}" for k in ks)
            + f"{'mean':>12}{'k≥6':>12}{'train p':>12}{'accept':>12}{'s':>7}"
        )
        lines += [
            "",
            f"held-out greedy accuracy (mean±std over {record['config']['seeds']} seeds)",
            head,
            "-" * len(head),
        ]
        for method, s in methods.items():
            cells = [_fmt(s["heldout_per_k"][k]) for k in ks] + [
                _fmt(s["heldout_mean"]),
                _fmt(s["hard"]),
                _fmt(s["train_p"]),
            ]
            cells.append(_fmt(s["acceptance"]) if s["acceptance"] else "–")
            lines.append(
                f"{method:<17}" + "".join(f"{c:>12}" for c in cells) + f"{s['seconds']['mean']:>7.0f}"
            )
    if record.get("variance"):
        lines += [
            "",
            "gradient variance (trace of covariance, seed 0, along TRICE-CV; frozen params and memory)",
        ]
        head = f"{'step':>6}{'accept':>9}{'basic':>12}{'cv':>12}{'subsampled':>12}{'basic/cv':>10}"
        lines += [head, "-" * len(head)]
        for r in record["variance"]:
            lines.append(
                f"{r['step']:>6}{r['acceptance']:>9.3f}{r['basic']:>12.4g}{r['control_variate']:>12.4g}"
                f"{r['subsampled']:>12.4g}{_ratio(r['basic'], r['control_variate']):>10.1f}"
            )
    ms = {m: [r["step_ms"] for r in runs if r.get("step_ms")] for m, runs in record["runs"].items()}
    ms = {m: float(np.median(v)) for m, v in ms.items() if v}
    if ms:
        lines += [
            "",
            "ms per step after compilation (median): " + ", ".join(f"{m} {v:.0f}" for m, v in ms.items()),
        ]
    if "beats" in summary:
        lines.append("")
        lines.append(
            "TRICE-CV hard-split (k ≥ 6) accuracy above "
            + ", ".join(f"{m}: {'yes' if ok else 'NO'}" for m, ok in summary["beats"].items())
        )
    if "variance_met" in summary:
        ratios = (
            ", ".join(f"{x:.1f}" for x in summary["variance_ratio_high_acceptance"]) or "no point reached it"
        )
        lines.append(
            f"variance basic/CV at acceptance > {TARGET_ACCEPTANCE}: {ratios} "
            f"[target ≥ {TARGET_VARIANCE_RATIO:g}: {'met' if summary['variance_met'] else 'NOT met'}]"
        )
    return "\n".join(lines)


def _ratio(a: float, b: float) -> float:
    return a / b if b != 0 else math.inf


def _fmt(stat: dict[str, float] | None) -> str:
    return "–" if stat is None else f"{stat['mean']:.3f}±{stat['std']:.2f}"


def plot(record: dict[str, Any], directory: str) -> list[str]:
    """Learning curves (held-out accuracy against sampled rationales or steps) and the variance plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, runs in record["runs"].items():
        if not runs:
            continue
        history = runs[0]["history"]
        x = [
            h["sampled"]
            if method not in ("direct", "gold")
            else h["step"] * record["config"]["train_config"]["batch_size"]
            for h in history
        ]
        ax.plot(x, [h["heldout_mean"] for h in history], marker="o", ms=3, label=method)
    ax.set_xlabel("sampled rationales (direct, gold: training sequences)")
    ax.set_ylabel("held-out greedy accuracy (seed 0)")
    ax.legend(fontsize=8)
    paths.append(os.path.join(directory, "trice-learning-curves.png"))
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    if record.get("variance"):
        fig, ax = plt.subplots(figsize=(5, 4))
        curve = record["variance"]
        for name in trice.ESTIMATORS:
            ax.semilogy([r["acceptance"] for r in curve], [r[name] for r in curve], marker="o", label=name)
        ax.set_xlabel("acceptance rate")
        ax.set_ylabel("trace of gradient covariance")
        ax.legend()
        paths.append(os.path.join(directory, "trice-variance.png"))
        fig.tight_layout()
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="TRICE vs STaR, rejection sampling, direct and gold tuning.")
    parser.add_argument("--quick", action="store_true", help="CI-sized run")
    parser.add_argument("--task", default="chain-sum", choices=tasks.TASKS)
    parser.add_argument(
        "--steps", type=positive_int, default=None, help="optimizer steps per run (default 100)"
    )
    parser.add_argument(
        "--train-questions", type=positive_int, default=None, help="training questions (default 1024)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=None, help="M, rationales sampled per step (default 64)"
    )
    parser.add_argument(
        "--mode", default=None, choices=("full", "soft_prompt"), help="tuning mode (default full)"
    )
    parser.add_argument(
        "--learning-rate", type=positive_float, default=None, help="Adam learning rate (default 1e-4)"
    )
    parser.add_argument("--seeds", type=positive_int, default=None, help="seeds 0..N-1 (default 3)")
    parser.add_argument(
        "--methods",
        type=name_list(train.METHODS, "method"),
        default=list(train.METHODS),
        help=f"comma-separated (default all: {','.join(train.METHODS)})",
    )
    parser.add_argument("--json", default=None, help="write the record here (strict JSON)")
    parser.add_argument("--figures", default=None, help="write the learning-curve and variance figures here")
    parser.add_argument(
        "--checkpoints",
        default=None,
        help="an existing folder: one checkpoint per method and seed, resumed when present",
    )
    parser.add_argument("--report", default=None, help="print the tables of a JSON record and exit")
    args = parser.parse_args(argv)
    if args.report:
        record, text = read_report(parser, args.report, format_report)
        print(text)
        return record
    preset = dict(QUICK if args.quick else DEFAULT)
    changes = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "mode": args.mode,
        "learning_rate": args.learning_rate,
    }
    preset["config"] = dataclasses.replace(
        preset["config"], **{k: v for k, v in changes.items() if v is not None}
    )
    if args.train_questions is not None:
        preset["train"] = args.train_questions
    methods = args.methods
    seeds = args.seeds or preset["seeds"]
    try:
        for method in methods:
            train.check_settings(method, preset["config"], preset["train"])
        if args.json:
            T.check_output_path(args.json, "--json")
        if args.figures:
            check_folder(args.figures, "--figures")
        if args.checkpoints:
            check_folder(args.checkpoints, "--checkpoints")
    except ValueError as e:
        parser.error(str(e))
    try:
        record = run(args.task, methods, seeds, preset, json_path=args.json, checkpoints=args.checkpoints)
    except (train.CheckpointError, train.DivergedError) as e:
        raise SystemExit(f"error: {e}") from None
    print()
    print(format_report(record))
    if args.figures:
        for path in plot(record, args.figures):
            print(f"wrote {path}")
    print(f"\ntotal {record['seconds']:.0f} s on {record['machine']['device']}")
    if not record["summary"]["methods"]:
        raise SystemExit("error: the run produced no results")
    bad = nonfinite(record)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise SystemExit(f"error: non-finite results: {shown}")
    return record
