"""VAE ELBO and IWELBO(8) gradient estimates: ours vs hand-written JAX vs NumPyro vs GenJAX.

Extends ``benchmarks/overhead.py`` (same model, parameters and data, imported from
there): the Table 1 VAE of the programmable-VI paper, a 10-dimensional standard
normal latent, a decoder Linear(10, 200) -> leaky ReLU -> Linear(200, 784) giving
Bernoulli logits, and a reparameterized diagonal Normal guide from an encoder
Linear(784, 200) -> leaky ReLU -> Linear(200, 20).

Two objectives, both averaged over the batch (divided by the batch size n):

* ``elbo``: the single-sample ELBO, exactly as in ``overhead.py``;
* ``iwelbo8``: the importance-weighted bound with K = 8 particles per data point,
  ``sum_i (logsumexp_k log w_ik - log K) / n`` with
  ``log w_ik = log p(x_i, z_ik) - log q(z_ik | x_i)`` and ``z_ik`` reparameterized.

Systems, each timed as one jitted value-and-gradient call w.r.t. all parameters:

* ``hand``: hand-written JAX (NumPyro's log-density formulas), the reference;
* ``ours``: ``ppl`` programs and an ``@expectation`` objective (``overhead.elbo``;
  :func:`iwelbo_objective`), ``estimator(strategies={"z": T.reparam()})``;
* ``ours-lib`` (iwelbo8, when ``ppl.transforms`` has it): the library's
  ``T.iwelbo(model, guide, 8)`` run per data point with ``in_axes`` (:func:`library_iwelbo`);
* ``numpyro``: ``Trace_ELBO`` (elbo) and ``RenyiELBO(alpha=0, num_particles=8)``
  (iwelbo8, with a data plate so the bound is per data point; particles vectorized;
  the same value, and the same gradient through self-normalized weights);
* ``genjax``: run as a subprocess (``benchmarks/genjax_peer.py``) in an environment
  with GenJAX (CPU: 0.10.3 with jax 0.5.3 in its own virtual environment,
  ``--genjax-venv``; GPU: 1.0.x, ``--genjax-python``) that times GenJAX *and* the
  same hand-written JAX in that one process, so its figure is a ratio within its
  process. GenJAX's public ``grad_estimate`` returns no value, so that form is
  compared with a gradient-only hand version; value and gradient together come
  from ``jax.value_and_grad`` of the function ``grad_estimate`` differentiates,
  compared with the hand value-and-gradient.

``hand`` draws the random numbers ``ours`` draws, and each other system is checked
against the hand version at that system's own random numbers: values and gradients
agree to float rounding (asserted). Per objective, batch and system it reports the
compile time (median over ``--compiles`` first calls of fresh functions, tracing
included) and the median, p10 and p90 step time (each call timed alone, with
``block_until_ready``); the systems' timing rounds are interleaved.

Targets: ours <= 1.05x hand and faster than NumPyro and GenJAX at every batch size.

Usage: python benchmarks/vae_overhead.py [--batches 64,128] [--objectives elbo,iwelbo8]
           [--repeats 100] [--rounds 20] [--compiles 3] [--json PATH]
           [--genjax-venv PATH | --genjax-python PYTHON] [--runtime-checks on|off]
       python benchmarks/vae_overhead.py --markdown RESULTS.json   (the tables of docs/benchmarks.md)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import RenyiELBO

# Model, parameters, data and the ELBO programs of the core overhead benchmark.
from overhead import (  # type: ignore[import-not-found]
    LATENT,
    Params,
    add_timing_arguments,
    bernoulli_logits_log_prob,
    decode,
    elbo,
    encode,
    guide,
    hand_elbo,
    hand_elbo_at,
    init_params,
    machine_info,
    make_data,
    max_diff,
    model,
    normal_log_prob,
    np_elbo,
    np_z_key,
    timed,
)
from ppl.models._records import check_results, name_list, positive_float

import ppl
from ppl import transforms as T

PARTICLES = 8
OBJECTIVES = ("elbo", "iwelbo8")
HERE = os.path.dirname(os.path.abspath(__file__))
GENJAX_PINS = ("genjax==0.10.3", "jax==0.5.3", "jaxlib==0.5.3", "numpy<2")
Step = Callable[[], Any]


# -- ours: IWELBO(K) written with the public constructs ---------------------------
@ppl.gen
def latent_guide(loc: jax.Array, scale: jax.Array) -> jax.Array:
    """The guide's distribution given the encoder's output (the encoder runs outside)."""
    return ppl.sample("z", dist.Normal(loc, scale).to_event(1))


def iwelbo_objective(K: int) -> T.Expectation:
    """IWELBO(K) of ``overhead.model`` with the Normal guide, averaged over the batch.

    The encoder runs once, in the objective; one ``T.sim`` of a K-fold ``ppl.vmap``
    of :func:`latent_guide` draws the K particles of every point, and the
    per-particle, per-point log weights come from ``jax.vmap`` over ``T.density`` of
    the model at one point and of the guide at one point's encoder output. Same
    arithmetic as :func:`hand_iwelbo_from_eps`.
    """
    particles = ppl.vmap(latent_guide, in_axes=None, axis_size=K)

    def log_weight(params: Params, z: jax.Array, x: jax.Array, loc: jax.Array, scale: jax.Array) -> jax.Array:
        log_p = T.density(model, {"z": z[None], "x": x[None]}, params, 1)
        return log_p - T.density(latent_guide, {"z": z}, loc, scale)

    @T.expectation
    def iwelbo(params: Params, x: jax.Array) -> jax.Array:
        loc, scale = encode(params, x)
        z = T.sim(particles, loc, scale).choices["z"]  # (K, n, LATENT)
        per_point = jax.vmap(log_weight, in_axes=(None, 0, 0, 0, 0))
        log_w = jax.vmap(per_point, in_axes=(None, 0, None, None, None))(params, z, x, loc, scale)  # (K, n)
        return jnp.sum(jax.nn.logsumexp(log_w, axis=0) - jnp.log(K)) / x.shape[0]

    return iwelbo


@ppl.gen
def point_model(params: Params, x: jax.Array) -> jax.Array:
    """``overhead.model`` at batch size 1, called as the objective library calls models."""
    return model.fn(params, 1)


def library_iwelbo(K: int) -> Callable[[Params, jax.Array, jax.Array], Any]:
    """The library's ``T.iwelbo(model, guide, K)``, per data point (``in_axes``), batch mean.

    ``T.iwelbo`` is called as ``(params, observations, x)`` for one datum, model and guide
    both as ``(params, x)``: the batch programs of ``overhead.py`` are used at batch size 1
    (:func:`point_model`), so the returned function takes the data in that layout,
    ``x[:, None]`` (shape ``(n, 1, D)``, prepared once by :func:`make_steps`). The estimator
    maps over the data with ``in_axes`` (a key per datum) and averages; ``params`` is the
    one pytree both programs read, so the gradient is the total. It is the estimator's own
    jitted call, as a user makes it (an enclosing ``jax.jit`` would add a host callback per
    call for the runtime checks).
    """
    est = T.iwelbo(point_model, guide, K).estimator(in_axes=({"x": 0}, 0), reduce="mean")

    def value_and_grad(params: Params, key: jax.Array, points: jax.Array) -> Any:
        return est.value_and_grad(key, params, {"x": points}, points)

    return value_and_grad


def library_iwelbo_eps(key: jax.Array, batch: int) -> jax.Array:
    # in_axes: a key per datum; the particles block takes key 0 and splits it; the site is key 0
    def datum(k: jax.Array) -> jax.Array:
        keys = jax.random.split(jax.random.fold_in(k, 0), PARTICLES)
        return jax.vmap(lambda q: jax.random.normal(jax.random.fold_in(q, 0), (LATENT,)))(keys)

    return jnp.swapaxes(jax.vmap(datum)(jax.random.split(key, batch)), 0, 1)  # (K, n, LATENT)


def ours_value_and_grad(objective: str, system: str) -> Callable[[Params, jax.Array, jax.Array], Any]:
    """A fresh jitted value-and-gradient function of (params, key, x) for one of ours."""
    if system == "ours-lib":
        return library_iwelbo(PARTICLES)
    program = elbo if objective == "elbo" else iwelbo_objective(PARTICLES)
    est = program.estimator(strategies={"z": T.reparam()})
    return lambda params, key, x: est.value_and_grad(key, params, x)


# Our systems per objective. ``ours`` is the objective program above; ``ours-lib`` the
# library's T.iwelbo (when this checkout has it). The noise each draws, for the check.
OURS: dict[str, dict[str, Callable[[jax.Array, int], jax.Array] | None]] = {
    "elbo": {"ours": None},
    "iwelbo8": {"ours": lambda key, n: ours_iwelbo_eps(key, n)},
}
if hasattr(T, "iwelbo"):
    OURS["iwelbo8"]["ours-lib"] = lambda key, n: library_iwelbo_eps(key, n)


# -- hand-written JAX ----------------------------------------------------------------
def hand_iwelbo_from_eps(params: Params, x: jax.Array, eps: jax.Array) -> jax.Array:
    """IWELBO(K) with standard-normal noise ``eps`` of shape (K, n, LATENT)."""
    loc, scale = encode(params, x)
    z = loc + eps * scale
    log_q = jnp.sum(normal_log_prob(z, loc, scale), axis=-1)
    log_p = jnp.sum(normal_log_prob(z, 0.0, 1.0), axis=-1)
    log_p = log_p + jnp.sum(bernoulli_logits_log_prob(decode(params, z), x), axis=-1)
    log_w = log_p - log_q  # (K, n)
    return jnp.sum(jax.nn.logsumexp(log_w, axis=0) - jnp.log(eps.shape[0])) / x.shape[0]


def ours_iwelbo_eps(key: jax.Array, batch: int) -> jax.Array:
    # ours: the block takes scope key 0 and splits it per particle; the site is key 0 there
    keys = jax.random.split(jax.random.fold_in(key, 0), PARTICLES)
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), (batch, LATENT)))(keys)


def hand_iwelbo(params: Params, key: jax.Array, x: jax.Array) -> jax.Array:
    return hand_iwelbo_from_eps(params, x, ours_iwelbo_eps(key, x.shape[0]))


# -- NumPyro ---------------------------------------------------------------------------
def np_model_plated(params: Params, x: jax.Array) -> None:
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(jnp.zeros((x.shape[0], LATENT)), 1.0).to_event(1))
        numpyro.sample("x", dist.Bernoulli(logits=decode(params, z)).to_event(1), obs=x)


def np_guide_plated(params: Params, x: jax.Array) -> None:
    loc, scale = encode(params, x)
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.Normal(loc, scale).to_event(1))


def np_iwelbo(params: Params, key: jax.Array, x: jax.Array) -> jax.Array:
    loss = RenyiELBO(alpha=0.0, num_particles=PARTICLES).loss
    return -loss(key, {}, np_model_plated, np_guide_plated, params, x) / x.shape[0]


def np_iwelbo_eps(key: jax.Array, batch: int) -> jax.Array:
    # RenyiELBO.loss: _, rng = split(key); particle keys = split(rng, K); then as Trace_ELBO
    keys = jax.random.split(jax.random.split(key)[1], PARTICLES)
    return jax.vmap(lambda k: jax.random.normal(np_z_key(k), (batch, LATENT)))(keys)


# -- measurement --------------------------------------------------------------------
HAND = {"elbo": hand_elbo, "iwelbo8": hand_iwelbo}
NUMPYRO = {"elbo": np_elbo, "iwelbo8": np_iwelbo}


def systems_of(objective: str) -> tuple[str, ...]:
    return ("hand", *OURS[objective], "numpyro")


def make_steps(objective: str, params: Params, key: jax.Array, x: jax.Array) -> dict[str, Step]:
    """Fresh jitted functions (so the first call compiles) bound to their arguments."""
    hand = jax.jit(jax.value_and_grad(HAND[objective]))
    theirs = jax.jit(jax.value_and_grad(NUMPYRO[objective]))
    steps: dict[str, Step] = {"hand": lambda: hand(params, key, x)}
    for name in OURS[objective]:
        f = ours_value_and_grad(objective, name)
        data = x[:, None] if name == "ours-lib" else x  # ours-lib: one point per datum
        steps[name] = lambda f=f, data=data: f(params, key, data)
    steps["numpyro"] = lambda: theirs(params, key, x)
    return steps


def reference_at_numpyro_key(objective: str, params: Params, key: jax.Array, x: jax.Array) -> Any:
    if objective == "elbo":
        return jax.value_and_grad(hand_elbo_at)(params, x, np_z_key(key))
    return jax.value_and_grad(hand_iwelbo_from_eps)(params, x, np_iwelbo_eps(key, x.shape[0]))


def summarize(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p10_ms": float(np.percentile(ms, 10)),
        "p90_ms": float(np.percentile(ms, 90)),
    }


def disagreements(check: dict[str, float], value_scale: float, grad_scale: float) -> list[str]:
    """The checks over overhead.py's tolerance (loose enough for GPU TF32 matmuls), loudly.

    Recorded (JSON, table) rather than raised, so that one device run always returns
    its timings; on CPU every check passes with a wide margin.
    """
    bad = []
    for what, diff in check.items():
        scale = value_scale if what.endswith("value") else grad_scale
        if not diff <= 1e-3 * scale + 1e-5:
            bad.append(f"{what}: max abs difference {diff:.3g} (scale {scale:.3g})")
            print(f"CHECK FAILED {what}: max abs difference {diff:.3g} (scale {scale:.3g})", flush=True)
    return bad


def rotations(names: tuple[str, ...], r: int) -> tuple[str, ...]:
    k = r % len(names)
    return names[k:] + names[:k]


def bench(objective: str, batch: int, repeats: int, rounds: int, compiles: int) -> dict[str, Any]:
    params, key, x = init_params(jax.random.key(0)), jax.random.key(2), make_data(batch)
    systems = systems_of(objective)
    compile_times: dict[str, list[float]] = {name: [] for name in systems}
    outs: dict[str, Any] = {}
    # Untimed: per-shape caches (GPU GEMM autotuning) would otherwise bill whoever compiles first.
    jax.block_until_ready(jax.jit(jax.value_and_grad(HAND[objective]))(params, key, x))
    for c in range(compiles):  # fresh functions each time: every first call compiles
        steps = make_steps(objective, params, key, x)
        for name in rotations(systems, c):
            compile_s, outs[name] = timed(steps[name])
            compile_times[name].append(compile_s)
    result: dict[str, Any] = {"objective": objective, "batch": batch}
    for name in systems:
        samples = compile_times[name]
        result[name] = {"compile_s": float(np.median(samples)), "compile_samples_s": samples}

    hand_v, hand_g = outs["hand"]
    value_scale = abs(float(hand_v))
    grad_scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(hand_g))
    check: dict[str, float] = {}
    for name, eps in OURS[objective].items():
        v, g = outs[name][:2]  # ours: (value, grad, state)
        ref_v, ref_g = hand_v, hand_g  # hand draws ours's numbers
        if name != "ours":  # another layout: hand at that system's random numbers
            ref_v, ref_g = jax.value_and_grad(hand_iwelbo_from_eps)(params, x, eps(key, batch))
        check[f"{name}_vs_hand_value"] = max_diff(v, ref_v)
        check[f"{name}_vs_hand_grad"] = max_diff(g, ref_g)
    ref_v, ref_g = reference_at_numpyro_key(objective, params, key, x)
    np_v, np_g = outs["numpyro"]
    check["numpyro_vs_hand_value"] = max_diff(np_v, ref_v)
    check["numpyro_vs_hand_grad"] = max_diff(np_g, ref_g)
    result["check"] = check
    result["check_failed"] = disagreements(check, value_scale, grad_scale)

    times: dict[str, list[float]] = {name: [] for name in systems}
    per_round = [repeats // rounds + (i < repeats % rounds) for i in range(rounds)]
    for r, count in enumerate(per_round):
        for name in rotations(systems, r):  # rotate who goes first
            times[name].extend(timed(steps[name])[0] for _ in range(count))
    for name in systems:
        result[name].update(summarize(times[name]))
        result[name]["ratio_to_hand"] = result[name]["median_ms"] / result["hand"]["median_ms"]
        result[name]["p10_ratio_to_hand"] = result[name]["p10_ms"] / result["hand"]["p10_ms"]
    return result


# -- GenJAX in its own environment ------------------------------------------------------
def ensure_genjax_venv(venv: str) -> str:
    """The venv's python; creates the venv (python3.11, GENJAX_PINS) if it lacks GenJAX."""
    python = os.path.join(venv, "bin", "python")
    if os.path.exists(python):
        if subprocess.run([python, "-c", "import genjax"], capture_output=True).returncode == 0:
            return python
    print(f"creating the GenJAX environment {venv} ({' '.join(GENJAX_PINS)})", flush=True)
    base = os.environ.get("GENJAX_BASE_PYTHON", "python3.11")
    commands = [[python, "-m", "pip", "install", "--quiet", *GENJAX_PINS]]
    if not os.path.exists(python):
        commands.insert(0, [base, "-m", "venv", venv])
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise RuntimeError(f"`{' '.join(command)}` failed ({done.returncode}): " + " | ".join(tail))
    return python


