"""Energy-model gradient steps: ours (``ppl.transforms``) vs hand-written JAX, same arithmetic.

An MLP energy ``log p̃(x) = −MLP(x)`` (D → 128 → 128 → 1, softplus) with a learned
offset ``c``, Gaussian noise ``N(0, I_D)``, a data batch of B and B noise draws per
step (the issue's equal budget of energy evaluations). Four estimators, each one
jitted value-and-gradient call (plus the estimator-state update where there is one):

* ``compositional``: ``T.unnormalized_nll`` with ``T.compositional(0.1)`` vs a
  hand-written MECO step (tracker in log space, coefficients ``w_j/(B u_t)``);
* ``bound``: ``T.self_normalized_bound()`` vs a hand-written bound step (offset
  moved by the mirror step on the bound);
* ``naive``: ``T.naive()`` vs ``jax.value_and_grad`` through ``logsumexp``;
* ``nce``: ``T.nce`` vs the hand-written logistic loss.

The hand versions draw exactly the random numbers ours draws, so values, gradients
and states agree to float rounding (checked and recorded). NumPyro, TFP, BlackJAX
and GenJAX ship none of these estimators for continuous energy models, so there is
no library peer to time. Reports compile time and the median, p10 and p90 step time.

Run: ``python benchmarks/unnormalized_overhead.py [--batches 256,4096] [--dims 2,64] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from ppl.models._records import check_results, int_list

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import add_timing_arguments, machine_info, max_diff, timed
from vae_overhead import rotations, summarize

import ppl
from ppl import transforms as T

GAMMA = 0.1  # the compositional tracker
BOUND_GAMMA = 0.01  # the bound's offset step (the default)
ESTIMATORS = ("compositional", "bound", "naive", "nce")


def init_params(key: jax.Array, dim: int, hidden: int = 128) -> dict[str, Any]:
    sizes = (dim, hidden, hidden, 1)
    keys = jax.random.split(key, len(sizes) - 1)
    layers = [
        {"w": jax.random.normal(k, (a, b)) / math.sqrt(a), "b": jnp.zeros(b)}
        for k, a, b in zip(keys, sizes[:-1], sizes[1:])
    ]
    return {"layers": layers, "c": jnp.zeros(())}


def log_density(params: dict[str, Any], x: jax.Array) -> jax.Array:
    h = x
    for layer in params["layers"][:-1]:
        h = jax.nn.softplus(h @ layer["w"] + layer["b"])
    last = params["layers"][-1]
    return -(h @ last["w"] + last["b"])[0] - params["c"]


def noise_of(dim: int) -> dist.Distribution:
    return dist.Normal(jnp.zeros(dim), 1.0).to_event(1)


# -- hand-written: the same random numbers as ours -------------------------------------------
def noise_draws(key: jax.Array, noise: dist.Distribution, count: int) -> jax.Array:
    """What ``log_expectation`` draws: one key per sample, the site's first key."""
    keys = jax.random.split(jax.random.fold_in(key, 0), count)
    return jax.vmap(lambda k: noise.sample(jax.random.fold_in(k, 0)))(keys)


def log_weights(params: Any, z: jax.Array, noise: dist.Distribution) -> jax.Array:
    return jax.vmap(lambda x: log_density(params, x))(z) - noise.log_prob(z)


def data_term(params: Any, x: jax.Array) -> jax.Array:
    return -jnp.mean(jax.vmap(lambda d: log_density(params, d))(x))


def hand_step(name: str, noise: dist.Distribution) -> Callable[..., Any]:
    def compositional(params, key, x, state):
        z = noise_draws(key, noise, x.shape[0])
        ell = log_weights(params, z, noise)
        lme = jax.nn.logsumexp(ell) - math.log(ell.size)
        tracked = jnp.where(
            state["count"] > 0,
            jnp.logaddexp(math.log1p(-GAMMA) + state["log_average"], math.log(GAMMA) + lme),
            lme,
        )
        coef = jax.lax.stop_gradient(jnp.exp(ell - tracked)) / ell.size

        def surrogate(p):
            return data_term(p, x) + jnp.sum(coef * log_weights(p, z, noise))

        grad = jax.grad(surrogate)(params)
        return (data_term(params, x) + lme, grad), {"log_average": tracked, "count": state["count"] + 1}

    def bound(params, key, x, state):
        z = noise_draws(key, noise, x.shape[0])
        ell = log_weights(params, z, noise)
        lme = jax.nn.logsumexp(ell) - math.log(ell.size)
        b = jnp.where(state["count"] > 0, state["offset"], lme)
        coef = jnp.exp(ell - b) / ell.size

        def surrogate(p):
            return data_term(p, x) + jnp.sum(coef * log_weights(p, z, noise))

        grad = jax.grad(surrogate)(params)
        step = jnp.logaddexp(math.log1p(-BOUND_GAMMA) + b, math.log(BOUND_GAMMA) + lme)
        new = {"offset": jnp.where(state["count"] > 0, step, lme), "count": state["count"] + 1}
        return (data_term(params, x) + b + jnp.expm1(lme - b), grad), new

    def naive(params, key, x, state):
        z = noise_draws(key, noise, x.shape[0])

        def nll(p):
            ell = log_weights(p, z, noise)
            return data_term(p, x) + jax.nn.logsumexp(ell) - math.log(ell.size)

        return jax.value_and_grad(nll)(params), state

    def nce(params, key, x, state):
        y = noise.expand((x.shape[0],)).sample(jax.random.fold_in(key, 0))

        def loss(p):
            def logit(v):
                return log_density(p, v) - noise.log_prob(v)

            return jnp.mean(jax.nn.softplus(-jax.vmap(logit)(x))) + jnp.mean(
                jax.nn.softplus(jax.vmap(logit)(y))
            )

        return jax.value_and_grad(loss)(params), state

    return jax.jit({"compositional": compositional, "bound": bound, "naive": naive, "nce": nce}[name])


