r"""The Table 1 variational autoencoder, trained for real on scikit-learn's digits.

Model and guide (the VAE of Table 1 of the programmable-VI paper, sizes below)::

    z ~ Normal(0, I_L)                                        (latent, L = 10)
    x | z ~ Bernoulli(logits = decoder(z))                    decoder: L -> H -> D, leaky ReLU
    q(z | x) = Normal(μ(x), diag σ(x)²)                       encoder: D -> H -> 2L, σ = softplus

Sizes (``--size``): ``digits`` (the default) uses the 8×8 images as they are,
``D = 64`` pixels, ``H = 200``; ``table1`` is the exact Table 1 architecture,
``D = 784``, ``H = 200``, on the same images upsampled 8×8 -> 28×28 by nearest
neighbour (each source pixel becomes a 3×3 to 4×4 block), so the paper's model
is trained on real data without a download. The data: all 1797 images of
``sklearn.datasets.load_digits``, binarized once by thresholding
(``pixel / 16 > 0.5``; a fixed, not a dynamic, binarization), split by
``train_test_split(test_size=297, random_state=0)`` into 1500 training and 297
test images. The split never depends on ``--seed``.

Objectives (``x`` one image, ``z_k ~ q(z | x)`` independent, ``log w_k = log
p(x, z_k) - log q(z_k | x)``, ``w̃_k = w_k / Σ_j w_j``, ``θ`` decoder and ``φ``
encoder parameters). Each is a library objective (:mod:`ppl.transforms`), run once
per image of a minibatch with its own key (``in_axes``) and averaged:

* ``elbo``: ``E_q[log w]``, the guide sample reparameterized (:func:`T.elbo`).
* ``iwelbo5``, ``iwelbo50``: ``E[log (1/K) Σ_k w_k]`` with K = 5, 50
  (:func:`T.iwelbo`), reparameterized; its gradient ``Σ_k w̃_k ∇ log w_k``.
* ``vimco5``: the same bound with K = 5, the latent treated as
  *non-reparameterized* (score function), with VIMCO's leave-one-out baselines
  (:func:`T.vimco`): ``∇φ ≈ Σ_k (L̂ - L̂_{-k}) ∇φ log q(z_k|x) - Σ_k w̃_k ∇φ log
  q(z_k|x)`` where ``L̂_{-k}`` replaces ``log w_k`` by the mean of the others;
  ``∇θ = Σ_k w̃_k ∇θ log p(x, z_k)``.
* ``dreg5``: IWELBO(5) with doubly reparameterized guide gradients
  (:func:`T.iwelbo` with ``gradient="dreg"``): ``∇φ ≈ Σ_k w̃_k² ∂log w_k/∂z_k
  ∂z_k/∂φ``, model gradient as for IWELBO.
* ``rws5``: reweighted wake-sleep with K = 5 (:func:`T.wake_p` for the decoder,
  :func:`T.wake_q` for the encoder, one Adam step on both): ``∇θ ≈ Σ_k w̃_k ∇θ
  log p(x, z_k)`` and ``∇φ ≈ Σ_k w̃_k ∇φ log q(z_k|x)`` (the wake-phase update of
  ``q`` towards ``p(z|x)``, i.e. minimizing ``KL(p(z|x) ‖ q)``); both
  self-normalized, so consistent but biased for finite K. The two phases use
  the same key and hence the same K particles.

Training: Adam (learning rate 1e-3), minibatches of 100 images drawn without
replacement at every step, the whole update (minibatch, estimator, Adam) one
jitted function compiled once; 5000 steps by default (all six objectives with
their evaluation take about 3 minutes on a 2-core CPU for ``digits``; ``table1``
is about ten times slower per step, so give it fewer ``--steps``). Evaluation: the held-out log-likelihood
``log p(x)`` estimated by IWELBO with K = 1000 per test image, averaged over the
test set (nats per image; a lower bound in expectation, tight as K grows), plus
the test ELBO and the wall time of training.

Run ``python -m ppl.models.vae [--steps N] [--objectives elbo,iwelbo5,...]
[--size digits|table1] [--json PATH] [--seed S]``: prints a table (objective,
held-out log-likelihood, training bound, wall time) and writes JSON.

Example:
    >>> import jax
    >>> from ppl.models import vae
    >>> train_x, test_x = vae.load_digits()
    >>> params = vae.init_params(jax.random.key(0))
    >>> result = vae.train("iwelbo5", params, train_x, steps=200, key=jax.random.key(1), progress=False)
    >>> ll = vae.log_likelihood(result.params, test_x, jax.random.key(2), particles=100)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax

import ppl
from ppl import transforms as T

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Size:
    """Layer sizes: ``pixels`` (D), ``latent`` (L) and ``hidden`` (H) units."""

    pixels: int
    latent: int
    hidden: int


SIZES = {"digits": Size(pixels=64, latent=10, hidden=200), "table1": Size(pixels=784, latent=10, hidden=200)}
BATCH = 100
LEARNING_RATE = 1e-3
EVAL_PARTICLES = 1000
DEFAULT_STEPS = 5000


# -- data ------------------------------------------------------------------------
def load_digits(size: str = "digits", test_size: int = 297) -> tuple[jax.Array, jax.Array]:
    """Binarized digits ``(train, test)``, each ``(n, D)`` float32 in {0, 1}.

    ``size="table1"`` upsamples each 8×8 image to 28×28 by nearest neighbour
    (D = 784). The split is ``train_test_split(..., random_state=0)``.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    images = sk_load_digits().images  # (1797, 8, 8), values 0..16
    binary = (images / 16.0 > 0.5).astype(np.float32)
    if size == "table1":
        rows = np.arange(28) * 8 // 28
        binary = binary[:, rows][:, :, rows]
    flat = binary.reshape(binary.shape[0], -1)
    train, test = train_test_split(flat, test_size=test_size, random_state=0)
    return jnp.asarray(train), jnp.asarray(test)


