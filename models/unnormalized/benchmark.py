r"""The benchmark behind ``python -m ppl.models.unnormalized``: four sections, tables and JSON.

1. ``landscape``: the exact 1D population landscape (:mod:`.landscape`), MLE vs NCE.
2. ``oned``: the 1D Gaussian mean with stochastic gradients: data ``N(R, 1)``, noise ``N(0, 1)``
   (and a second row set with noise ``N(R, 1)`` centred on the data), Adam; iterations to
   ``|θ − R| < 0.1`` (first hit) and the final ``|θ − R|``, mean ± std over seeds.
3. ``toy``: the 2D sets with the tilted MLP energy; test NLL by exact grid normalization,
   mean ± std over seeds, per noise (``fitted``, ``narrow``; ``--noises``).
4. ``digits``: scikit-learn's digits, tilted MLP energy over the fitted Gaussian; test NLL with the
   importance estimate of ``log Z`` (fitted Gaussian proposal) and its effective sample size.

All estimators see the same number of energy evaluations per step (see :mod:`.train`). "div k/n"
marks runs stopped by a non-finite value or gradient (NaN/inf); a run that stays finite but runs
away (naive's θ drifting off in 1D, its exploding 2D NLLs) shows as a large error or NLL. Scales
(``--scale``): ``quick`` (CI: about 70 s on 2 CPU cores), ``default`` (about 5 minutes on 2 CPU cores),
``full`` (bigger nets, more steps, a larger importance sample: meant for the GPU machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

import jax
import numpy as np
import numpyro.distributions as dist
from ppl.models._records import check_results, machine_info, name_list, output_path, positive_int
from ppl.models.unnormalized import data as D
from ppl.models.unnormalized import energies as E
from ppl.models.unnormalized import evaluate as V
from ppl.models.unnormalized import landscape as L
from ppl.models.unnormalized.train import ESTIMATORS, OBJECTIVE_OF, theta, train

from ppl import transforms as T

SECTIONS = ("landscape", "oned", "toy", "digits")


@dataclasses.dataclass(frozen=True)
class Scale:
    oned_seeds: int = 5
    oned_steps: int = 2000
    oned_batch: int = 64
    oned_lr: float = 0.05
    toy_seeds: int = 3
    toy_steps: int = 4000
    toy_batch: int = 256
    toy_lr: float = 1e-3
    toy_width: int = 64
    toy_train: int = 20_000
    toy_test: int = 5_000
    grid: int = 400
    digits_seeds: int = 3
    digits_steps: int = 2000
    digits_batch: int = 256
    digits_lr: float = 1e-3
    digits_width: int = 128
    importance_samples: int = 100_000
    landscape_cap: int = 10**6


SCALES = {
    "quick": Scale(
        oned_seeds=2,
        oned_steps=400,
        toy_seeds=1,
        digits_seeds=1,
        toy_steps=300,
        toy_width=32,
        toy_train=5000,
        toy_test=2000,
        grid=200,
        digits_steps=300,
        digits_lr=3e-3,
        digits_width=64,
        importance_samples=20_000,
    ),
    "default": Scale(),
    "full": Scale(
        oned_seeds=10,
        oned_steps=5000,
        toy_seeds=3,
        toy_steps=10_000,
        toy_batch=1024,
        toy_width=256,
        toy_train=100_000,
        toy_test=20_000,
        grid=800,
        digits_seeds=3,
        digits_steps=10_000,
        digits_batch=1024,
        digits_width=512,
        importance_samples=1_000_000,
    ),
}


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


# -- sections ---------------------------------------------------------------------
def run_landscape(scale: Scale) -> list[dict[str, Any]]:
    return L.landscape(L.OFFSETS, cap=scale.landscape_cap)


def run_oned(scale: Scale, progress: bool) -> dict[str, Any]:
    """Per noise placement and estimator, per ``R``: first-hit iterations and final error."""
    seeds = list(range(scale.oned_seeds))
    model = E.gaussian_mean()
    out: dict[str, Any] = {}
    for placement in ("N(0,1)", "N(R,1)"):
        for name in ESTIMATORS:
            rows = {}
            for r in L.OFFSETS:
                x = D.gaussian_1d(r, 10_000, seed=int(10 * r))
                noise = dist.Normal(0.0 if placement == "N(0,1)" else r, 1.0)
                res = train(
                    OBJECTIVE_OF[name],
                    name,
                    model,
                    x,
                    noise,
                    scale.oned_steps,
                    scale.oned_batch,
                    scale.oned_lr,
                    seeds,
                    track=theta,
                    decay=True,
                    progress=progress,
                    desc=f"R={r:g} {placement} {name}",
                )
                err = np.abs(res.tracked - r)
                hits = [int(np.argmax(e < 0.1)) + 1 if (e < 0.1).any() else None for e in err]
                rows[str(r)] = {
                    "hits": hits,
                    "final_error": [float(e) for e in err[:, -1]],
                    "diverged": int(res.diverged.sum()),
                    "wall_s": res.wall_s,
                }
            out[f"{placement}/{name}"] = rows
    return out


def run_toy(scale: Scale, noises: tuple[str, ...], sets: tuple[str, ...], progress: bool) -> dict[str, Any]:
    """Per data set, noise and estimator: test NLL (grid) per seed, divergence, wall time."""
    seeds = list(range(scale.toy_seeds))
    out: dict[str, Any] = {}
    for name in sets:
        train_x, test_x = D.toy_2d_split(name, scale.toy_train, scale.toy_test, seed=0)
        model = E.tilted_mlp(*D.fit_gaussian(train_x), width=scale.toy_width, name=f"mlp/{name}")
        base = V.grid_nll(model.log_density, model.init(jax.random.key(0)), test_x, n=scale.grid)
        for noise_name in noises:
            noise = D.noise(noise_name, train_x)
            cell: dict[str, Any] = {"untrained_nll": base}
            for est in ESTIMATORS:
                res = train(
                    OBJECTIVE_OF[est],
                    est,
                    model,
                    train_x,
                    noise,
                    scale.toy_steps,
                    scale.toy_batch,
                    scale.toy_lr,
                    seeds,
                    progress=progress,
                    desc=f"{name}/{noise_name} {est}",
                )
                nll = [
                    V.grid_nll(model.log_density, res.seed_params(i), test_x, n=scale.grid)
                    for i in range(len(seeds))
                ]
                cell[est] = {"nll": nll, "diverged_at": res.diverged_at.tolist(), "wall_s": res.wall_s}
            out[f"{name}/{noise_name}"] = cell
    return out


def run_digits(scale: Scale, noises: tuple[str, ...], progress: bool) -> dict[str, Any]:
    """Per noise and estimator: importance test NLL (nats per image, ÷16 scale), ESS, standard error."""
    seeds = list(range(scale.digits_seeds))
    train_x, test_x = D.load_digits(seed=0)
    mean, cov = D.fit_gaussian(train_x)
    proposal = D.gaussian(mean, cov)
    model = E.tilted_mlp(mean, cov, width=scale.digits_width, name="mlp/digits")

    def evaluate(params: Any, seed: int) -> dict[str, float]:
        return V.importance_nll(
            model.log_density,
            params,
            test_x,
            proposal,
            jax.random.key(10_000 + seed),
            scale.importance_samples,
        )

    out: dict[str, Any] = {"untrained": evaluate(model.init(jax.random.key(0)), 0)}
    for noise_name in noises:
        noise = D.noise(noise_name, train_x)
        for est in ESTIMATORS:
            res = train(
                OBJECTIVE_OF[est],
                est,
                model,
                train_x,
                noise,
                scale.digits_steps,
                scale.digits_batch,
                scale.digits_lr,
                seeds,
                progress=progress,
                desc=f"digits/{noise_name} {est}",
            )
            evals = [evaluate(res.seed_params(i), s) for i, s in enumerate(seeds)]
            out[f"{noise_name}/{est}"] = {
                "nll": [e["nll"] for e in evals],
                "ess": [e["ess"] for e in evals],
                "se": [e["se"] for e in evals],
                "diverged_at": res.diverged_at.tolist(),
                "wall_s": res.wall_s,
            }
    return out


# -- tables -------------------------------------------------------------------------
def _fmt(values: list[float], diverged: int = 0, digits: int = 3) -> str:
    ok = [v for v in values if np.isfinite(v)]
    if diverged == len(values) or not ok:
        return f"div {diverged}/{len(values)}" if diverged else "nan"
    text = f"{np.mean(ok):.{digits}f}±{np.std(ok):.{digits}f}" if len(ok) > 1 else f"{ok[0]:.{digits}f}"
    return text + (f" (div {diverged}/{len(values)})" if diverged else "")


def _fmt_hits(hits: list[int | None]) -> str:
    got = [h for h in hits if h is not None]
    if not got:
        return "never"
    text = f"{np.mean(got):.0f}±{np.std(got):.0f}" if len(got) > 1 else f"{got[0]}"
    return text + (f" ({len(hits) - len(got)} never)" if len(got) < len(hits) else "")


def format_landscape(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'R':>4} {'MLE curv':>8} {'MLE steps':>9} {'NCE λmin':>10} {'NCE λmax':>9} {'NCE η':>7} "
        f"{'NCE steps':>10}"
    )
    lines = [
        "1D exact landscape: data N(R,1), noise N(0,1), ν=1; GD from (θ,c)=(0,0) to |θ−R|<0.01,",
        "η = 1/max(λmax at optimum, λmax at start) for NCE, η = 1 for MLE",
        head,
        "-" * len(head),
    ]
    for r in rows:
        steps = f"> {r['cap']}" if r["nce_steps"] is None else str(r["nce_steps"])
        lines.append(
            f"{r['R']:>4g} {r['mle_curvature']:>8.1f} {r['mle_steps']:>9} "
            f"{r['nce_eigenvalues_at_optimum'][0]:>10.3g} {r['nce_eigenvalues_at_optimum'][1]:>9.3g} "
            f"{r['nce_eta']:>7.3f} {steps:>10}"
        )
    return "\n".join(lines)


def format_oned(result: dict[str, Any], scale: Scale) -> str:
    offsets = [str(r) for r in L.OFFSETS]
    lines = [
        f"1D Gaussian mean, stochastic: Adam lr {scale.oned_lr} (cosine decay to 0), "
        f"batch {scale.oned_batch} "
        f"(+{scale.oned_batch} noise), {scale.oned_steps} steps, {scale.oned_seeds} seeds"
    ]
    for title, key in (("iterations to |θ−R|<0.1", "hits"), ("final |θ−R|", "final_error")):
        head = f"{title:<28}" + "".join(f"{'R=' + r[:-2]:>20}" for r in offsets)
        lines += ["", head, "-" * len(head)]
        for row, cells in result.items():
            vals = [
                _fmt_hits(cells[r]["hits"])
                if key == "hits"
                else _fmt(cells[r]["final_error"], cells[r]["diverged"], 2)
                for r in offsets
            ]
            lines.append(f"{row:<28}" + "".join(f"{v:>20}" for v in vals))
    return "\n".join(lines)


def format_toy(result: dict[str, Any], scale: Scale) -> str:
    head = f"{'set/noise':<24}{'untrained':>10}" + "".join(f"{e:>22}" for e in ESTIMATORS)
    lines = [
        f"2D test NLL (nats, exact grid {scale.grid}² on [−5,5]²), tilted MLP width {scale.toy_width}, "
        f"Adam lr {scale.toy_lr}, {scale.toy_steps} steps, batch {scale.toy_batch}, "
        f"{scale.toy_seeds} seed(s)",
        head,
        "-" * len(head),
    ]
    for row, cell in result.items():
        vals = [_fmt(cell[e]["nll"], sum(d >= 0 for d in cell[e]["diverged_at"])) for e in ESTIMATORS]
        lines.append(f"{row:<24}{cell['untrained_nll']:>10.3f}" + "".join(f"{v:>22}" for v in vals))
    return "\n".join(lines)


def toy_wins(result: dict[str, Any]) -> dict[str, Any]:
    """Per non-fitted noise: on how many sets compositional / bound have a lower mean NLL than NCE."""
    wins: dict[str, Any] = {}
    for row, cell in result.items():
        noise = row.split("/")[1]
        if noise == "fitted":
            continue
        nce = float(np.nanmean(cell["nce"]["nll"]))
        for est in ("compositional", "bound"):
            entry = wins.setdefault(f"{est} < nce ({noise})", {"wins": 0, "sets": 0})
            entry["sets"] += 1
            entry["wins"] += int(float(np.nanmean(cell[est]["nll"])) < nce)
    return wins


def format_digits(result: dict[str, Any], scale: Scale) -> str:
    head = f"{'noise/estimator':<24}{'test NLL':>18}{'ESS':>12}{'se(log Z)':>11}{'train s':>9}"
    u = result["untrained"]
    lines = [
        f"digits test NLL (nats/image, pixels ÷16; importance log Z with {scale.importance_samples} "
        f"fitted-Gaussian samples: a stochastic lower bound on log Z), MLP width {scale.digits_width}, "
        f"{scale.digits_steps} steps, batch {scale.digits_batch}, {scale.digits_seeds} seed(s)",
        f"untrained (= fitted Gaussian): {u['nll']:.2f}",
        head,
        "-" * len(head),
    ]
    for row, r in result.items():
        if row == "untrained":
            continue
        diverged = sum(d >= 0 for d in r["diverged_at"])
        lines.append(
            f"{row:<24}{_fmt(r['nll'], diverged, 2):>18}{np.mean(r['ess']):>12.0f}"
            f"{np.mean(r['se']):>11.3f}{r['wall_s']:>9.1f}"
        )
    return "\n".join(lines)


# -- entry point --------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="MLE for unnormalized models: MECO, bound, NCE, naive.")
    parser.add_argument("--quick", action="store_true", help="CI-sized run (same as --scale quick)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="default")
    parser.add_argument("--sections", type=name_list(SECTIONS, "section"), default=",".join(SECTIONS))
    parser.add_argument(
        "--seeds", type=positive_int, default=None, help="override every section's seed count"
    )
    parser.add_argument(
        "--steps", type=positive_int, default=None, help="override every section's training steps"
    )
    parser.add_argument(
        "--noises", type=name_list(D.NOISES, "noise"), default="fitted,narrow", help="noises for the 2D sets"
    )
    parser.add_argument("--digits-noises", type=name_list(D.NOISES, "noise"), default="fitted")
    parser.add_argument("--sets", type=name_list(D.TOY_SETS, "set"), default=",".join(D.TOY_SETS))
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", type=output_path("--json"), default=None)
    args = parser.parse_args(argv)
    scale_name = "quick" if args.quick else args.scale
    scale = SCALES[scale_name]
    if args.seeds is not None:
        scale = dataclasses.replace(
            scale, oned_seeds=args.seeds, toy_seeds=args.seeds, digits_seeds=args.seeds
        )
    if args.steps is not None:
        scale = dataclasses.replace(
            scale, oned_steps=args.steps, toy_steps=args.steps, digits_steps=args.steps
        )
    sections, noises = args.sections, tuple(args.noises)
    digit_noises, sets = tuple(args.digits_noises), tuple(args.sets)
    progress = not args.no_progress
    record: dict[str, Any] = {
        "scale": scale_name,
        "config": dataclasses.asdict(scale),
        "seconds": {},
        "machine": machine_info(),
    }
    start = time.perf_counter()
    for section in sections:
        t = time.perf_counter()
        if section == "landscape":
            record["landscape"] = run_landscape(scale)
            print(format_landscape(record["landscape"]), end="\n\n", flush=True)
        elif section == "oned":
            record["oned"] = run_oned(scale, progress)
            print(format_oned(record["oned"], scale), end="\n\n", flush=True)
        elif section == "toy":
            record["toy"] = run_toy(scale, noises, sets, progress)
            record["toy_wins"] = toy_wins(record["toy"])
            print(format_toy(record["toy"], scale), flush=True)
            print("wins over NCE (mean NLL):", json.dumps(record["toy_wins"]), end="\n\n", flush=True)
        else:
            record["digits"] = run_digits(scale, digit_noises, progress)
            print(format_digits(record["digits"], scale), end="\n\n", flush=True)
        record["seconds"][section] = time.perf_counter() - t
    record["seconds"]["total"] = time.perf_counter() - start
    print(f"total {record['seconds']['total']:.0f} s on {record['machine']['device']}")
    if args.json:
        T.write_json(record, args.json)
    check_results({s: record[s] for s in sections}, "unnormalized")
    return record