def run_config(args: argparse.Namespace, objectives: list[str], batches: list[int]) -> dict[str, Any]:
    """What was timed and how: shared by the GenJAX peer's request and the JSON output."""
    return {
        "objectives": objectives,
        "batches": batches,
        "particles": PARTICLES,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "compiles": args.compiles,
    }


def run_genjax(
    python: str, objectives: list[str], batches: list[int], args: argparse.Namespace
) -> dict[str, Any]:
    """Run ``genjax_peer.py`` with ``python``; its results, or the reason there are none."""
    with tempfile.TemporaryDirectory() as tmp:
        arrays = {f"param/{k}": np.asarray(v) for k, v in init_params(jax.random.key(0)).items()}
        arrays.update({f"x/{b}": np.asarray(make_data(b)) for b in batches})
        data, request, out = (os.path.join(tmp, name) for name in ("data.npz", "request.json", "out.json"))
        np.savez(data, **arrays)
        config = {**run_config(args, objectives, batches), "data": data}
        with open(request, "w") as f:
            json.dump(config, f)
        command = [python, os.path.join(HERE, "genjax_peer.py"), "--request", request, "--out", out]
        print(f"running the GenJAX peer: {python}", flush=True)
        start = time.perf_counter()
        problem = None
        try:
            done = subprocess.run(command, timeout=args.genjax_timeout)
            if done.returncode != 0:
                problem = f"the GenJAX peer exited with status {done.returncode} (its output is above)"
        except subprocess.TimeoutExpired:
            problem = f"the GenJAX peer ran past --genjax-timeout {args.genjax_timeout:g} s"
        if not os.path.exists(out):  # the peer writes after every configuration
            return {"error": problem or "the GenJAX peer wrote no results"}
        with open(out) as f:
            peer = json.load(f)
        peer["wall_s"] = time.perf_counter() - start
        if problem:
            peer["error"] = problem  # configurations it did not reach show this
        return peer