# -- model and guide -------------------------------------------------------------
def _dense(key: jax.Array, n_in: int, n_out: int) -> Params:
    return {"w": jax.random.normal(key, (n_in, n_out)) / math.sqrt(n_in), "b": jnp.zeros(n_out)}


def init_params(key: jax.Array, size: str | Size = "digits") -> Params:
    """``{"decoder": ..., "encoder": ...}``, each a two-layer MLP as nested dicts."""
    s = SIZES[size] if isinstance(size, str) else size
    k = jax.random.split(key, 4)
    return {
        "decoder": {"l1": _dense(k[0], s.latent, s.hidden), "l2": _dense(k[1], s.hidden, s.pixels)},
        "encoder": {"l1": _dense(k[2], s.pixels, s.hidden), "l2": _dense(k[3], s.hidden, 2 * s.latent)},
    }


def _mlp(p: Params, x: jax.Array) -> jax.Array:
    h = jax.nn.leaky_relu(x @ p["l1"]["w"] + p["l1"]["b"])
    return h @ p["l2"]["w"] + p["l2"]["b"]


def decode(decoder: Params, z: jax.Array) -> jax.Array:
    """Bernoulli logits of the pixels given latents ``z`` (any leading axes)."""
    return _mlp(decoder, z)


def encode(encoder: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and scale of ``q(z | x)`` for images ``x`` (any leading axes)."""
    out = _mlp(encoder, x)
    latent = out.shape[-1] // 2
    return out[..., :latent], jax.nn.softplus(out[..., latent:])


@ppl.gen
def model(decoder: Params) -> jax.Array:
    """One image: ``z ~ Normal(0, I)``, ``x ~ Bernoulli(logits=decoder(z))``."""
    latent = decoder["l1"]["w"].shape[0]
    z = ppl.sample("z", dist.Normal(jnp.zeros(latent), 1.0).to_event(1))
    return ppl.sample("x", dist.Bernoulli(logits=decode(decoder, z)).to_event(1))


@ppl.gen
def guide(x: jax.Array, encoder: Params) -> jax.Array:
    """``q(z | x) = Normal(μ(x), diag σ(x)²)`` for one image ``x``."""
    loc, scale = encode(encoder, x)
    return ppl.sample("z", dist.Normal(loc, scale).to_event(1))


# -- objectives ------------------------------------------------------------------
# Arguments of every objective: (model_args, guide_args, observations) =
# ((decoder,), (x, encoder), {"x": x}); per image: x mapped, parameters shared.
IN_AXES = (None, (0, None), 0)

OBJECTIVES: dict[str, str] = {
    "elbo": "ELBO, reparameterized",
    "iwelbo5": "IWELBO(5), reparameterized",
    "iwelbo50": "IWELBO(50), reparameterized",
    "vimco5": "VIMCO(5), score function + leave-one-out",
    "dreg5": "IWELBO(5), DReG gradient",
    "rws5": "reweighted wake-sleep (5)",
}


def _estimators(name: str) -> list[T.Estimator]:
    """The estimators of one training objective; each differentiates its ``argnums``."""

    def est(objective: T.Expectation, argnums: tuple[int, ...] = (0, 1)) -> T.Estimator:
        # jit=False: the estimators are traced inside the jitted update step.
        return objective.estimator(argnums=argnums, in_axes=IN_AXES, jit=False)

    if name == "elbo":
        return [est(T.elbo(model, guide))]
    if name in ("iwelbo5", "iwelbo50"):
        return [est(T.iwelbo(model, guide, int(name.removeprefix("iwelbo"))))]
    if name == "vimco5":
        return [est(T.vimco(model, guide, 5))]
    if name == "dreg5":
        return [est(T.iwelbo(model, guide, 5, gradient="dreg"))]
    if name == "rws5":  # wake-p moves the decoder only, wake-q the encoder only
        return [est(T.wake_p(model, guide, 5), (0,)), est(T.wake_q(model, guide, 5), (1,))]
    raise ValueError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")


def check_images(x: Any, params: Params, what: str = "images") -> jax.Array:
    """``x`` as a float32 array ``(n, D)`` of binary pixels matching the parameters, or a clear error."""
    pixels = params["encoder"]["l1"]["w"].shape[0]
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != pixels:
        raise ValueError(
            f"{what} must have shape (n, {pixels}) (flattened images matching the encoder's "
            f"{pixels} inputs), got {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{what}: no images")
    x = x.astype(jnp.float32)
    if not bool(jnp.all((x == 0) | (x == 1))):
        raise ValueError(f"{what} must be binary (0/1 pixels): binarize first, e.g. load_digits()")
    return x


@functools.cache
def make_update(
    name: str, learning_rate: float = LEARNING_RATE, batch_size: int = BATCH
) -> tuple[optax.GradientTransformation, Callable[..., tuple[Params, Any, jax.Array]]]:
    """Adam and the jitted training step ``(params, opt_state, key, data) -> (params, opt_state, bound)``.

    The step draws a minibatch of ``batch_size`` images without replacement,
    estimates the gradient of objective ``name`` (averaged over the minibatch,
    each image with its own particles) and takes one Adam step uphill. ``bound``
    is the objective's estimate on the minibatch (for ``rws5``, wake-p's
    IWELBO(5)). Cached, so repeated training runs reuse the compiled step.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
    optimizer = optax.adam(learning_rate)
    estimators = _estimators(name)

    @jax.jit
    def update(params: Params, opt_state: Any, key: jax.Array, data: jax.Array) -> Any:
        k_batch, k_est = jax.random.split(key)
        x = data[jax.random.choice(k_batch, data.shape[0], (batch_size,), replace=False)]
        args = ((params["decoder"],), (x, params["encoder"]), {"x": x})
        grads: Params = {}
        values = []
        for estimator in estimators:
            value, grad = estimator.value_and_grad(k_est, *args)  # one key: shared particles
            for argnum, g in zip(estimator.argnums, grad):
                if argnum == 0:
                    grads["decoder"] = g[0]  # model_args = (decoder,)
                else:
                    grads["encoder"] = g[1]  # guide_args = (x, encoder); x's gradient unused
            values.append(value)
        updates, opt_state = optimizer.update(jax.tree.map(jnp.negative, grads), opt_state, params)
        return optax.apply_updates(params, updates), opt_state, values[0]

    return optimizer, update


