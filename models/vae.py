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
  (:func:`T.iwelbo_dreg`): ``∇φ ≈ Σ_k w̃_k² ∂log w_k/∂z_k
  ∂z_k/∂φ``, model gradient as for IWELBO.
* ``rws5``: reweighted wake-sleep with K = 5 (:func:`T.wake_p` for the decoder,
  :func:`T.wake_q` for the encoder, one Adam step on both): ``∇θ ≈ Σ_k w̃_k ∇θ
  log p(x, z_k)`` and ``∇φ ≈ Σ_k w̃_k ∇φ log q(z_k|x)`` (the wake-phase update of
  ``q`` towards ``p(z|x)``, i.e. minimizing ``KL(p(z|x) ‖ q)``); both
  self-normalized, so consistent but biased for finite K. The two phases use
  the same key and hence the same K particles.

Training: Adam (learning rate 1e-3), minibatches of 100 images drawn without
replacement at every step, with :func:`ppl.transforms.fit` (one compiled step: the
estimator and Adam); ``rws5``, two estimators per step, runs its own jitted step
(:func:`make_rws_update`); 5000 steps by default (all six objectives with
their evaluation take about 3 minutes on a 2-core CPU for ``digits``; ``table1``
is about ten times slower per step, so give it fewer ``--steps``). Evaluation: the held-out log-likelihood
``log p(x)`` estimated by IWELBO with K = 1000 per test image, averaged over the
test set (nats per image; a lower bound in expectation, tight as K grows), plus
the test ELBO and the wall time of training.

Run ``python -m ppl.models.vae [--steps N] [--objectives elbo,iwelbo5,...]
[--size digits|table1] [--json PATH] [--seed S]``: prints a table (objective,
held-out log-likelihood, training bound, wall time) and writes JSON (``--json``, checked
before training starts).

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
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
from ppl.models._records import (
    check_results,
    machine_info,
    name_list,
    nonnegative_int,
    output_path,
    positive_int,
)

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
def model(params: Params, x: jax.Array | None = None) -> jax.Array:
    """One image: ``z ~ Normal(0, I)``, ``x ~ Bernoulli(logits=decoder(z))``.

    Reads ``params["decoder"]``; ``x`` (the objective's data argument, shared with the guide)
    is not used: the observed image comes in through the observations.
    """
    decoder = params["decoder"]
    latent = decoder["l1"]["w"].shape[0]
    z = ppl.sample("z", dist.Normal(jnp.zeros(latent), 1.0).to_event(1))
    return ppl.sample("x", dist.Bernoulli(logits=decode(decoder, z)).to_event(1))


@ppl.gen
def guide(params: Params, x: jax.Array) -> jax.Array:
    """``q(z | x) = Normal(μ(x), diag σ(x)²)`` for one image ``x``; reads ``params["encoder"]``."""
    loc, scale = encode(params["encoder"], x)
    return ppl.sample("z", dist.Normal(loc, scale).to_event(1))


# -- objectives ------------------------------------------------------------------
# Every objective is called as objective(params, {"x": x}, x) for one image x: params (decoder
# and encoder) shared, the observations and the guide's input mapped per image of a minibatch.
IN_AXES = (0, 0)

OBJECTIVES: dict[str, str] = {
    "elbo": "ELBO, reparameterized",
    "iwelbo5": "IWELBO(5), reparameterized",
    "iwelbo50": "IWELBO(50), reparameterized",
    "vimco5": "VIMCO(5), score function + leave-one-out",
    "dreg5": "IWELBO(5), DReG gradient",
    "rws5": "reweighted wake-sleep (5)",
}


def _check_name(name: str) -> None:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")


def objectives(name: str) -> list[T.Expectation]:
    """The library objectives of training objective ``name`` (two for ``rws5``: wake-p, wake-q)."""
    _check_name(name)
    if name == "elbo":
        return [T.elbo(model, guide)]
    if name in ("iwelbo5", "iwelbo50"):
        return [T.iwelbo(model, guide, int(name.removeprefix("iwelbo")))]
    if name == "vimco5":
        return [T.vimco(model, guide, 5)]
    if name == "dreg5":
        return [T.iwelbo_dreg(model, guide, 5)]
    return [T.wake_p(model, guide, 5), T.wake_q(model, guide, 5)]


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