def genjax_results(args: argparse.Namespace, objectives: list[str], batches: list[int]) -> dict[str, Any]:
    if args.genjax_python:
        python = args.genjax_python
    elif args.genjax_venv:
        try:
            python = ensure_genjax_venv(os.path.abspath(args.genjax_venv))
        except Exception as e:  # recorded in the JSON and the table instead of crashing
            return {"error": f"GenJAX environment not available: {e}"}
    else:
        return {"error": "not run (give --genjax-venv or --genjax-python)"}
    return run_genjax(python, objectives, batches, args)


def attach_genjax(results: list[dict[str, Any]], peer: dict[str, Any]) -> None:
    """Put the peer's figures (ratios within its own process) next to ours."""
    by_config = {(r["objective"], r["batch"]): r for r in peer.get("results", [])}
    failed = {(e["objective"], e["batch"]): e["error"] for e in peer.get("errors", [])}
    for r in results:
        config = (r["objective"], r["batch"])
        if config in by_config:
            p = by_config[config]
            r["genjax"] = {
                **{form: p[form] for form in ("hand_vg", "hand_grad", "genjax_vg", "genjax_grad")},
                "check": p["check"],
                "check_failed": p.get("check_failed", []),
                "ratio_vg": p["genjax_vg"]["median_ms"] / p["hand_vg"]["median_ms"],
                "ratio_grad": p["genjax_grad"]["median_ms"] / p["hand_grad"]["median_ms"],
                "p10_ratio_vg": p["genjax_vg"]["p10_ms"] / p["hand_vg"]["p10_ms"],
                "p10_ratio_grad": p["genjax_grad"]["p10_ms"] / p["hand_grad"]["p10_ms"],
            }
        else:
            r["genjax"] = {"error": failed.get(config, peer.get("error", "no result"))}