@dataclasses.dataclass
class TrainResult:
    """Trained parameters, the per-step minibatch bound, and timings (seconds)."""

    params: Params
    bounds: np.ndarray
    wall_s: float
    compile_s: float


def train(
    name: str,
    params: Params,
    data: jax.Array,
    steps: int,
    key: jax.Array,
    batch_size: int = BATCH,
    learning_rate: float = LEARNING_RATE,
    progress: bool = True,
) -> TrainResult:
    """Train ``params`` on ``data`` with objective ``name`` for ``steps`` Adam steps.

    ``wall_s`` is the whole loop's wall time, the first step included
    (``compile_s``: compilation, unless this step was compiled by an earlier
    call). With ``progress`` a tqdm bar shows the running bound.
    """
    from tqdm import tqdm

    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
    data = check_images(data, params, "training images")
    if batch_size > data.shape[0]:
        raise ValueError(f"batch_size {batch_size} exceeds the {data.shape[0]} training images")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    optimizer, update = make_update(name, float(learning_rate), int(batch_size))
    opt_state = optimizer.init(params)
    keys = jax.random.split(key, steps)
    bounds = []
    start = time.perf_counter()
    params, opt_state, value = update(params, opt_state, keys[0], data)
    bounds.append(value)
    jax.block_until_ready(value)
    compile_s = time.perf_counter() - start
    every = max(1, steps // 100)
    with tqdm(total=steps, desc=f"{name:>8s}", disable=not progress, mininterval=0.5) as bar:
        bar.update(1)
        for i in range(1, steps):
            params, opt_state, value = update(params, opt_state, keys[i], data)
            bounds.append(value)
            if (i + 1) % every == 0:
                bar.set_postfix(bound=f"{float(np.mean(np.asarray(bounds[-every:]))):.2f}")
                bar.update(i + 1 - bar.n)
        bar.update(steps - bar.n)
    bounds_np = np.asarray(jax.block_until_ready(jnp.stack(bounds)))
    return TrainResult(params, bounds_np, time.perf_counter() - start, compile_s)


# -- evaluation ------------------------------------------------------------------
_EVAL_CACHE: dict[int, Callable[..., jax.Array]] = {}


def _per_image_bound(particles: int) -> Callable[..., jax.Array]:
    """Jitted ``(params, x, key) -> IWELBO(particles)`` of each image of ``x`` (one value each)."""
    if particles not in _EVAL_CACHE:
        estimator = T.iwelbo(model, guide, particles).estimator(jit=False)

        @jax.jit
        def per_image(params: Params, x: jax.Array, key: jax.Array) -> jax.Array:
            keys = jax.random.split(key, x.shape[0])

            def one(pair: tuple[jax.Array, jax.Array]) -> jax.Array:
                xi, ki = pair
                return estimator.estimate(ki, (params["decoder"],), (xi, params["encoder"]), {"x": xi})

            # lax.map in chunks bounds memory at chunk × particles decoder passes.
            chunk = max(1, min(x.shape[0], 32_000 // particles))
            return jax.lax.map(one, (x, keys), batch_size=chunk)

        _EVAL_CACHE[particles] = per_image
    return _EVAL_CACHE[particles]


def log_likelihood_per_image(
    params: Params, x: jax.Array, key: jax.Array, particles: int = EVAL_PARTICLES
) -> jax.Array:
    """IWELBO(``particles``) estimate of ``log p(x_i)`` for each image (nats)."""
    if not isinstance(particles, int) or particles < 1:
        raise ValueError(f"particles must be a positive int, got {particles!r}")
    x = check_images(x, params)
    return _per_image_bound(particles)(params, x, key)


def log_likelihood(params: Params, x: jax.Array, key: jax.Array, particles: int = EVAL_PARTICLES) -> float:
    """The mean over images of the IWELBO(``particles``) estimate of ``log p(x)`` (nats per image)."""
    return float(jnp.mean(log_likelihood_per_image(params, x, key, particles)))


def reconstruct(params: Params, x: jax.Array) -> jax.Array:
    """Pixel probabilities ``sigmoid(decoder(μ(x)))`` at the guide's mean, same shape as ``x``."""
    return _reconstruct(params, check_images(x, params))


@jax.jit
def _reconstruct(params: Params, x: jax.Array) -> jax.Array:
    loc, _ = encode(params["encoder"], x)
    return jax.nn.sigmoid(decode(params["decoder"], loc))


def sample_images(params: Params, key: jax.Array, n: int) -> jax.Array:
    """Pixel probabilities of ``n`` images decoded from prior draws ``z ~ Normal(0, I)``."""
    return _sample_images(params, key, n)


@functools.partial(jax.jit, static_argnums=2)
def _sample_images(params: Params, key: jax.Array, n: int) -> jax.Array:
    latent = params["decoder"]["l1"]["w"].shape[0]
    return jax.nn.sigmoid(decode(params["decoder"], jax.random.normal(key, (n, latent))))


# -- the full run ----------------------------------------------------------------
def run(
    objectives: list[str],
    steps: int,
    seed: int = 0,
    size: str = "digits",
    eval_particles: int = EVAL_PARTICLES,
    progress: bool = True,
) -> dict[str, Any]:
    """Train each objective from the same initialization and keys, evaluate it; the JSON record.

    Per objective: ``test_log_likelihood`` (IWELBO(``eval_particles``) averaged
    over the test images, with its standard error over images, and per image, in
    test-set order, for paired comparisons),
    ``train_log_likelihood`` (the same on the first ``n_test`` training images),
    ``test_elbo`` (IWELBO(1)), ``train_bound`` (the objective's minibatch estimate
    averaged over the last 10% of steps), ``wall_s`` (training, first step
    included), ``compile_s`` (the first step), ``eval_s`` (the test evaluation)
    and ``curve`` (the minibatch estimate averaged over windows of ``steps // 100``).
    """
    train_x, test_x = load_digits(size)
    k_init, k_train, k_eval = jax.random.split(jax.random.key(seed), 3)
    init = init_params(k_init, size)
    start_ll = log_likelihood(init, test_x, k_eval, eval_particles)
    results: dict[str, Any] = {}
    for name in objectives:
        fit = train(name, init, train_x, steps, k_train, progress=progress)
        t = time.perf_counter()
        per_image = np.asarray(log_likelihood_per_image(fit.params, test_x, k_eval, eval_particles))
        eval_s = time.perf_counter() - t
        train_ll = log_likelihood(fit.params, train_x[: test_x.shape[0]], k_eval, eval_particles)
        test_elbo = log_likelihood(fit.params, test_x, k_eval, 1)
        tail = max(1, steps // 10)
        window = max(1, steps // 100)
        curve = fit.bounds[: len(fit.bounds) // window * window].reshape(-1, window).mean(axis=1)
        results[name] = {
            "description": OBJECTIVES[name],
            "test_log_likelihood": float(per_image.mean()),
            "test_log_likelihood_se": float(per_image.std(ddof=1) / math.sqrt(per_image.size)),
            "test_log_likelihood_per_image": [round(float(v), 4) for v in per_image],
            "train_log_likelihood": train_ll,
            "test_elbo": test_elbo,
            "train_bound": float(np.mean(fit.bounds[-tail:])),
            "wall_s": fit.wall_s,
            "compile_s": fit.compile_s,
            "eval_s": eval_s,
            "curve": {
                "window": window,
                "step": (np.arange(len(curve)) * window).tolist(),
                "bound": curve.tolist(),
            },
        }
    return {
        "size": size,
        "sizes": dataclasses.asdict(SIZES[size]),
        "steps": steps,
        "batch": BATCH,
        "learning_rate": LEARNING_RATE,
        "eval_particles": eval_particles,
        "seed": seed,
        "n_train": int(train_x.shape[0]),
        "n_test": int(test_x.shape[0]),
        "init_test_log_likelihood": start_ll,
        "machine": {
            "device": str(jax.devices()[0]),
            "jax": jax.__version__,
            "cpu_count": os.cpu_count(),
            "os": platform.platform(),
        },
        "results": results,
    }


def print_table(record: dict[str, Any]) -> None:
    """The run's table: held-out and training log-likelihood, test ELBO, training bound, wall time."""
    print(
        f"VAE on digits ({record['size']}: {record['sizes']}), {record['steps']} Adam steps, "
        f"batch {record['batch']}, {record['n_train']} train / {record['n_test']} test images, "
        f"on {record['machine']['device']}"
    )
    print(
        f"log p(x) by IWELBO(K={record['eval_particles']}), nats per image (± standard error over "
        f"images); untrained {record['init_test_log_likelihood']:.2f}"
    )
    head = (
        f"{'objective':9s} {'test log p(x)':>15s} {'train log p(x)':>14s} {'test ELBO':>9s} "
        f"{'train bound':>11s} {'wall s':>7s} {'compile s':>9s}"
    )
    print(head)
    print("-" * len(head))
    for name, r in record["results"].items():
        test = f"{r['test_log_likelihood']:.2f} ± {r['test_log_likelihood_se']:.2f}"
        print(
            f"{name:9s} {test:>15s} {r['train_log_likelihood']:14.2f} {r['test_elbo']:9.2f} "
            f"{r['train_bound']:11.2f} {r['wall_s']:7.1f} {r['compile_s']:9.1f}"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Train the Table 1 VAE on digits with six objectives.")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--size", choices=sorted(SIZES), default="digits")
    parser.add_argument("--eval-particles", type=int, default=EVAL_PARTICLES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.objectives.split(",") if n.strip()]
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        parser.error(f"unknown objective(s) {', '.join(unknown)}; choose from {', '.join(OBJECTIVES)}")
    record = run(names, args.steps, args.seed, args.size, args.eval_particles, not args.no_progress)
    print_table(record)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return record


if __name__ == "__main__":
    main()
