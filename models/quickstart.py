"""The README's main job: fit one model with one hand-written ELBO under several strategies.

Model (data embedded below): a switch c ~ Bernoulli(0.5) picks the prior mean of
z ~ Normal(μ_c, 1); ten observations x_i ~ Normal(z, 0.5). Family: c ~
Bernoulli(σ(φ)), z ~ Normal(m_c, exp(s_c)). The log evidence is exact (a
two-component Gaussian marginal), so every row reports its gap.

Rows: the strategy for c (z is always reparameterized): ``enum``,
``reinforce`` with a leave-one-out baseline, ``mvd``, plain ``reinforce``, and
the ``auto`` policy; every row averages 8 particles per step. Columns: the
ELBO after training (5000-sample estimate), its gap to log p(x), the spread of
single gradient estimates at the fitted parameters, and the step time.

Training is :func:`ppl.transforms.fit` (Adam, learning rate 0.05).

Run: ``python -m ppl.models.quickstart [--steps N] [--seed S] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import optax
from ppl.models._records import check_results, nonnegative_int, output_path, positive_int

import ppl
from ppl import transforms as T

DATA = jnp.array([1.92, 2.41, 1.67, 2.25, 1.58, 2.73, 2.08, 1.85, 2.36, 2.12])
PRIOR_MEANS = jnp.array([-1.0, 2.5])
NOISE = 0.5


@ppl.gen
def model() -> None:
    c = ppl.sample("c", dist.Bernoulli(0.5))
    z = ppl.sample("z", dist.Normal(PRIOR_MEANS[c.astype(jnp.int32)], 1.0))
    ppl.sample("x", dist.Normal(z, NOISE).expand([DATA.shape[0]]))


@ppl.gen
def family(params: dict[str, jax.Array]) -> None:
    c = ppl.sample("c", dist.Bernoulli(logits=params["logit"]))
    i = c.astype(jnp.int32)
    ppl.sample("z", dist.Normal(params["loc"][i], jnp.exp(params["log_scale"][i])))


@T.expectation
def elbo(params: dict[str, jax.Array]) -> jax.Array:
    tr = T.sim(family, params)
    return T.density(model, {**tr.choices, "x": DATA}) - tr.score


def log_evidence() -> jax.Array:
    n = DATA.shape[0]
    cov = NOISE**2 * jnp.eye(n) + jnp.ones((n, n))
    per_c = jnp.stack([dist.MultivariateNormal(jnp.full(n, m), cov).log_prob(DATA) for m in PRIOR_MEANS])
    return jax.nn.logsumexp(per_c + jnp.log(0.5))


PARTICLES = 8
CONFIGS: dict[str, dict[str, Any]] = {
    "enum": {"strategies": {"c": T.enum(), "z": T.reparam()}},
    "reinforce + leave-one-out": {"strategies": {"c": T.reinforce(T.leave_one_out()), "z": T.reparam()}},
    "mvd": {"strategies": {"c": T.mvd(), "z": T.reparam()}},
    "reinforce, no baseline": {"strategies": {"c": T.reinforce(), "z": T.reparam()}},
    "auto (enum for c, reparam for z)": {},
}


def init_params() -> dict[str, jax.Array]:
    return {"logit": jnp.zeros(()), "loc": jnp.zeros(2), "log_scale": jnp.zeros(2)}


LEARNING_RATE = 0.05


def fit(name: str, steps: int, seed: int = 0) -> dict[str, float]:
    """Train row ``name`` with :func:`ppl.transforms.fit` (Adam, ``steps`` steps); evaluate it.

    ``step_ms`` is the mean time of steps 2..``steps`` (the first compiles), from timestamps
    taken after each step has finished.
    """
    estimator = elbo.estimator(**CONFIGS[name], particles=PARTICLES)
    result = T.fit(
        estimator,
        init_params(),
        optax.adam(LEARNING_RATE),
        steps=steps,
        key=jax.random.key(seed),
        evaluate=lambda step, params: time.perf_counter(),
        evaluate_every=1,
        config={"app": "quickstart", "row": name, "steps": steps, "seed": seed},
    )
    params = result.params
    stamps = [t for _, t in result.evaluations]
    step_ms = 1e3 * (stamps[-1] - stamps[0]) / (steps - 1) if steps > 1 else float("nan")
    eval_keys = jax.random.split(jax.random.key(seed + 1), 5000)
    value = jnp.mean(jax.vmap(lambda k: elbo.estimate(k, params))(eval_keys))
    grads = jax.vmap(lambda k: estimator.grad(k, params))(eval_keys[:1000])
    spread = jnp.sqrt(sum(jnp.sum(jnp.var(g, axis=0)) for g in jax.tree.leaves(grads)))
    return {
        "elbo": float(value),
        "gap": float(log_evidence() - value),
        "grad_std": float(spread),
        "step_ms": step_ms,
        "q(c=1)": float(jax.nn.sigmoid(params["logit"])),
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description="Fit one model under several strategies.")
    parser.add_argument("--steps", type=positive_int, default=1000)
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--json", type=output_path("--json"), default=None)
    args = parser.parse_args(argv)
    exact = float(log_evidence())
    results = {name: fit(name, args.steps, args.seed) for name in CONFIGS}
    print(
        f"log p(x) = {exact:.4f} (exact); {args.steps} Adam steps, lr {LEARNING_RATE}, "
        f"{PARTICLES} particles per step, on {jax.devices()[0]}"
    )
    header = (
        f"{'strategy for c':34s} {'ELBO':>9s} {'gap':>7s} {'grad std':>9s} {'q(c=1)':>7s} {'ms/step':>8s}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:34s} {r['elbo']:9.4f} {r['gap']:7.4f} {r['grad_std']:9.3f} "
            f"{r['q(c=1)']:7.4f} {r['step_ms']:8.3f}"
        )
    if args.json:
        T.write_json(
            {"log_evidence": exact, "steps": args.steps, "seed": args.seed, "results": results}, args.json
        )
    check_results(
        {name: {k: v for k, v in r.items() if k != "step_ms"} for name, r in results.items()}, "quickstart"
    )
    return results


if __name__ == "__main__":
    main()