# -- report --------------------------------------------------------------------------------
def fmt_ratio(x: float | None) -> str:
    return "   n/a" if x is None else f"{x:>5.2f}x"


def print_table(results: list[dict[str, Any]]) -> None:
    """Step time of hand (ms) and each system's median ratio to hand; compile ratios."""
    for objective in dict.fromkeys(r["objective"] for r in results):
        rows = [r for r in results if r["objective"] == objective]
        ours = list(OURS[objective])
        cols = [*ours, "numpyro", "genjax v+g", "genjax grad"]
        head = f"{objective:>8} | {'batch':>5} | {'hand ms':>8} | " + " | ".join(f"{c:>11}" for c in cols)
        head += " | " + " | ".join(f"{'compile ' + c:>14}" for c in ours)
        print(head)
        print("-" * len(head))
        for r in rows:
            g = r.get("genjax", {})
            cells = [r[name]["ratio_to_hand"] for name in (*ours, "numpyro")]
            cells += [g.get("ratio_vg"), g.get("ratio_grad")]
            line = f"{'':>8} | {r['batch']:>5} | {r['hand']['median_ms']:>8.3f} | "
            line += " | ".join(f"{fmt_ratio(c):>11}" for c in cells)
            line += " | " + " | ".join(
                f"{fmt_ratio(r[name]['compile_s'] / r['hand']['compile_s']):>14}" for name in ours
            )
            print(line)
        print()
    errors = {r["genjax"]["error"] for r in results if "error" in r.get("genjax", {})}
    for e in sorted(errors):
        print(f"GenJAX: {e}")


