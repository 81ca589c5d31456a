"""Exact enumeration: our elimination vs hand-written JAX vs NumPyro, value and gradient.

Two models, each as the exact log marginal likelihood (discrete sites summed out) and its
gradient with respect to every parameter, jitted:

* ``mixture``: N two-dimensional points, K diagonal Gaussian components, assignment per point.
  ``hand``: ``logsumexp`` over the (K, N) table of ``log w_k + log N(x_n; μ_k, σ_k)``
  (component axis first, the fastest layout of this arithmetic on CPU);
  ``ours``: ``T.marginal(model, keep=["xs/x"], inference=T.exact()).assess`` on a
  ``ppl.vmap`` plate; ``numpyro``: ``TraceEnum_ELBO`` with parallel enumeration in a plate and
  an empty guide (the loss is ``−log p(x)``).
* ``hmm``: 16 sequences of length T, K states, Gaussian emissions, learned transitions.
  ``hand``: the forward algorithm with ``lax.scan`` over steps (emissions precomputed, a
  (16, K) table per step); ``ours``: ``ppl.scan`` inside a ``ppl.vmap`` over sequences;
  ``numpyro``: ``numpyro.contrib.funsor.log_density`` of the model with
  ``contrib.control_flow.scan`` and ``config_enumerate`` (its correct route for chains;
  ``TraceEnum_ELBO`` over ``scan`` is wrong, see docs/enumeration.md, and a Python loop
  unrolls T steps into the program).
* ``hmm2``: the same with second-order transitions, ``z_t ~ Categorical(trans2[z_{t−1}, z_{t−2}])``
  (``z_{−1} = z_0``). ``hand``: the forward algorithm over the pairs ``(z_{t−1}, z_t)``;
  ``ours``: a ``ppl.scan`` carrying the last two states (a higher-order chain); ``numpyro``:
  ``log_density`` of the enumerated model with ``scan(..., history=2)``.

Every system's value and gradient are checked against ``hand``. Per size: compile time (first
call of a fresh function), the median/p10/p90 step time over interleaved rounds, and the
compiled program's temporary memory (XLA's ``memory_analysis``).

Targets: ours/hand ≤ 1.05 and ours faster than NumPyro at every size; memory linear in N, T.
With runtime checks on (the default), a jitted call outside an estimator ends with one host
check of the result (``--runtime-checks off`` drops it, as it drops every traced check).

Usage: python benchmarks/enumeration.py [--mixture 1000,10000,100000] [--components 3,10]
           [--lengths 100,1000,10000] [--states 2,8] [--second-order 3] [--repeats 50]
           [--rounds 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan as np_scan
from numpyro.contrib.funsor import config_enumerate, enum
from numpyro.contrib.funsor import log_density as funsor_log_density
from numpyro.infer import TraceEnum_ELBO
from ppl.models._records import check_results, int_list, output_path, positive_int

import ppl
from ppl import transforms as T

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import machine_info, max_diff, timed

SYSTEMS = ("hand", "ours", "numpyro")
SEQUENCES = 16


# -- mixture -------------------------------------------------------------------------------


def mixture_params(k: int) -> dict[str, jax.Array]:
    return {
        "logits": jnp.linspace(-0.5, 0.5, k),
        "loc": jnp.stack([jnp.linspace(-3.0, 3.0, k), jnp.cos(jnp.arange(k))], -1),
        "log_scale": jnp.zeros((k, 2)),
    }


def mixture_data(n: int, k: int) -> jax.Array:
    key_z, key_x = jax.random.split(jax.random.key(0))
    z = jax.random.randint(key_z, (n,), 0, k)
    return mixture_params(k)["loc"][z] + jax.random.normal(key_x, (n, 2))


def hand_mixture(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """The component axis first ((K, 2, N) then (K, N)): the fastest layout of this arithmetic here."""
    scale = jnp.exp(params["log_scale"])
    z = (x.T[None] - params["loc"][:, :, None]) / scale[:, :, None]
    log_n = jnp.sum(-0.5 * z**2, 1) - jnp.sum(params["log_scale"], -1)[:, None] - jnp.log(2 * jnp.pi)
    table = jax.nn.log_softmax(params["logits"])[:, None] + log_n
    return jnp.sum(jax.nn.logsumexp(table, axis=0))


@ppl.gen
def point(params: dict[str, jax.Array]) -> None:
    z = ppl.sample("z", dist.Categorical(logits=params["logits"]))
    ppl.sample("x", dist.Normal(params["loc"][z], jnp.exp(params["log_scale"][z])).to_event(1))


def ours_mixture(n: int) -> Callable[..., jax.Array]:
    @ppl.gen
    def model(params: dict[str, jax.Array]) -> None:
        ppl.sample("xs", ppl.vmap(point, in_axes=None, axis_size=n), params)

    marg = T.marginal(model, keep=["xs/x"], inference=T.exact())
    return lambda params, x: marg.assess({"xs": {"x": x}}, params)[0]


def numpyro_mixture(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    def model(params: dict[str, jax.Array], x: jax.Array) -> None:
        with numpyro.plate("n", x.shape[0]):
            z = numpyro.sample(
                "z", dist.Categorical(logits=params["logits"]), infer={"enumerate": "parallel"}
            )
            numpyro.sample(
                "x", dist.Normal(params["loc"][z], jnp.exp(params["log_scale"][z])).to_event(1), obs=x
            )

    def guide(params: dict[str, jax.Array], x: jax.Array) -> None:
        pass

    return -TraceEnum_ELBO(max_plate_nesting=1).loss(jax.random.key(0), {}, model, guide, params, x)


# -- hmm -----------------------------------------------------------------------------------


def hmm_params(k: int) -> dict[str, jax.Array]:
    return {
        "trans": 2.0 * jnp.eye(k) + 0.1 * jnp.arange(k),
        "init": jnp.zeros(k),
        "loc": jnp.linspace(-2.0, 2.0, k),
        "log_scale": jnp.zeros(k),
    }


def hmm_data(length: int, k: int) -> jax.Array:
    key = jax.random.key(1)
    return jnp.sin(jnp.arange(length) / 17.0)[None] * 2 + jax.random.normal(key, (SEQUENCES, length))


def emissions(params: dict[str, jax.Array], ys: jax.Array) -> jax.Array:
    """``log N(y_{s,t}; loc_k, scale_k)``, shape (S, T, K)."""
    scale = jnp.exp(params["log_scale"])
    u = (ys[..., None] - params["loc"]) / scale
    return -0.5 * u**2 - jnp.log(scale) - 0.5 * jnp.log(2 * jnp.pi)


def hand_hmm(params: dict[str, jax.Array], ys: jax.Array) -> jax.Array:
    log_a = jax.nn.log_softmax(params["trans"], -1)
    log_e = emissions(params, ys)
    alpha0 = jax.nn.log_softmax(params["init"]) + log_e[:, 0]

    def step(alpha: jax.Array, e: jax.Array) -> tuple[jax.Array, None]:
        return jax.nn.logsumexp(alpha[:, :, None] + log_a[None], axis=1) + e, None

    alpha, _ = jax.lax.scan(step, alpha0, jnp.swapaxes(log_e[:, 1:], 0, 1))
    return jnp.sum(jax.nn.logsumexp(alpha, -1))


@ppl.gen
def sequence(params: dict[str, jax.Array], ys: jax.Array) -> None:
    scale = jnp.exp(params["log_scale"])
    z0 = ppl.sample("z0", dist.Categorical(logits=params["init"]))
    ppl.sample("y0", dist.Normal(params["loc"][z0], scale[z0]))

    def step(z: jax.Array, y: jax.Array) -> tuple[jax.Array, None]:
        z = ppl.sample("z", dist.Categorical(logits=params["trans"][z]))
        ppl.sample("y", dist.Normal(params["loc"][z], scale[z]))
        return z, None

    ppl.scan(step, z0, ys[1:], addr="t")


@ppl.gen
def sequences(params: dict[str, jax.Array], ys: jax.Array) -> None:
    ppl.sample("seqs", ppl.vmap(sequence, in_axes=(None, 0)), params, ys)


HMM = T.marginal(sequences, keep=["seqs/y0", "seqs/t/y"], inference=T.exact())


def ours_hmm(params: dict[str, jax.Array], ys: jax.Array) -> jax.Array:
    return HMM.assess({"seqs": {"y0": ys[:, 0], "t": {"y": ys[:, 1:]}}}, params, ys)[0]


def numpyro_hmm(params: dict[str, jax.Array], ys: jax.Array) -> jax.Array:
    def model(params: dict[str, jax.Array], ys: jax.Array) -> None:
        scale = jnp.exp(params["log_scale"])
        with numpyro.plate("seqs", ys.shape[0], dim=-1):
            z0 = numpyro.sample("z0", dist.Categorical(logits=params["init"]))
            numpyro.sample("y0", dist.Normal(params["loc"][z0], scale[z0]), obs=ys[:, 0])

        def step(z: jax.Array, y: jax.Array) -> tuple[jax.Array, None]:
            with numpyro.plate("seqs", ys.shape[0], dim=-1):
                z = numpyro.sample("z", dist.Categorical(logits=params["trans"][z]))
                numpyro.sample("y", dist.Normal(params["loc"][z], scale[z]), obs=y)
            return z, None

        np_scan(step, z0, jnp.swapaxes(ys[:, 1:], 0, 1))

    enumerated = enum(config_enumerate(model), first_available_dim=-2)
    return funsor_log_density(enumerated, (params, ys), {}, {})[0]


# -- second-order hmm ----------------------------------------------------------------------


def hmm2_params(k: int) -> dict[str, jax.Array]:
    params = hmm_params(k)
    params["trans"] = params["trans"][:, None, :] + 0.3 * jnp.arange(k)[None, :, None]
    return params


def hand_hmm2(params: dict[str, jax.Array], ys: jax.Array) -> jax.Array:
    log_a = jax.nn.log_softmax(params["trans"], -1)  # [z_{t−1}, z_{t−2}, z_t]
    log_e = emissions(params, ys)
    first = jax.nn.log_softmax(params["init"]) + log_e[:, 0]  # (S, K)
    diagonal = log_a[jnp.arange(log_a.shape[0]), jnp.arange(log_a.shape[0])]  # z_{−1} = z_0
    alpha1 = first[:, :, None] + diagonal[None] + log_e[:, 1, None, :]  # (S, z_0, z_1)
    moved = jnp.transpose(log_a, (1, 0, 2))  # [z_{t−2}, z_{t−1}, z_t]

    def step(alpha: jax.Array, e: jax.Array) -> tuple[jax.Array, None]:
        return jax.nn.logsumexp(alpha[..., None] + moved[None], axis=1) + e[:, None, :], None

    alpha, _ = jax.lax.scan(step, alpha1, jnp.swapaxes(log_e[:, 2:], 0, 1))
    return jnp.sum(jax.nn.logsumexp(alpha, (-2, -1)))


@ppl.gen
def sequence2(params: dict[str, jax.Array], ys: jax.Array) -> None:
    scale = jnp.exp(params["log_scale"])
    z0 = ppl.sample("z0", dist.Categorical(logits=params["init"]))
    ppl.sample("y0", dist.Normal(params["loc"][z0], scale[z0]))

    def step(carry: tuple[jax.Array, jax.Array], y: jax.Array) -> tuple[Any, None]:
        z1, z2 = carry
        z = ppl.sample("z", dist.Categorical(logits=params["trans"][z1, z2]))
        ppl.sample("y", dist.Normal(params["loc"][z], scale[z]))
        return (z, z1), None

    ppl.scan(step, (z0, z0), ys[1:], addr="t")


@ppl.gen
def sequences2(params: dict[str, jax.Array], ys: jax.Array) -> None:
    ppl.sample("seqs", ppl.vmap(sequence2, in_axes=(None, 0)), params, ys)


HMM2 = T.marginal(sequences2, keep=["seqs/y0", "seqs/t/y"], inference=T.exact())


def ours_hmm2(params: dict[str, jax.Array], ys: jax.Array) -> jax.Array:
    return HMM2.assess({"seqs": {"y0": ys[:, 0], "t": {"y": ys[:, 1:]}}}, params, ys)[0]


def numpyro_hmm2(params: dict[str, jax.Array], ys: jax.Array) -> jax.Array:
    def model(params: dict[str, jax.Array], ys: jax.Array) -> None:
        scale = jnp.exp(params["log_scale"])
        with numpyro.plate("seqs", ys.shape[0], dim=-1):
            z0 = numpyro.sample("z0", dist.Categorical(logits=params["init"]))
            numpyro.sample("y0", dist.Normal(params["loc"][z0], scale[z0]), obs=ys[:, 0])

        def step(carry: tuple[jax.Array, jax.Array], y: jax.Array) -> tuple[Any, None]:
            z1, z2 = carry
            with numpyro.plate("seqs", ys.shape[0], dim=-1):
                z = numpyro.sample("z", dist.Categorical(logits=params["trans"][z1, z2]))
                numpyro.sample("y", dist.Normal(params["loc"][z], scale[z]), obs=y)
            return (z, z1), None

        np_scan(step, (z0, z0), jnp.swapaxes(ys[:, 1:], 0, 1), history=2)

    enumerated = enum(config_enumerate(model), first_available_dim=-2)
    return funsor_log_density(enumerated, (params, ys), {}, {})[0]


# -- timing --------------------------------------------------------------------------------


def temp_bytes(fn: Callable[..., Any], *args: Any) -> int | None:
    try:
        stats = fn.lower(*args).compile().memory_analysis()
    except Exception:  # not every backend reports it
        return None
    return None if stats is None else int(stats.temp_size_in_bytes)


def bench(
    objectives: dict[str, Callable[..., jax.Array]], params: Any, data: jax.Array, repeats: int, rounds: int
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    outs, steps = {}, {}
    for name in SYSTEMS:
        step = jax.jit(jax.value_and_grad(objectives[name]))
        compile_s, outs[name] = timed(lambda step=step: step(params, data))
        steps[name] = step
        result[name] = {"compile_s": compile_s, "temp_bytes": temp_bytes(step, params, data)}
    hand_v, hand_g = outs["hand"]
    scale = abs(float(hand_v))
    grad_scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(hand_g))
    for name in ("ours", "numpyro"):
        v, g = outs[name]
        dv, dg = abs(float(v) - float(hand_v)), max_diff(g, hand_g)
        if not (dv <= 1e-4 * scale + 1e-3 and dg <= 1e-3 * grad_scale + 1e-3):
            raise SystemExit(f"error: {name} disagrees with hand-written JAX: value {dv:.3g}, grad {dg:.3g}")
        result[name].update(value_diff=dv, grad_diff=dg)
    times: dict[str, list[float]] = {name: [] for name in SYSTEMS}
    per_round = [repeats // rounds + (i < repeats % rounds) for i in range(rounds)]
    for r, count in enumerate(per_round):
        for name in SYSTEMS[r % 3 :] + SYSTEMS[: r % 3]:
            step = steps[name]
            times[name].extend(timed(lambda step=step: step(params, data))[0] for _ in range(count))
    for name in SYSTEMS:
        ms = np.asarray(times[name]) * 1e3
        result[name].update(
            median_ms=float(np.median(ms)),
            p10_ms=float(np.percentile(ms, 10)),
            p90_ms=float(np.percentile(ms, 90)),
        )
    return result


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'model':>7} | {'size':>6} | {'K':>3} | {'hand ms':>8} | {'ours ms':>8} | {'ours/hand':>9} | "
        f"{'numpyro ms':>10} | {'np/hand':>7} | {'compile h/o/np s':>17} | {'temp MB h/o':>12}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        h, o, n = r["hand"], r["ours"], r["numpyro"]
        mem = "/".join("-" if x["temp_bytes"] is None else f"{x['temp_bytes'] / 2**20:.1f}" for x in (h, o))
        hm, om, nm = h["median_ms"], o["median_ms"], n["median_ms"]
        print(
            f"{r['model']:>7} | {r['size']:>6} | {r['states']:>3} | {hm:>8.3f} | {om:>8.3f} | "
            f"{om / hm:>9.2f} | {nm:>10.3f} | {nm / hm:>7.2f} | "
            f"{h['compile_s']:>5.2f}/{o['compile_s']:>5.2f}/{n['compile_s']:>5.2f} | {mem:>12}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixture", type=int_list, default="1000,10000,100000", help="plate sizes N")
    parser.add_argument("--components", type=int_list, default="3,10", help="mixture components K")
    parser.add_argument("--lengths", type=int_list, default="100,1000,10000", help="chain lengths T")
    parser.add_argument("--states", type=int_list, default="2,8", help="HMM states K")
    parser.add_argument("--second-order", type=int_list, default="3", help="second-order HMM states K")
    parser.add_argument("--repeats", type=positive_int, default=50, help="timed calls per system and size")
    parser.add_argument("--rounds", type=positive_int, default=5, help="interleaved timing rounds")
    parser.add_argument("--json", type=output_path("--json"), default=None, help="write the results here")
    parser.add_argument(
        "--runtime-checks",
        choices=("on", "off"),
        default="on",
        help="checks of traced numbers (ppl.set_runtime_checks)",
    )
    args = parser.parse_args(argv)
    ppl.set_runtime_checks(args.runtime_checks == "on")
    rounds = min(args.rounds, args.repeats)
    info = machine_info()
    print(", ".join(f"{k}={v}" for k, v in info.items()))
    rows: list[dict[str, Any]] = []
    for k in args.components:
        for n in args.mixture:
            objectives = {"hand": hand_mixture, "ours": ours_mixture(n), "numpyro": numpyro_mixture}
            row = {"model": "mixture", "size": n, "states": k}
            row.update(bench(objectives, mixture_params(k), mixture_data(n, k), args.repeats, rounds))
            rows.append(row)
            print_table([row])
    for k in args.states:
        for length in args.lengths:
            objectives = {"hand": hand_hmm, "ours": ours_hmm, "numpyro": numpyro_hmm}
            row = {"model": "hmm", "size": length, "states": k}
            row.update(bench(objectives, hmm_params(k), hmm_data(length, k), args.repeats, rounds))
            rows.append(row)
            print_table([row])
    for k in args.second_order:
        for length in args.lengths:
            objectives = {"hand": hand_hmm2, "ours": ours_hmm2, "numpyro": numpyro_hmm2}
            row = {"model": "hmm2", "size": length, "states": k}
            row.update(bench(objectives, hmm2_params(k), hmm_data(length, k), args.repeats, rounds))
            rows.append(row)
            print_table([row])
    print()
    print_table(rows)
    if args.json:
        config = {
            k: getattr(args, k)
            for k in (
                "mixture",
                "components",
                "lengths",
                "states",
                "second_order",
                "repeats",
                "runtime_checks",
            )
        }
        config["rounds"], config["sequences"] = rounds, SEQUENCES
        T.write_json({"machine": info, "config": config, "results": rows}, args.json)
        print(f"\nwrote {args.json}")
    check_results(rows, "enumeration")


if __name__ == "__main__":
    main()
