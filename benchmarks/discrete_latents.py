"""Discrete latents, time to quality: a sigmoid belief net VAE trained with score-function estimators.

Model and data: :mod:`ppl.models.sbn`, 32 Bernoulli latents, a linear sigmoid
belief net decoder to 64 pixels and a factorized Bernoulli encoder, on
scikit-learn's bundled 8×8 digits binarized at ``pixel/16 > 0.5`` (1,437 train,
360 test images, ``random_state=0``).

Rows (each trains the same parameters from the same seed-dependent
initialization, on the same minibatch stream, with Adam at the same learning
rate and batch size):

* ours, all through ``ppl.transforms`` strategies on the ELBO:
  ``reinforce`` (no baseline), ``reinforce+running-average`` (decay 0.9),
  ``reinforce+leave-one-out`` (K particles per datum), ``mvd`` (one
  continuation pair per latent unit: 64 re-executions of the model density per
  datum), ``rb`` (causal Rao-Blackwellization: the units in a ``ppl.vmap``
  plate with their own costs, see :data:`ppl.models.sbn.elbo_per_unit`),
  ``rb+leave-one-out``, and ``vimco`` (``T.vimco(model, guide, K)``, the
  IWELBO(K) objective with VIMCO's leave-one-out baselines);
* NumPyro: ``SVI`` with ``TraceGraph_ELBO`` on the same model written with
  numpyro primitives (units in a plate, so its provenance tracking does the same
  per-unit Rao-Blackwellization as ``rb``), with ``num_particles`` 1 and K.
  NumPyro has no baselines for score-function terms (``TraceGraph_ELBO``'s only
  variance reduction is the dependency-based Rao-Blackwellization).

Measurements:

1. *Curves*: held-out IWELBO(K=1000) (mean over the first ``--eval-images``
   test images, common random numbers across rows) every ``--every`` steps, for
   ``--seeds`` seeds. The training loop runs as jitted ``lax.scan`` chunks
   between checkpoints, so the curves are step-based.
2. *Step time*: a separate timing pass calls each row's jitted single step (as
   an SVI-style Python loop would) in interleaved rounds; the median per-step
   time maps steps to wall-clock (evaluation and compilation excluded). The CPU
   is shared with other jobs, so the spread (p10-p90 over rounds) is reported.
3. *Time to quality*: the target is NumPyro's best final held-out bound (mean
   over seeds); each row's time to reach it is the first crossing of its
   seed-mean curve (linear interpolation between checkpoints) times its median
   step time. The speed-up is also reported with each row's one-off compile
   time (of its jitted step) added, which on a problem this small is of the
   same order as the training time itself.
4. *Gradient variance* at fixed parameters (the seed-0 initialization, and the
   parameters NumPyro K=1 reached at the end of seed 0): the trace of the
   covariance of ``--grad-samples`` gradient estimates on one fixed batch, for
   all parameters and for the encoder (guide) parameters alone; also multiplied
   by the step time (variance per unit of work).

In-program support checks of traced data are turned off (``ppl.set_runtime_checks``)
after the binarized data are validated once, as documented for tuned loops.

Target: our best estimator reaches NumPyro's final held-out bound at least 2×
sooner in wall-clock.

Nothing is written unless asked: ``--json PATH`` (written with ``T.write_json`` once the
curves are measured, and again complete at the end) and ``--figure PATH``, both checked before
the run. The committed record and figure are regenerated only by naming them
(``--json benchmarks/results/discrete-latents-cpu.json --figure docs/_static/discrete-latents.png``).
A row that never reaches a target has no time to it (``null``), and with no NumPyro row
(``--rows``) there is no target; the run still writes its JSON. It exits 1 if a curve, a
timing or a variance is not finite.

Usage: python benchmarks/discrete_latents.py [--steps 6000] [--every 200] [--seeds 3]
           [--rows NAMES] [--json PATH] [--figure PATH] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
from numpyro.infer import SVI, TraceGraph_ELBO
from ppl.models import sbn
from ppl.models._records import (
    check_results,
    name_list,
    nonnegative_int,
    open_unit_float,
    output_path,
    positive_float,
    positive_int,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import overhead

import ppl
from ppl import transforms as T

# Only in the gradient-variance table: T.elbo's standard form (direct −∇φ log q term kept).
VARIANCE_ONLY = ("reinforce-standard",)
OURS = tuple(name for name in sbn.ESTIMATORS if name not in VARIANCE_ONLY)


def numpyro_rows(particles: int) -> tuple[str, ...]:
    return ("numpyro TraceGraph_ELBO", f"numpyro TraceGraph_ELBO K={particles}")


def machine_info() -> dict[str, Any]:
    return {**overhead.machine_info(), "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}


class Row:
    """One training configuration: ``init(seed)``, a single ``step`` and ``get_params``."""

    def __init__(self, name: str, args: argparse.Namespace, train: jax.Array):
        self.name = name
        self.optimizer = optax.adam(args.lr)
        self.batch = args.batch
        self.train = train
        particles = args.particles
        if name.startswith("numpyro"):
            k = particles if name.endswith(f"K={particles}") else 1
            self.svi = SVI(
                sbn.numpyro_model,
                sbn.numpyro_guide,
                numpyro.optim.optax_to_numpyro(self.optimizer),
                TraceGraph_ELBO(num_particles=k),
            )
            self.trainer = None
        else:
            self.trainer = sbn.Trainer(name, particles=particles, decay=args.decay)
            self.svi = None
            self._step = sbn.make_step(self.trainer, self.optimizer)

    def init(self, seed: int) -> Any:
        params = sbn.init_params(jax.random.key(seed), self.train)
        x = self.train[: self.batch]
        if self.svi is not None:
            return self.svi.init(jax.random.key(10_000 + seed), x, params)
        return (params, self.optimizer.init(params), self.trainer.init(params, x))

    def step(self, state: Any, key: jax.Array, x: jax.Array) -> Any:
        if self.svi is not None:
            # The params argument only supplies numpyro.param initial values (unused after init).
            return self.svi.update(state, x, _like_params(x))[0]
        return self._step(state, key, x)

    def get_params(self, state: Any) -> sbn.Params:
        if self.svi is not None:
            return self.svi.get_params(state)
        return state[0]


def _like_params(x: jax.Array) -> sbn.Params:
    latents, pixels = sbn.LATENTS, x.shape[-1]
    return {
        "prior_logits": jnp.zeros(latents),
        "decoder_w": jnp.zeros((latents, pixels)),
        "decoder_b": jnp.zeros(pixels),
        "encoder_w": jnp.zeros((pixels, latents)),
        "encoder_b": jnp.zeros(latents),
    }


def batch_at(train: jax.Array, seed: int, step: jax.Array, size: int) -> jax.Array:
    """The minibatch of global step ``step`` for ``seed``: the same stream for every row."""
    key = jax.random.fold_in(jax.random.key(20_000 + seed), step)
    return train[jax.random.randint(key, (size,), 0, train.shape[0])]


def train_curves(
    row: Row, args: argparse.Namespace, evaluate: Callable[[sbn.Params], jax.Array]
) -> dict[str, Any]:
    """Held-out IWELBO at every checkpoint, per seed; the final parameters of each seed."""

    def chunk(state: Any, seed: jax.Array, start: jax.Array) -> Any:
        def body(state: Any, i: jax.Array) -> tuple[Any, None]:
            step = start + i
            x = batch_at(row.train, seed, step, row.batch)
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(30_000), seed), step)
            return row.step(state, key, x), None

        return jax.lax.scan(body, state, jnp.arange(args.every))[0]

    chunk = jax.jit(chunk)
    curves, finals = [], []
    started = time.perf_counter()
    for seed in range(args.seeds):
        state = row.init(seed)
        curve = [float(evaluate(row.get_params(state)))]
        for c in range(args.steps // args.every):
            state = chunk(state, seed, c * args.every)
            curve.append(float(evaluate(row.get_params(state))))
        curves.append(curve)
        finals.append(jax.tree.map(np.asarray, row.get_params(state)))
    return {"curves": curves, "finals": finals, "seconds": time.perf_counter() - started}


def timing_pass(rows: dict[str, Row], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median (p10, p90) time of one jitted step per row, interleaved rounds; compile time."""
    steps, states, out = {}, {}, {}
    xs = [batch_at(rows[next(iter(rows))].train, 0, i, args.batch) for i in range(10)]
    keys = [jax.random.key(i) for i in range(args.timing_steps)]
    for name, row in rows.items():
        steps[name] = jax.jit(row.step)
        state = row.init(0)
        start = time.perf_counter()
        state = jax.block_until_ready(steps[name](state, keys[0], xs[0]))
        first = time.perf_counter() - start
        start = time.perf_counter()
        states[name] = jax.block_until_ready(steps[name](state, keys[1], xs[1]))
        out[name] = {"compile_s": first - (time.perf_counter() - start), "rounds_ms": []}
    for _ in range(args.timing_rounds):
        for name in rows:
            state = states[name]
            start = time.perf_counter()
            for i, key in enumerate(keys):
                state = steps[name](state, key, xs[i % len(xs)])
            jax.block_until_ready(state)
            out[name]["rounds_ms"].append(1e3 * (time.perf_counter() - start) / len(keys))
            states[name] = state
    for r in out.values():
        ms = np.array(r["rounds_ms"])
        r.update(median_ms=float(np.median(ms)), p10_ms=float(np.percentile(ms, 10)))
        r["p90_ms"] = float(np.percentile(ms, 90))
    return out