def markdown(data: dict[str, Any]) -> str:
    """Markdown tables (as in docs/benchmarks.md) from a JSON file this script wrote."""
    lines = []
    results = data["results"]
    for objective in dict.fromkeys(r["objective"] for r in results):
        rows = [r for r in results if r["objective"] == objective]
        ours = [name for name in rows[0] if name.startswith("ours")]
        head = ["batch", "hand ms (p10–p90)", *(f"{n} / hand" for n in ours), "NumPyro / hand"]
        head += ["GenJAX / hand, v+g", "GenJAX / hand, grad", *(f"compile {n} / hand" for n in ours)]
        lines += [f"**{objective}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            h, g = r["hand"], r.get("genjax", {})
            cells = [str(r["batch"]), f"{h['median_ms']:.3f} ({h['p10_ms']:.3f}–{h['p90_ms']:.3f})"]
            cells += [f"{r[n]['ratio_to_hand']:.2f}×" for n in (*ours, "numpyro")]
            cells += [f"{g[k]:.2f}×" if k in g else "n/a" for k in ("ratio_vg", "ratio_grad")]
            cells += [f"{r[n]['compile_s'] / h['compile_s']:.2f}×" for n in ours]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def shortfalls(results: list[dict[str, Any]]) -> list[str]:
    """Where a target is missed: each of ours <= 1.05x hand, faster than NumPyro and GenJAX.

    GenJAX's ratio is to hand-written JAX in its own process (its jax); the better of
    its two forms (value and gradient, gradient only) is the bar.
    """
    out = []
    for r in results:
        where = f"{r['objective']} batch {r['batch']}"
        g = r.get("genjax", {})
        out += [f"{where}: check failed, {bad}" for bad in r.get("check_failed", [])]
        out += [f"{where}: GenJAX check failed, {bad}" for bad in g.get("check_failed", [])]
        for name in OURS[r["objective"]]:
            ours = r[name]["ratio_to_hand"]
            if ours > 1.05:
                out.append(f"{where}: {name}/hand {ours:.3f} > 1.05")
            theirs = r["numpyro"]["ratio_to_hand"]
            if ours >= theirs:
                out.append(f"{where}: {name}/hand {ours:.3f} >= numpyro/hand {theirs:.3f}")
            if "ratio_vg" in g:
                best = min(g["ratio_vg"], g["ratio_grad"])
                if ours >= best:
                    out.append(f"{where}: {name}/hand {ours:.3f} >= genjax/hand {best:.3f}")
    return out


def existing_file(text: str) -> str:
    """An argparse type: a file that exists (an input)."""
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_arguments(parser, repeats=100, rounds=20)
    parser.add_argument(
        "--objectives",
        type=name_list(OBJECTIVES, "objective"),
        default=",".join(OBJECTIVES),
        help="comma-separated: elbo, iwelbo8",
    )
    gj = parser.add_mutually_exclusive_group()
    gj.add_argument(
        "--genjax-venv",
        default=None,
        help="GenJAX 0.10.3 virtual environment (created with python3.11 if missing)",
    )
    gj.add_argument("--genjax-python", default=None, help="a Python that already imports genjax (GPU)")
    parser.add_argument(
        "--genjax-timeout", type=positive_float, default=1800, help="seconds for the GenJAX peer"
    )
    parser.add_argument(
        "--markdown", type=existing_file, default=None, help="print markdown tables of this JSON and exit"
    )
    args = parser.parse_args(argv)
    if args.markdown:
        with open(args.markdown) as f:
            print(markdown(json.load(f)))
        return
    batches, objectives = args.batches, args.objectives
    ppl.set_runtime_checks(args.runtime_checks == "on")
    args.rounds = min(args.rounds, args.repeats)
    if args.genjax_venv or args.genjax_python:  # the peer is a second JAX process on the device
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    info = machine_info()
    info["cpu_model"] = cpu_model()
    info["matmul_precision"] = str(jax.config.jax_default_matmul_precision)
    print(", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    # GenJAX first (its own process, ratios within it): a run cut short keeps both sides so far.
    peer = genjax_results(args, objectives, batches)
    bench("elbo", 8, 3, 1, 1)  # warm-up: imports, backend start, first-use caches
    results: list[dict[str, Any]] = []
    for objective in objectives:
        for batch in batches:
            result = bench(objective, batch, args.repeats, args.rounds, args.compiles)
            ratios = ", ".join(
                f"{name} {result[name]['ratio_to_hand']:.3f}" for name in systems_of(objective)[1:]
            )
            print(
                f"{objective} batch {batch}: hand {result['hand']['median_ms']:.3f} ms; "
                f"ratio to hand: {ratios}; max abs diffs {result['check']}",
                flush=True,
            )
            results.append(result)
            attach_genjax(results, peer)
            write_results(args, info, objectives, batches, results, peer, complete=False)
    print()
    print_table(results)
    misses = shortfalls(results)
    print("targets met everywhere" if not misses else "shortfalls:\n  " + "\n  ".join(misses))
    write_results(args, info, objectives, batches, results, peer, misses, complete=True)
    if args.json:
        print(f"\nwrote {args.json}")
    check_results([{k: v for k, v in r.items() if k != "genjax"} for r in results], "vae_overhead")


def write_results(
    args: argparse.Namespace,
    info: dict[str, Any],
    objectives: list[str],
    batches: list[int],
    results: list[dict[str, Any]],
    peer: dict[str, Any],
    misses: list[str] | None = None,
    complete: bool = True,
) -> None:
    """Write the results with ``T.write_json`` (strict, atomic); after every configuration too
    (``complete`` false), so a run cut short keeps what it measured."""
    if not args.json:
        return
    config = {
        **run_config(args, objectives, batches),
        "runtime_checks": args.runtime_checks,
        "genjax_venv": args.genjax_venv,
        "genjax_python": args.genjax_python,
    }
    out = {
        "machine": info,
        "config": config,
        "genjax": {k: v for k, v in peer.items() if k != "results"},
        "results": results,
        "shortfalls": misses,
        "complete": complete,
    }
    T.write_json(out, args.json)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
