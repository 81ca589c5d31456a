"""Overhead of ``ppl.transforms`` on one VAE ELBO value-and-gradient step.

The model is the VAE of Table 1 of the programmable-VI paper: a 10-dimensional
standard normal latent, a decoder Linear(10, 200) -> leaky ReLU -> Linear(200, 784)
giving Bernoulli logits for the pixels, and a reparameterized diagonal Normal
guide from an encoder Linear(784, 200) -> leaky ReLU -> Linear(200, 20) (mean and
softplus scale). The data are synthetic binary "images" drawn from a fixed key.

Three implementations of the same single-sample ELBO estimate (divided by the
batch size) and its gradient with respect to the parameters are timed:

* ``hand``: hand-written JAX, ``jax.jit(jax.value_and_grad(...))``, doing the same
  arithmetic as NumPyro's ``Normal`` and ``BernoulliLogits`` log densities;
* ``ours``: ``@ppl.gen`` model and guide, an ``@expectation`` objective and
  ``elbo.estimator(strategies={"z": T.reparam()}).value_and_grad``;
* ``numpyro``: ``Trace_ELBO().loss`` on the same model and guide, jitted.

``hand`` uses the key ``ours`` derives for site ``z`` (``fold_in(key, 0)``), so the
two agree to float rounding; this is asserted, and NumPyro is checked against the
hand version at NumPyro's own key for ``z``. Per batch size and system it reports
the compile time (median over ``--compiles`` first calls of fresh functions, tracing
included) and the median, p10 and p90 of the step time (each call timed alone, with
``block_until_ready``); timing rounds of the systems are interleaved so drift hits
all alike.

Target: step-time ratio ours/hand <= 1.05 and compile-time ratio <= 1.5.

Usage: python benchmarks/overhead.py [--batches 64,128] [--repeats 200] [--compiles 3]
                                     [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import Trace_ELBO
from ppl.models._records import check_results, int_list, output_path, positive_int

import ppl
from ppl import transforms as T

LATENT, HIDDEN, PIXELS = 10, 200, 784
SYSTEMS = ("hand", "ours", "numpyro")
Params = dict[str, jax.Array]
Step = Callable[[], Any]


def init_params(key: jax.Array) -> Params:
    layers = {
        "enc1": (PIXELS, HIDDEN),
        "enc2": (HIDDEN, 2 * LATENT),
        "dec1": (LATENT, HIDDEN),
        "dec2": (HIDDEN, PIXELS),
    }
    params: Params = {}
    keys = jax.random.split(key, len(layers))
    for k, (name, (n_in, n_out)) in zip(keys, layers.items(), strict=True):
        params[f"{name}_w"] = jax.random.normal(k, (n_in, n_out)) / np.sqrt(n_in)
        params[f"{name}_b"] = jnp.zeros(n_out)
    return params


def make_data(batch: int) -> jax.Array:
    k_probs, k_pixels = jax.random.split(jax.random.key(1))
    probs = jax.nn.sigmoid(2.0 * jax.random.normal(k_probs, (PIXELS,)))
    return jax.random.bernoulli(k_pixels, probs, (batch, PIXELS)).astype(jnp.float32)


def encode(params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = jax.nn.leaky_relu(x @ params["enc1_w"] + params["enc1_b"])
    out = h @ params["enc2_w"] + params["enc2_b"]
    return out[:, :LATENT], jax.nn.softplus(out[:, LATENT:])


def decode(params: Params, z: jax.Array) -> jax.Array:
    h = jax.nn.leaky_relu(z @ params["dec1_w"] + params["dec1_b"])
    return h @ params["dec2_w"] + params["dec2_b"]


# -- ours: the library -----------------------------------------------------------
@ppl.gen
def model(params: Params, n: int) -> jax.Array:
    z = ppl.sample("z", dist.Normal(jnp.zeros((n, LATENT)), 1.0).to_event(1))
    return ppl.sample("x", dist.Bernoulli(logits=decode(params, z)).to_event(1))


@ppl.gen
def guide(params: Params, x: jax.Array) -> jax.Array:
    loc, scale = encode(params, x)
    return ppl.sample("z", dist.Normal(loc, scale).to_event(1))


@T.expectation
def elbo(params: Params, x: jax.Array) -> jax.Array:
    n = x.shape[0]
    tr = T.sim(guide, params, x)
    return (T.density(model, {**tr.choices, "x": x}, params, n) - tr.score) / n


# -- hand-written JAX (NumPyro's formulas) -------------------------------------
def normal_log_prob(value: jax.Array, loc: Any, scale: Any) -> jax.Array:
    normalize_term = jnp.log(jnp.sqrt(2 * jnp.pi) * scale)
    return -0.5 * ((value - loc) / scale) ** 2 - normalize_term


def bernoulli_logits_log_prob(logits: jax.Array, value: jax.Array) -> jax.Array:
    # numpyro.distributions.util.binary_cross_entropy_with_logits, negated
    finite = jnp.isfinite(logits)
    safe = jnp.where(finite, logits, jnp.zeros_like(logits))
    usual = jnp.clip(safe, 0) + jnp.log1p(jnp.exp(-jnp.abs(safe))) - safe * value
    return -jnp.where(finite, usual, jnp.inf * jnp.logical_xor(value, logits > 0))


def hand_elbo_at(params: Params, x: jax.Array, z_key: jax.Array) -> jax.Array:
    loc, scale = encode(params, x)
    z = loc + jax.random.normal(z_key, loc.shape) * scale
    log_q = jnp.sum(normal_log_prob(z, loc, scale))
    log_p = jnp.sum(normal_log_prob(z, 0.0, 1.0))
    log_p = log_p + jnp.sum(bernoulli_logits_log_prob(decode(params, z), x))
    return (log_p - log_q) / x.shape[0]


def hand_elbo(params: Params, key: jax.Array, x: jax.Array) -> jax.Array:
    return hand_elbo_at(params, x, jax.random.fold_in(key, 0))  # ours: site 0 of the scope


# -- NumPyro ---------------------------------------------------------------------
def np_model(params: Params, x: jax.Array) -> None:
    z = numpyro.sample("z", dist.Normal(jnp.zeros((x.shape[0], LATENT)), 1.0).to_event(1))
    numpyro.sample("x", dist.Bernoulli(logits=decode(params, z)).to_event(1), obs=x)


def np_guide(params: Params, x: jax.Array) -> None:
    loc, scale = encode(params, x)
    numpyro.sample("z", dist.Normal(loc, scale).to_event(1))


def np_elbo(params: Params, key: jax.Array, x: jax.Array) -> jax.Array:
    return -Trace_ELBO().loss(key, {}, np_model, np_guide, params, x) / x.shape[0]


def np_z_key(key: jax.Array) -> jax.Array:
    # Trace_ELBO: model_seed, guide_seed = split(key); seed: _, site_key = split(guide_seed)
    return jax.random.split(jax.random.split(key)[1])[1]


# -- measurement -----------------------------------------------------------------
def make_steps(params: Params, key: jax.Array, x: jax.Array) -> dict[str, Step]:
    """Fresh jitted functions (so the first call compiles) bound to their arguments."""
    hand = jax.jit(jax.value_and_grad(hand_elbo))
    ours = elbo.estimator(strategies={"z": T.reparam()})
    theirs = jax.jit(jax.value_and_grad(np_elbo))
    return {
        "hand": lambda: hand(params, key, x),
        "ours": lambda: ours.value_and_grad(key, params, x),
        "numpyro": lambda: theirs(params, key, x),
    }


def timed(step: Step) -> tuple[float, Any]:
    start = time.perf_counter()
    out = jax.block_until_ready(step())
    return time.perf_counter() - start, out


def max_diff(a: Any, b: Any) -> float:
    diffs = jax.tree.map(lambda u, v: float(jnp.max(jnp.abs(u - v))), a, b)
    return max(jax.tree.leaves(diffs))


def check_close(what: str, got: Any, want: Any, scale: float) -> float:
    diff = max_diff(got, want)  # loose enough for GPU float32 (TF32) matmuls
    assert diff <= 1e-3 * scale + 1e-5, f"{what}: max abs difference {diff:.3g}"
    return diff


def bench_batch(batch: int, repeats: int, rounds: int, compiles: int) -> dict[str, Any]:
    params, key, x = init_params(jax.random.key(0)), jax.random.key(2), make_data(batch)
    compile_times: dict[str, list[float]] = {name: [] for name in SYSTEMS}
    outs: dict[str, Any] = {}
    for c in range(compiles):  # fresh functions each time: every first call compiles
        steps = make_steps(params, key, x)
        for name in SYSTEMS[c % 3 :] + SYSTEMS[: c % 3]:
            compile_s, outs[name] = timed(steps[name])
            compile_times[name].append(compile_s)
    result: dict[str, Any] = {"batch": batch}
    for name in SYSTEMS:
        samples = compile_times[name]
        result[name] = {"compile_s": float(np.median(samples)), "compile_samples_s": samples}

    hand_v, hand_g = outs["hand"]
    ours_v, ours_g, _ = outs["ours"]  # (value, grad, state)
    value_scale = abs(float(hand_v))
    grad_scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(hand_g))
    at_np_key = jax.value_and_grad(hand_elbo_at)(params, x, np_z_key(key))
    np_v, np_g = outs["numpyro"]
    result["check"] = {
        "ours_vs_hand_value": check_close("ours value", ours_v, hand_v, value_scale),
        "ours_vs_hand_grad": check_close("ours grad", ours_g, hand_g, grad_scale),
        "numpyro_vs_hand_value": check_close("numpyro value", np_v, at_np_key[0], value_scale),
        "numpyro_vs_hand_grad": check_close("numpyro grad", np_g, at_np_key[1], grad_scale),
    }

    times: dict[str, list[float]] = {name: [] for name in SYSTEMS}
    per_round = [repeats // rounds + (i < repeats % rounds) for i in range(rounds)]
    for r, count in enumerate(per_round):
        order = SYSTEMS[r % 3 :] + SYSTEMS[: r % 3]  # rotate who goes first
        for name in order:
            times[name].extend(timed(steps[name])[0] for _ in range(count))
    for name in SYSTEMS:
        ms = np.asarray(times[name]) * 1e3
        result[name].update(
            median_ms=float(np.median(ms)),
            p10_ms=float(np.percentile(ms, 10)),
            p90_ms=float(np.percentile(ms, 90)),
        )
    return result


def machine_info() -> dict[str, Any]:
    device = jax.devices()[0]
    return {
        "platform": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": metadata.version("jaxlib"),
        "numpyro": numpyro.__version__,
        "ppl": ppl.__version__,
        "python": sys.version.split()[0],
        "os": platform.platform(),
        "cpu_count": os.cpu_count(),
    }


def print_table(results: list[dict[str, Any]]) -> None:
    head = (
        f"{'batch':>6} | {'hand ms':>8} | {'ours ms':>8} | {'ratio':>5} | {'numpyro ms':>10} | "
        f"{'ratio':>5} | {'compile hand s':>14} | {'compile ours s':>14} | {'ratio':>5}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        hand, ours, theirs = r["hand"], r["ours"], r["numpyro"]
        print(
            f"{r['batch']:>6} | {hand['median_ms']:>8.3f} | {ours['median_ms']:>8.3f} | "
            f"{ours['median_ms'] / hand['median_ms']:>5.2f} | {theirs['median_ms']:>10.3f} | "
            f"{theirs['median_ms'] / hand['median_ms']:>5.2f} | {hand['compile_s']:>14.3f} | "
            f"{ours['compile_s']:>14.3f} | {ours['compile_s'] / hand['compile_s']:>5.2f}"
        )


def add_timing_arguments(parser: argparse.ArgumentParser, repeats: int, rounds: int) -> None:
    """The options every timing benchmark shares (batches, repeats, rounds, compiles, JSON, checks).

    Each is validated as it is parsed (argparse exits with status 2 and the message): the
    batches a non-empty list of positive integers, the counts positive, the JSON path writable.
    """
    parser.add_argument(
        "--batches", type=int_list, default="64,128,256,512,1024", help="comma-separated positive integers"
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=repeats, help="timed calls per system and batch"
    )
    parser.add_argument("--rounds", type=positive_int, default=rounds, help="interleaved timing rounds")
    parser.add_argument("--compiles", type=positive_int, default=3, help="first calls timed (median)")
    parser.add_argument("--json", type=output_path("--json"), default=None, help="write the results here")
    parser.add_argument(
        "--runtime-checks",
        choices=("on", "off"),
        default="on",
        help="in-program support checks of traced data (ppl.set_runtime_checks)",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_arguments(parser, repeats=200, rounds=10)
    args = parser.parse_args(argv)
    batches = args.batches
    ppl.set_runtime_checks(args.runtime_checks == "on")
    rounds = min(args.rounds, args.repeats)

    info = machine_info()
    print(", ".join(f"{k}={v}" for k, v in info.items()))
    bench_batch(8, 3, 1, 1)  # warm-up: imports, backend start, first-use caches
    results: list[dict[str, Any]] = []
    for batch in batches:
        result = bench_batch(batch, args.repeats, rounds, max(1, args.compiles))
        check = result["check"]
        print(
            f"batch {batch}: max |ours - hand| value {check['ours_vs_hand_value']:.2e}, "
            f"grad {check['ours_vs_hand_grad']:.2e}; max |numpyro - hand| value "
            f"{check['numpyro_vs_hand_value']:.2e}, grad {check['numpyro_vs_hand_grad']:.2e}",
            flush=True,
        )
        results.append(result)
    print()
    print_table(results)
    if args.json:
        config = {
            "batches": batches,
            "repeats": args.repeats,
            "rounds": rounds,
            "compiles": args.compiles,
            "runtime_checks": args.runtime_checks,
        }
        T.write_json({"machine": info, "config": config, "results": results}, args.json)
        print(f"\nwrote {args.json}")
    check_results(results, "overhead")


if __name__ == "__main__":
    main()