def gradient_variance(
    names: list[str], points: dict[str, sbn.Params], x: jax.Array, args: argparse.Namespace
) -> dict[str, dict[str, dict[str, float]]]:
    """Trace of the covariance of ``args.grad_samples`` gradient estimates at each fixed point."""
    keys = jax.random.split(jax.random.key(40_000), args.grad_samples)
    out: dict[str, dict[str, Any]] = {point: {} for point in points}
    for name in names:
        if name.startswith("numpyro"):
            k = args.particles if name.endswith(f"K={args.particles}") else 1
            sample = jax.jit(
                jax.vmap(lambda key, p, s, k=k: sbn.numpyro_grad(key, p, x, k)[1], in_axes=(0, None, None))
            )
            trainer = None
        else:
            trainer = sbn.Trainer(name, particles=args.particles, decay=args.decay)
            sample = jax.jit(
                jax.vmap(lambda key, p, s, t=trainer: t.grad(key, p, x, s)[1], in_axes=(0, None, None))
            )
            warm = jax.jit(lambda key, p, s, t=trainer: t.grad(key, p, x, s)[2])
        for point, params in points.items():
            state = None if trainer is None else trainer.init(params, x)
            if state is not None:  # warm the running average at these parameters
                for i in range(args.warmup):
                    state = warm(jax.random.key(50_000 + i), params, state)
            grads = sample(keys, params, state)
            variances = {
                k: float(np.sum(np.var(np.asarray(v, np.float64), axis=0, ddof=1))) for k, v in grads.items()
            }
            out[point][name] = {
                "all": sum(variances.values()),
                "encoder": variances["encoder_w"] + variances["encoder_b"],
                "per_parameter": variances,
            }
    return out