def batch_key(key: jax.Array, step: int | jax.Array) -> jax.Array:
    """The minibatch key of step ``step`` of a run with key ``key``."""
    return jax.random.split(jax.random.fold_in(key, step))[0]


@functools.partial(jax.jit, static_argnums=3)
def minibatch(data: jax.Array, key: jax.Array, step: int | jax.Array, batch_size: int) -> jax.Array:
    """Step ``step``'s ``batch_size`` images of ``data``, drawn without replacement with
    ``batch_key(key, step)`` (one compiled call per step)."""
    return data[jax.random.choice(batch_key(key, step), data.shape[0], (batch_size,), replace=False)]


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


@functools.cache
def make_rws_update(
    learning_rate: float = LEARNING_RATE, batch_size: int = BATCH
) -> tuple[optax.GradientTransformation, Callable[..., tuple[Params, Any, jax.Array, jax.Array]]]:
    """Adam and the jitted ``rws5`` step ``(params, opt_state, key, data) -> (params, opt_state, bound, ok)``.

    Reweighted wake-sleep combines two estimators per step, wake-p (its decoder gradient) and
    wake-q (its encoder gradient), on the same minibatch with one shared key (so the same K
    particles), which :func:`ppl.transforms.fit` (one estimator per step) does not express; so
    this objective keeps its own jitted step. The minibatch is drawn with ``split(key)[0]``
    (``key = fold_in(run key, step)``, so the stream of :func:`batch_key`), the estimators
    use ``split(key)[1]``. ``bound`` is wake-p's IWELBO(5) on the minibatch; ``ok`` is false
    when the bound, a gradient or the updated parameters are not finite, and then the update
    is not applied (:func:`train` raises :class:`ppl.transforms.FitError`). The estimators'
    traced checks are off (``checks="off"``): inside this jit they would cost a host callback
    per step (twice the step time on CPU); ``ok`` and :func:`check_images` cover what they
    catch here. Cached, so repeated training runs reuse the compiled step.
    """
    optimizer = optax.adam(learning_rate)
    # jit=False: the estimators are traced inside the jitted update step.
    wake_p, wake_q = (o.estimator(in_axes=IN_AXES, jit=False, checks="off") for o in objectives("rws5"))

    @jax.jit
    def update(params: Params, opt_state: Any, key: jax.Array, data: jax.Array) -> Any:
        k_batch, k_est = jax.random.split(key)
        x = data[jax.random.choice(k_batch, data.shape[0], (batch_size,), replace=False)]
        value, grad_p, _ = wake_p.value_and_grad(k_est, params, {"x": x}, x)
        _, grad_q, _ = wake_q.value_and_grad(k_est, params, {"x": x}, x)  # the same particles
        grads = {"decoder": grad_p["decoder"], "encoder": grad_q["encoder"]}
        updates, new_opt_state = optimizer.update(jax.tree.map(jnp.negative, grads), opt_state, params)
        new_params = optax.apply_updates(params, updates)
        ok = jnp.isfinite(value) & _all_finite(grads) & _all_finite(new_params)

        def keep(new: Any, old: Any) -> Any:
            return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)

        return keep(new_params, params), keep(new_opt_state, opt_state), value, ok

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

    Every objective but ``rws5`` trains with :func:`ppl.transforms.fit` on its estimator
    (``in_axes`` over the minibatch), the minibatch of step ``t`` drawn with
    ``batch_key(key, t)``; ``rws5`` runs :func:`make_rws_update` in a loop. ``wall_s`` is the
    whole loop's wall time, the first step included (``compile_s``: the first step, tracing and
    compilation included). With ``progress`` a tqdm bar shows the running bound.
    """
    _check_name(name)
    data = check_images(data, params, "training images")
    if batch_size > data.shape[0]:
        raise ValueError(f"batch_size {batch_size} exceeds the {data.shape[0]} training images")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if name == "rws5":
        return _train_rws(params, data, steps, key, batch_size, learning_rate, progress)
    (objective,) = objectives(name)
    stamps: list[float] = []

    def batch(step: int) -> tuple[dict[str, jax.Array], jax.Array]:
        if step == 1 and len(stamps) == 1:  # step 0 is compiled and dispatched
            stamps.append(time.perf_counter())
        x = minibatch(data, key, step, batch_size)
        return {"x": x}, x

    start = time.perf_counter()
    stamps.append(start)
    result = T.fit(
        objective.estimator(in_axes=IN_AXES),
        params,
        optax.adam(learning_rate),
        steps=steps,
        key=key,
        data=batch,
        progress=progress,
        config={"app": "vae", "objective": name, "batch_size": batch_size, "learning_rate": learning_rate},
    )
    wall_s = time.perf_counter() - start
    compile_s = (stamps[1] if len(stamps) > 1 else time.perf_counter()) - start
    return TrainResult(result.params, result.values, wall_s, min(compile_s, wall_s))


def _train_rws(
    params: Params,
    data: jax.Array,
    steps: int,
    key: jax.Array,
    batch_size: int,
    learning_rate: float,
    progress: bool,
) -> TrainResult:
    """The ``rws5`` loop (see :func:`make_rws_update`); a failed step raises ``T.FitError``."""
    from tqdm import tqdm

    optimizer, update = make_rws_update(float(learning_rate), int(batch_size))
    opt_state = optimizer.init(params)
    keys = jax.vmap(lambda t: jax.random.fold_in(key, t))(jnp.arange(steps))  # as T.fit's keys
    bounds, oks = [], []
    checked = 0

    def check(upto: int) -> None:
        """Raise for the first failed step before ``upto`` (the steps since the last check)."""
        nonlocal checked
        if upto <= checked:
            return
        ok = np.asarray(jnp.stack(oks[checked:upto]))
        if not ok.all():
            step = checked + int(np.argmin(ok))
            values = np.asarray(jnp.stack(bounds[:step])) if step else np.zeros(0, np.float32)
            raise T.FitError(
                step, "rws5: the wake-p bound, a gradient or the update is not finite", params, values
            )
        checked = upto

    start = time.perf_counter()
    params, opt_state, value, ok = update(params, opt_state, keys[0], data)
    bounds.append(value)
    oks.append(ok)
    jax.block_until_ready(value)
    compile_s = time.perf_counter() - start
    every = max(1, steps // 100)
    with tqdm(total=steps, desc="rws5", disable=not progress, mininterval=0.5) as bar:
        bar.update(1)
        for i in range(1, steps):
            params, opt_state, value, ok = update(params, opt_state, keys[i], data)
            bounds.append(value)
            oks.append(ok)
            if (i + 1) % every == 0:
                check(i + 1)  # failed steps were not applied: params are the last finite ones
                bar.set_postfix(bound=f"{float(np.mean(np.asarray(bounds[-every:]))):.2f}")
                bar.update(i + 1 - bar.n)
        bar.update(steps - bar.n)
    check(steps)
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
                return estimator.estimate(ki, params, {"x": xi}, xi)

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
        "machine": machine_info(),
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
    parser.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS)
    parser.add_argument(
        "--objectives",
        type=name_list(OBJECTIVES, "objective"),
        default=list(OBJECTIVES),
        help=f"comma-separated, from {','.join(OBJECTIVES)} (default: all)",
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="digits")
    parser.add_argument("--eval-particles", type=positive_int, default=EVAL_PARTICLES)
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", type=output_path("--json"), default=None)
    args = parser.parse_args(argv)
    record = run(args.objectives, args.steps, args.seed, args.size, args.eval_particles, not args.no_progress)
    print_table(record)
    if args.json:
        T.write_json(record, args.json)
    check_results(record["results"], "vae")
    return record


if __name__ == "__main__":
    main()
