"""TRICE gradient steps: ours (``T.mcmc_em`` over the chain-of-thought program) vs hand-written JAX.

One step for a batch of ``M`` questions of the chain-sum task on the 2-layer transformer of
:mod:`ppl.models.trice.transformer` (random weights; the memory holds the gold rationales, so
every datum counts): propose ``M`` rationales from the model, accept the correct ones, and
return the value, the gradient and the new memory. Three estimators:

* ``basic``: ``(1/Σv) Σ v ∇ log p(z' | x)``;
* ``cv``: minus ``(1/Σv) Σ v β ∇ log p(z̃ | x)``, ``β`` the leave-one-out acceptance rate;
* ``subsampled``: ``L = M`` items by systematic resampling. Ours evaluates all ``2M`` log
  densities and weights them by the counts; the hand version evaluates only the ``L`` drawn
  items (the compute saving the library does not have yet).

The hand versions use the same network functions (the jitted KV-cache sampler and the
teacher-forced ``sequence_log_prob``) but their own random numbers. Correctness is checked
apart: fed our step's proposals, the hand gradient equals ours (max abs difference recorded).
Reports compile time and the median, p10 and p90 step time. NumPyro, TFP and GenJAX have no
TRICE estimator, so there is no library peer to time.

Run: ``python benchmarks/trice_overhead.py [--batches 64,256] [--repeats N] [--json PATH]``
(batch sizes ≥ 2, positive repeats; the JSON path is checked before anything runs and written
as strict JSON, atomically; a non-finite timing or gradient difference exits non-zero).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import machine_info, max_diff
from ppl.models.trice import tasks, trice
from ppl.models.trice import transformer as tf
from vae_overhead import summarize

from ppl import transforms as T

ESTIMATORS = ("basic", "cv", "subsampled")


def hand_gradient(params, prompts, answers, memory, proposals, estimator, u=None):
    """TRICE's gradient for given proposals (the arithmetic both sides do after sampling)."""
    hit = tasks.correct(proposals, answers)
    new = jnp.where(hit[:, None], proposals, memory)
    v = tasks.correct(new, answers).astype(jnp.float32)
    c = hit.astype(jnp.float32)
    count = jnp.maximum(v.sum(), 1.0)
    beta = T.leave_one_out_mean(c, weights=v) if estimator != "basic" else jnp.zeros_like(c)
    if estimator == "subsampled":
        m = answers.shape[0]
        weights = jnp.concatenate([v * (1 - beta * c), v * beta * (1 - c)])
        index = T.systematic_resample(u, weights, m)
        items = jnp.concatenate([new, proposals])[index]
        sign = jnp.concatenate([jnp.ones(m), -jnp.ones(m)])[index]
        scale = weights.sum() / count / m

        def loss(p):
            return scale * jnp.sum(
                sign * tf.sequence_log_prob(p, jnp.concatenate([prompts, prompts])[index], items)
            )
    else:

        def loss(p):
            memory_term = jnp.sum(v * tf.sequence_log_prob(p, prompts, new))
            if estimator == "basic":
                return memory_term / count
            return (memory_term - jnp.sum(v * beta * tf.sequence_log_prob(p, prompts, proposals))) / count

    value = jnp.sum(v * tf.sequence_log_prob(params, prompts, new)) / count
    return value, jax.grad(loss)(params), new


def make_steps(params, batch, memory):
    prompts, answers = jnp.asarray(batch.prompt), jnp.asarray(batch.answer)
    questions, obs, mem = trice.questions(batch), trice.observations(answers.shape[0]), trice.memory(memory)
    m = answers.shape[0]
    ours, hand = {}, {}
    for name in ESTIMATORS:
        est = trice.estimator(
            trice.cot_model(), {"cv": "control_variate"}.get(name, name), m if name == "subsampled" else None
        )
        ours[name] = lambda key, est=est: est.value_and_grad(key, params, questions, obs, mem)

        @jax.jit
        def step(key, name=name):
            k1, k2 = jax.random.split(key)
            proposals = tf.sample_rationales(k1, params, prompts)
            return hand_gradient(params, prompts, answers, memory, proposals, name, jax.random.uniform(k2))

        hand[name] = step
    return ours, hand


def bench(m: int, repeats: int) -> dict[str, Any]:
    params = tf.init(jax.random.key(0), tf.Config())
    batch = tasks.make_split("chain-sum", m, seed=0)
    memory = jnp.asarray(batch.rationale)
    ours, hand = make_steps(params, batch, memory)
    result: dict[str, Any] = {"batch": m}
    for name in ESTIMATORS:
        row: dict[str, Any] = {}
        for system, step in (("ours", ours[name]), ("hand", hand[name])):
            start = time.perf_counter()
            out = jax.block_until_ready(step(jax.random.key(1)))
            row[f"{system}_compile_s"] = time.perf_counter() - start
            times = []
            for r in range(repeats):
                start = time.perf_counter()
                jax.block_until_ready(step(jax.random.key(2 + r)))
                times.append(time.perf_counter() - start)
            row[system] = summarize(times)
            if system == "ours":
                (_, chain), grad, _ = out
                proposals = trice.rationales(chain.proposal)
        if name != "subsampled":  # same proposals: same gradient
            _, want, _ = hand_gradient(params, batch.prompt, batch.answer, memory, proposals, name)
            row["max_grad_diff"] = max_diff(grad, want)
        row["ratio"] = row["ours"]["median_ms"] / row["hand"]["median_ms"]
        result[name] = row
    return result


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def batch_list(text: str) -> list[int]:
    """An argparse type: comma-separated batch sizes, each an integer ≥ 2 (TRICE's leave-one-out
    needs two questions)."""
    try:
        sizes = [int(b) for b in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or any(m < 2 for m in sizes):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers ≥ 2, got {text!r}")
    return sizes


def _nonfinite(obj: Any, path: str = "") -> list[str]:
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _nonfinite(v, f"{path}.{k}")]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _nonfinite(v, f"{path}[{i}]")]
    return [path.lstrip(".")] if isinstance(obj, float) and not math.isfinite(obj) else []


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batches", type=batch_list, default=[64, 256], help="batch sizes M (default 64,256)"
    )
    parser.add_argument("--repeats", type=positive_int, default=20, help="timed steps per row (default 20)")
    parser.add_argument("--json", default=None, help="write the record here (strict JSON)")
    args = parser.parse_args(argv)
    if args.json:
        try:
            T.check_output_path(args.json, "--json")
        except ValueError as e:
            parser.error(str(e))
    record = {"machine": machine_info(), "results": []}
    head = f"{'M':>5} {'estimator':<11}{'ours ms':>10}{'hand ms':>10}{'ratio':>8}"
    head += f"{'compile ours/hand s':>22}{'grad diff':>11}"
    print(head)
    print("-" * len(head))
    for m in args.batches:
        result = bench(m, args.repeats)
        record["results"].append(result)
        for name in ESTIMATORS:
            r = result[name]
            diff = f"{r['max_grad_diff']:.1e}" if "max_grad_diff" in r else "–"
            compile_s = f"{r['ours_compile_s']:.1f} / {r['hand_compile_s']:.1f}"
            print(
                f"{m:>5} {name:<11}{r['ours']['median_ms']:>10.1f}{r['hand']['median_ms']:>10.1f}"
                f"{r['ratio']:>8.2f}{compile_s:>22}{diff:>11}"
            )
    if args.json:
        T.write_json(record, args.json)
    bad = _nonfinite(record["results"])
    if bad:
        raise SystemExit(f"error: non-finite results: {', '.join(bad)}")
    return record


if __name__ == "__main__":
    main()