def crossing(steps: np.ndarray, curve: np.ndarray, target: float) -> float | None:
    """First step at which ``curve`` reaches ``target`` (linear interpolation), or None."""
    above = np.nonzero(curve >= target)[0]
    if above.size == 0:
        return None
    i = int(above[0])
    if i == 0:
        return float(steps[0])
    s0, s1, c0, c1 = steps[i - 1], steps[i], curve[i - 1], curve[i]
    return float(s0 + (target - c0) / (c1 - c0) * (s1 - s0))


def time_to(results: dict[str, Any], timing: dict[str, Any], steps: np.ndarray, target: float) -> dict:
    """Per row: steps and seconds for the seed-mean curve to reach ``target`` (None: never)."""
    out = {}
    for name, r in results.items():
        step = crossing(steps, np.array(r["curves"]).mean(0), target)
        seconds = None if step is None else step * timing[name]["median_ms"] / 1e3
        with_compile = None if seconds is None else seconds + timing[name]["compile_s"]
        out[name] = {"steps": step, "seconds": seconds, "seconds_with_compile": with_compile}
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


def summarize(results: dict[str, Any], timing: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Time to quality against each NumPyro row's final bound; the headline uses the best one.

    Never fails for want of a crossing: a row that does not reach a target (NumPyro's own
    included) has ``None`` steps, seconds and speed-ups, and without NumPyro rows (``--rows``)
    there is no target (``reference`` and ``target_bound`` are ``None``).
    """
    steps = np.arange(0, args.steps + 1, args.every)
    np_rows = [n for n in results if n.startswith("numpyro")]
    # The final bound of the seed-mean curve (the curve the crossings are read on).
    finals = {n: float(np.array(r["curves"]).mean(0)[-1]) for n, r in results.items()}
    targets = {}
    for reference in np_rows:
        reached = time_to(results, timing, steps, finals[reference])
        reference_seconds = reached[reference]["seconds"]
        reference_with_compile = reached[reference]["seconds_with_compile"]
        for row in reached.values():
            row["speedup_vs_numpyro"] = _ratio(reference_seconds, row["seconds"])
            row["speedup_with_compile"] = _ratio(reference_with_compile, row["seconds_with_compile"])
        ours = [n for n in reached if not n.startswith("numpyro") and reached[n]["seconds"] is not None]
        best = min(ours, key=lambda n: reached[n]["seconds"]) if ours else None
        targets[reference] = {
            "target_bound": finals[reference],
            "numpyro_seconds": reference_seconds,
            "best": best,
            "best_speedup": reached[best]["speedup_vs_numpyro"] if best else None,
            "best_speedup_with_compile": reached[best]["speedup_with_compile"] if best else None,
            "rows": reached,
        }
    finite = [n for n in np_rows if np.isfinite(finals[n])]
    reference = max(finite, key=lambda n: finals[n]) if finite else None
    headline = targets[reference] if reference is not None else {}
    table = {}
    for name, r in results.items():
        curves = np.array(r["curves"])
        reached = headline.get("rows", {}).get(name, {})
        table[name] = {
            "final_mean": finals[name],
            "final_sd": float(curves[:, -1].std(ddof=1)) if len(curves) > 1 else 0.0,
            "final_full_test_mean": float(np.mean(r["final_full_test"])),
            "steps_to_target": reached.get("steps"),
            "seconds_to_target": reached.get("seconds"),
            "speedup_vs_numpyro": reached.get("speedup_vs_numpyro"),
            "speedup_with_compile": reached.get("speedup_with_compile"),
            "median_ms": timing[name]["median_ms"],
        }
    speedup = headline.get("best_speedup")
    return {
        "target_bound": headline.get("target_bound"),
        "reference": reference,
        "reference_seconds": headline.get("numpyro_seconds"),
        "best": headline.get("best"),
        "best_speedup": speedup,
        "best_speedup_with_compile": headline.get("best_speedup_with_compile"),
        "target_met": bool(speedup is not None and speedup >= 2.0),
        "table": table,
        "targets": targets,
    }


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def print_tables(summary: dict[str, Any], timing: dict[str, Any], variance: dict[str, Any]) -> None:
    if summary["reference"] is None:
        print("\nTime to quality: no NumPyro row, so no target (the final bounds are below)")
    else:
        print(
            f"\nTime to quality: target = NumPyro's best final held-out IWELBO(1000) "
            f"= {summary['target_bound']:.3f} nats ({summary['reference']})"
        )
    head = (
        f"{'estimator':30s} {'ms/step [p10, p90]':>22s} {'compile s':>9s} {'final':>16s} "
        f"{'full test':>9s} {'steps→target':>12s} {'s→target':>8s} {'speed-up':>8s} {'+compile':>8s}"
    )
    print(head)
    print("-" * len(head))
    for name, r in summary["table"].items():
        t = timing[name]
        ms = f"{t['median_ms']:.3f} [{t['p10_ms']:.3f}, {t['p90_ms']:.3f}]"
        final = f"{r['final_mean']:.3f} ± {r['final_sd']:.3f}"
        steps = _fmt(r["steps_to_target"], ".0f")
        secs = _fmt(r["seconds_to_target"], ".3f")
        speed = _fmt(r["speedup_vs_numpyro"], ".2f", "×")
        compiled = _fmt(r["speedup_with_compile"], ".2f", "×")
        print(
            f"{name:30s} {ms:>22s} {t['compile_s']:9.2f} {final:>16s} "
            f"{r['final_full_test_mean']:9.3f} {steps:>12s} {secs:>8s} {speed:>8s} {compiled:>8s}"
        )
    if summary["best"] is None:
        if summary["reference"] is not None:
            print("no estimator of ours reached the target")
    else:
        verdict = "met" if summary["target_met"] else "NOT met"
        print(
            f"best: {summary['best']}, {_fmt(summary['best_speedup'], '.2f', '×')} sooner than NumPyro in "
            f"wall-clock (target 2×: {verdict}); counting each row's compile time too: "
            f"{_fmt(summary['best_speedup_with_compile'], '.2f', '×')}"
        )
    for reference, t in summary["targets"].items():
        if t["best"] is not None:
            print(
                f"  against {reference}'s final bound {t['target_bound']:.3f}: "
                f"NumPyro {_fmt(t['numpyro_seconds'], '.3f')} s, "
                f"best of ours {t['best']} {t['rows'][t['best']]['seconds']:.3f} s "
                f"({_fmt(t['best_speedup'], '.2f', '×')}; "
                f"with compile {_fmt(t['best_speedup_with_compile'], '.2f', '×')})"
            )
    print("\nGradient variance: trace of the covariance over the gradient samples, one fixed batch")
    head = (
        f"{'estimator':30s} {'init: all':>11s} {'init: enc':>11s} {'trained: all':>12s} "
        f"{'trained: enc':>12s} {'trained all × ms':>16s}"
    )
    print(head)
    print("-" * len(head))
    for name in variance["init"]:
        a, b = variance["init"][name], variance["trained"][name]
        ms = timing.get(name, {}).get("median_ms")
        work = "—" if ms is None else f"{b['all'] * ms:.4g}"
        cells = f"{a['all']:11.4g} {a['encoder']:11.4g} {b['all']:12.4g} {b['encoder']:12.4g}"
        print(f"{name:30s} {cells} {work:>16s}")


def plot(results: dict[str, Any], timing: dict[str, Any], summary: dict[str, Any], args, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(0, args.steps + 1, args.every)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    cmap = plt.get_cmap("tab10")
    for i, (name, r) in enumerate(results.items()):
        curves = np.array(r["curves"])
        mean, low, high = curves.mean(0), curves.min(0), curves.max(0)
        style = "--" if name.startswith("numpyro") else "-"
        seconds = steps * timing[name]["median_ms"] / 1e3
        # The log-scale time axis starts at the first checkpoint (step 0 is at t = 0).
        for ax, xs, part in ((axes[0], seconds, slice(1, None)), (axes[1], steps, slice(None))):
            ax.plot(xs[part], mean[part], style, color=cmap(i % 10), label=name, lw=1.6)
            ax.fill_between(xs[part], low[part], high[part], color=cmap(i % 10), alpha=0.15, lw=0)
    for ax in axes:
        if summary["target_bound"] is not None:
            ax.axhline(summary["target_bound"], color="k", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    lo = min(np.array(r["curves"])[:, 1:].min() for r in results.values())
    hi = max(np.array(r["curves"]).max() for r in results.values())
    axes[0].set_ylim(lo - 0.2, hi + 0.2)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("wall-clock seconds (steps × measured median step time, log scale)")
    axes[1].set_xlabel("optimizer steps")
    axes[0].set_ylabel(f"held-out IWELBO(K=1000), {args.eval_images} test images (nats)")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"SBN VAE on binarized 8×8 digits: mean and min-max over {args.seeds} seeds; "
        f"dotted: NumPyro's final bound ({summary['reference']})",
        fontsize=10,
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """The command line (every flag checked as it is parsed; outputs default to none)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=positive_int, default=6000)
    parser.add_argument("--every", type=positive_int, default=200)
    parser.add_argument("--seeds", type=positive_int, default=3)
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--lr", type=positive_float, default=1e-2)
    parser.add_argument("--particles", type=positive_int, default=4)
    parser.add_argument("--decay", type=open_unit_float, default=0.9)
    parser.add_argument("--eval-images", type=positive_int, default=200)
    parser.add_argument("--eval-particles", type=positive_int, default=1000)
    parser.add_argument("--grad-samples", type=positive_int, default=200)
    parser.add_argument("--warmup", type=nonnegative_int, default=200)
    parser.add_argument("--timing-steps", type=positive_int, default=100)
    parser.add_argument("--timing-rounds", type=positive_int, default=20)
    parser.add_argument(
        "--rows", type=name_list(None, "row"), default=None, help="comma-separated subset of rows"
    )
    parser.add_argument(
        "--json",
        type=output_path("--json"),
        default=None,
        help="write the results here (none by default; the committed record is "
        "benchmarks/results/discrete-latents-cpu.json, regenerated only by naming it)",
    )
    parser.add_argument(
        "--figure",
        type=output_path("--figure"),
        default=None,
        help="save the curves figure here (none by default; the committed one is "
        "docs/_static/discrete-latents.png)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, 1 seed")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.every, args.seeds, args.grad_samples = 200, 100, 1, 20
        args.timing_rounds, args.timing_steps, args.warmup, args.eval_particles = 2, 10, 5, 100
    if args.steps % args.every:
        parser.error("--steps must be a multiple of --every")
    if args.grad_samples < 2:
        parser.error("--grad-samples must be at least 2 (a variance needs two samples)")
    all_names = list(OURS) + list(numpyro_rows(args.particles)) + list(VARIANCE_ONLY)
    if args.rows:
        unknown = [n for n in args.rows if n not in all_names]
        if unknown:
            parser.error(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(all_names)}")
    leave_one_out = ("reinforce+leave-one-out", "vimco", "rb+leave-one-out")
    needs_two = [n for n in leave_one_out if not args.rows or n in args.rows]
    if args.particles < 2 and needs_two:
        parser.error(f"--particles must be at least 2 for {', '.join(needs_two)} (leave-one-out baselines)")
    if args.rows and not [n for n in args.rows if n not in VARIANCE_ONLY]:
        parser.error(f"--rows needs at least one trained row (not only {', '.join(VARIANCE_ONLY)})")

    started = time.perf_counter()
    train_np, test_np = sbn.load_digits()
    for name, data in (("train", train_np), ("test", test_np)):
        if not np.all((data == 0) | (data == 1)):
            raise ValueError(f"{name} data are not binary")
    ppl.set_runtime_checks(False)  # data validated above
    train, test = jnp.asarray(train_np), jnp.asarray(test_np)
    held_out = test[: args.eval_images]
    eval_key = jax.random.key(60_000)
    evaluate = jax.jit(lambda p: sbn.iwelbo(eval_key, p, held_out, args.eval_particles))
    evaluate_full = jax.jit(lambda p: sbn.iwelbo(eval_key, p, test, args.eval_particles))

    names = list(OURS) + list(numpyro_rows(args.particles))
    if args.rows:
        names = [n for n in names if n in args.rows]
    rows = {name: Row(name, args, train) for name in names}

    print(f"machine: {machine_info()}")
    print(
        f"train {train.shape[0]}, test {test.shape[0]} (curves on the first {held_out.shape[0]}); "
        f"batch {args.batch}, Adam lr {args.lr}, {args.steps} steps, K = {args.particles}, "
        f"{args.seeds} seeds"
    )
    out: dict[str, Any] = {
        "machine": machine_info(),
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "figure")},
        "data": {
            "train": int(train.shape[0]),
            "test": int(test.shape[0]),
            "curve_images": int(held_out.shape[0]),
        },
        "checkpoint_steps": list(range(0, args.steps + 1, args.every)),
        "complete": False,
    }
    print("timing pass ...", flush=True)
    timing = timing_pass(rows, args) if rows else {}
    results = {}
    for name, row in rows.items():
        results[name] = train_curves(row, args, evaluate)
        results[name]["final_full_test"] = [float(evaluate_full(p)) for p in results[name]["finals"]]
        c = np.array(results[name]["curves"])
        print(
            f"  {name:30s} final {c[:, -1].mean():8.3f}  ({results[name]['seconds']:.1f} s incl. evals)",
            flush=True,
        )
    out.update(
        timing=timing,
        curves={n: r["curves"] for n, r in results.items()},
        final_full_test={n: r["final_full_test"] for n, r in results.items()},
        train_seconds_incl_eval={n: r["seconds"] for n, r in results.items()},
        cost_notes={n: sbn.Trainer(n, args.particles).cost_note() for n in OURS if n in rows},
    )
    if args.json:  # the measurements so far, in case a later stage fails
        T.write_json(out, args.json)
    summary = summarize(results, timing, args)

    print("gradient variance ...", flush=True)
    x = train[: args.batch]
    # The trained point: NumPyro K=1's seed-0 final parameters (else the reference's, else the first row's).
    k1 = "numpyro TraceGraph_ELBO"
    point_row = k1 if k1 in results else (summary["reference"] or names[0])
    points = {
        "init": sbn.init_params(jax.random.key(0), train),
        "trained": jax.tree.map(jnp.asarray, results[point_row]["finals"][0]),
    }
    variance_names = names + [n for n in VARIANCE_ONLY if args.rows is None or n in args.rows]
    variance = gradient_variance(variance_names, points, x, args)

    print_tables(summary, timing, variance)
    elapsed = time.perf_counter() - started
    print(f"\ntotal {elapsed:.0f} s")
    out.update(summary=summary, gradient_variance=variance, total_seconds=elapsed, complete=True)
    out["variance_points"] = {"init": "seed 0 initialization", "trained": f"{point_row}, seed 0, final"}
    if args.json:
        T.write_json(out, args.json)
        print(f"wrote {args.json}")
    if args.figure and results:
        plot(results, timing, summary, args, args.figure)
    check_results(
        {"curves": out["curves"], "timing": timing, "gradient_variance": variance}, "discrete_latents"
    )
    return out


if __name__ == "__main__":
    main()
