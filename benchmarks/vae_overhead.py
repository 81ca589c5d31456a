"""VAE ELBO and IWELBO(8) gradient estimates: ours vs hand-written JAX vs NumPyro vs GenJAX.

Extends ``benchmarks/overhead.py`` (same model, parameters and data, imported from
there): the Table 1 VAE of the programmable-VI paper, a 10-dimensional standard
normal latent, a decoder Linear(10, 200) -> leaky ReLU -> Linear(200, 784) giving
Bernoulli logits, and a reparameterized diagonal Normal guide from an encoder
Linear(784, 200) -> leaky ReLU -> Linear(200, 20).

Two objectives, both averaged over the batch (divided by the batch size):

* ``elbo``: the single-sample ELBO, exactly as in ``overhead.py``;
* ``iwelbo8``: the importance-weighted bound with K = 8 particles per data point,
  ``sum_i (logsumexp_k log w_ik - log K) / n`` with
  ``log w_ik = log p(x_i, z_ik) - log q(z_ik | x_i)`` and ``z_ik`` reparameterized.

Systems, each timed as one jitted value-and-gradient call w.r.t. all parameters:

* ``hand``: hand-written JAX (NumPyro's log-density formulas);
* ``ours``: ``ppl`` programs and an ``@expectation`` objective (``overhead.elbo`` /
  :func:`iwelbo_objective`), ``estimator(strategies={"z": T.reparam()})``;
* ``numpyro``: ``Trace_ELBO`` (elbo) and ``RenyiELBO(alpha=0, num_particles=8)``
  (iwelbo8, with a data plate so the bound is per data point, particles vectorized);
* ``genjax``: GenJAX 0.10.3 with jax 0.5.3 in its own virtual environment, run as a
  subprocess (``benchmarks/genjax_peer.py``) that times GenJAX *and* hand-written
  JAX in that same process, so its figure is a ratio within one process. GenJAX's
  public ``grad_estimate`` returns no value, so that form is compared with a
  gradient-only hand version; value and gradient together come from
  ``jax.value_and_grad`` of the function ``grad_estimate`` differentiates, compared
  with the hand value-and-gradient.

``hand`` uses the random numbers ``ours`` draws (and, for the check, NumPyro's), so
values and gradients are asserted equal to float rounding. Per batch, objective and
system it reports the compile time (median over ``--compiles`` first calls of fresh
functions, tracing included) and the median, p10 and p90 step time (each call timed
alone, ``block_until_ready``); the systems' timing rounds are interleaved.

Targets: ours <= 1.05x hand and faster than NumPyro and GenJAX at every batch size.

Usage: python benchmarks/vae_overhead.py [--batches 64,128] [--repeats 100]
           [--objectives elbo,iwelbo8] [--compiles 3] [--json PATH] [--genjax-venv PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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

import ppl
from ppl import transforms as T

# Model, parameters, data and the ELBO programs of the core overhead benchmark.
from overhead import (  # type: ignore[import-not-found]
    LATENT,
    Params,
    bernoulli_logits_log_prob,
    check_close,
    decode,
    elbo,
    encode,
    guide,
    hand_elbo,
    hand_elbo_at,
    init_params,
    machine_info,
    make_data,
    model,
    normal_log_prob,
    np_elbo,
    np_z_key,
    timed,
)

PARTICLES = 8
OBJECTIVES = ("elbo", "iwelbo8")
MAIN_SYSTEMS = ("hand", "ours", "numpyro")
HERE = os.path.dirname(os.path.abspath(__file__))
GENJAX_PINS = ("genjax==0.10.3", "jax==0.5.3", "jaxlib==0.5.3", "numpy<2")
Step = Callable[[], Any]


# -- ours: IWELBO(K) written with the public constructs ---------------------------
def iwelbo_objective(K: int) -> T.Expectation:
    """IWELBO(K) of ``overhead.model``/``overhead.guide``, averaged over the batch.

    Samples the K particles of every data point in one ``T.sim`` of a K-fold
    ``ppl.vmap`` of the guide (the encoder runs once, unbatched over particles),
    and evaluates the per-particle, per-point log weights with ``jax.vmap`` over
    ``T.density`` of single-point programs. To be replaced by the library's
    ``T.iwelbo(model, guide, K)``.
    """
    particles = ppl.vmap(guide, in_axes=None, axis_size=K)

    def log_weight(params: Params, z: jax.Array, x: jax.Array) -> jax.Array:  # one point
        log_p = T.density(model, {"z": z[None], "x": x[None]}, params, 1)
        return log_p - T.density(guide, {"z": z[None]}, params, x[None])

    @T.expectation
    def iwelbo(params: Params, x: jax.Array) -> jax.Array:
        z = T.sim(particles, params, x).choices["z"]  # (K, n, LATENT)
        per_point = jax.vmap(log_weight, in_axes=(None, 0, 0))
        log_w = jax.vmap(per_point, in_axes=(None, 0, None))(params, z, x)  # (K, n)
        return jnp.sum(jax.nn.logsumexp(log_w, axis=0) - jnp.log(K)) / x.shape[0]

    return iwelbo


def ours_estimator(objective: str) -> T.Estimator:
    program = elbo if objective == "elbo" else iwelbo_objective(PARTICLES)
    return program.estimator(strategies={"z": T.reparam()})


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


def make_steps(objective: str, params: Params, key: jax.Array, x: jax.Array) -> dict[str, Step]:
    """Fresh jitted functions (so the first call compiles) bound to their arguments."""
    hand = jax.jit(jax.value_and_grad(HAND[objective]))
    ours = ours_estimator(objective)
    theirs = jax.jit(jax.value_and_grad(NUMPYRO[objective]))
    return {
        "hand": lambda: hand(params, key, x),
        "ours": lambda: ours.value_and_grad(key, params, x),
        "numpyro": lambda: theirs(params, key, x),
    }


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


def bench(objective: str, batch: int, repeats: int, rounds: int, compiles: int) -> dict[str, Any]:
    params, key, x = init_params(jax.random.key(0)), jax.random.key(2), make_data(batch)
    systems = MAIN_SYSTEMS
    compile_times: dict[str, list[float]] = {name: [] for name in systems}
    outs: dict[str, Any] = {}
    for c in range(compiles):  # fresh functions each time: every first call compiles
        steps = make_steps(objective, params, key, x)
        for name in systems[c % 3 :] + systems[: c % 3]:
            compile_s, outs[name] = timed(steps[name])
            compile_times[name].append(compile_s)
    result: dict[str, Any] = {"objective": objective, "batch": batch}
    for name in systems:
        samples = compile_times[name]
        result[name] = {"compile_s": float(np.median(samples)), "compile_samples_s": samples}

    hand_v, hand_g = outs["hand"]
    ours_v, ours_g = outs["ours"]
    value_scale = abs(float(hand_v))
    grad_scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(hand_g))
    ref_v, ref_g = reference_at_numpyro_key(objective, params, key, x)
    np_v, np_g = outs["numpyro"]
    result["check"] = {
        "ours_vs_hand_value": check_close("ours value", ours_v, hand_v, value_scale),
        "ours_vs_hand_grad": check_close("ours grad", ours_g, hand_g, grad_scale),
        "numpyro_vs_hand_value": check_close("numpyro value", np_v, ref_v, value_scale),
        "numpyro_vs_hand_grad": check_close("numpyro grad", np_g, ref_g, grad_scale),
    }

    times: dict[str, list[float]] = {name: [] for name in systems}
    per_round = [repeats // rounds + (i < repeats % rounds) for i in range(rounds)]
    for r, count in enumerate(per_round):
        order = systems[r % 3 :] + systems[: r % 3]  # rotate who goes first
        for name in order:
            times[name].extend(timed(steps[name])[0] for _ in range(count))
    for name in systems:
        result[name].update(summarize(times[name]))
    return result