def ours_step(name: str, noise: dist.Distribution, batch: int) -> tuple[Callable[..., Any], Any]:
    if name == "nce":
        est = T.nce(log_density, noise).estimator()
    else:
        chosen = {
            "compositional": T.compositional(GAMMA),
            "bound": T.self_normalized_bound(),
            "naive": T.naive(),
        }
        est = T.unnormalized_nll(log_density, noise, samples=batch).estimator(
            strategies={"log_partition": chosen[name]}
        )
    return lambda params, key, x, state: est.value_and_grad(key, params, x, state=state), est


def bench(name: str, dim: int, batch: int, repeats: int, rounds: int, compiles: int) -> dict[str, Any]:
    params = init_params(jax.random.key(0), dim)
    x = jax.random.normal(jax.random.key(1), (batch, dim)) * 0.8 + 0.3
    key, noise = jax.random.key(2), noise_of(dim)
    _, est = ours_step(name, noise, batch)
    state0 = est.init(params, x)
    # A state one step in (count 1), so the tracked branches run as in training.
    ours0, _ = ours_step(name, noise, batch)
    state = ours0(params, jax.random.key(3), x, state0).state
    hand_state = state.get("log_partition", {})
    compile_times: dict[str, list[float]] = {"hand": [], "ours": []}
    outs: dict[str, Any] = {}
    for c in range(compiles):
        ours, _ = ours_step(name, noise, batch)
        hand = hand_step(name, noise)
        steps = {
            "hand": functools.partial(hand, params, key, x, hand_state),
            "ours": functools.partial(ours, params, key, x, state),
        }
        for system in rotations(("hand", "ours"), c):
            seconds, outs[system] = timed(steps[system])
            compile_times[system].append(seconds)
    (hv, hg), hs = outs["hand"]
    ov, og, os_ = outs["ours"]  # (value, grad, state)
    check = {
        "value": max_diff(ov, hv),
        "grad": max_diff(og, hg),
        "state": max_diff(os_.get("log_partition", {}), hs) if hs else 0.0,
    }
    grad_scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(hg))
    failed = [k for k, d in check.items() if not d <= 1e-3 * max(1.0, abs(float(hv)), grad_scale) + 1e-5]
    times: dict[str, list[float]] = {"hand": [], "ours": []}
    per_round = [repeats // rounds + (i < repeats % rounds) for i in range(rounds)]
    for r, count in enumerate(per_round):
        for system in rotations(("hand", "ours"), r):
            times[system].extend(timed(steps[system])[0] for _ in range(count))
    result: dict[str, Any] = {
        "estimator": name,
        "dim": dim,
        "batch": batch,
        "check": check,
        "check_failed": failed,
    }
    for system in ("hand", "ours"):
        result[system] = {"compile_s": sorted(compile_times[system])[len(compile_times[system]) // 2]}
        result[system].update(summarize(times[system]))
    result["ratio"] = result["ours"]["median_ms"] / result["hand"]["median_ms"]
    result["compile_ratio"] = result["ours"]["compile_s"] / result["hand"]["compile_s"]
    return result


def print_table(results: list[dict[str, Any]]) -> None:
    head = f"{'estimator':>13} | {'D':>3} | {'B':>5} | {'hand ms':>8} | {'ours ms':>8} | {'ratio':>5}"
    print(head + " | compile ratio")
    for r in results:
        flag = "  CHECK FAILED " + ",".join(r["check_failed"]) if r["check_failed"] else ""
        print(
            f"{r['estimator']:>13} | {r['dim']:>3} | {r['batch']:>5} | {r['hand']['median_ms']:8.3f} | "
            f"{r['ours']['median_ms']:8.3f} | {r['ratio']:5.2f} | {r['compile_ratio']:5.2f}{flag}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_timing_arguments(parser, repeats=200, rounds=10)
    parser.add_argument("--dims", type=int_list, default="2,64", help="comma-separated data dimensions")
    parser.set_defaults(batches="256,4096")
    args = parser.parse_args(argv)
    ppl.set_runtime_checks(args.runtime_checks == "on")
    results: list[dict[str, Any]] = []
    for dim in args.dims:
        for batch in args.batches:
            for name in ESTIMATORS:
                results.append(bench(name, dim, batch, args.repeats, args.rounds, args.compiles))
                print_table(results[-1:])
    print()
    print_table(results)
    if args.json:
        config = {
            "dims": args.dims,
            "batches": args.batches,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "compiles": args.compiles,
            "runtime_checks": args.runtime_checks,
        }
        T.write_json({"machine": machine_info(), "config": config, "results": results}, args.json)
    check_results(results, "unnormalized_overhead")


if __name__ == "__main__":
    main()
