"""A sigmoid belief net VAE with 32 Bernoulli latents on binarized 8×8 digits.

Model (one stochastic layer, linear logits)::

    z ~ Bernoulli(logits = b)                      32 units
    x ~ Bernoulli(logits = W z + c)                64 pixels

Guide (amortized, factorized)::

    z ~ Bernoulli(logits = V x + a)

Data: scikit-learn's bundled 8×8 digits (1,797 images, no download), binarized
with ``pixel / 16 > 0.5`` and split 80/20 with ``random_state=0``.

Every latent is discrete, so no gradient is pathwise: the guide gradient comes
from a score-function or measure-valued estimator. The module builds one
estimator per row of the discrete-latent benchmark
(``benchmarks/discrete_latents.py``), all through ``ppl.transforms`` strategies:

* ``reinforce`` / ``reinforce+running-average`` / ``reinforce+leave-one-out``
  (``particles=K``) / ``mvd``: the program :data:`elbo`, where ``z`` is one site
  with batch shape ``(32,)``. Every cost of this program comes after ``z`` and
  depends on it, so causal Rao-Blackwellization cannot drop anything here.
* ``rb`` / ``rb+leave-one-out``: the program :data:`elbo_per_unit`, the same
  ELBO with the 32 units inside a ``ppl.vmap`` plate, each adding its own
  ``log p(z_j) − log q(z_j | x)`` with ``T.add_cost`` inside its copy, and the
  likelihood added after the plate. Causal Rao-Blackwellization then gives unit
  ``j`` the score weight ``log p(z_j) − log q(z_j | x) + log p(x | z)``: the 31
  other units' prior and entropy terms (independent of ``z_j`` given ``x``) drop
  out. This is the dependency structure NumPyro's ``TraceGraph_ELBO`` finds by
  provenance tracking when the units live in a plate.
* ``vimco``: ``T.vimco(model, guide, K)``, the importance-weighted bound with
  VIMCO's leave-one-out baselines.
* ``reinforce-standard``: plain ``reinforce`` on :data:`elbo_standard`, which keeps
  the zero-mean direct gradient of ``−log q`` that :data:`elbo` stops (for the
  benchmark's variance table).

Strategies for the plate's site are given as the estimator's ``default``: a
per-address entry ``{"units/z": ...}`` is rejected as unknown, since sites
inside a ``ppl.vmap`` block are looked up by their address within the block.

Batches run through the estimators' ``in_axes`` (one datum per vmapped copy,
each with its own key) with ``reduce="sum"``, so gradients are on the scale of
NumPyro's loss for the same batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import ppl
from ppl import transforms as T

LATENTS = 32
PIXELS = 64
Params = dict[str, jax.Array]

# -- data ---------------------------------------------------------------------


def load_digits(test_size: float = 0.2, random_state: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Binarized digits ``(train, test)``, float32 arrays of shape ``(n, 64)`` with 0/1 entries."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    images = sk_load_digits().data
    binary = (images / 16.0 > 0.5).astype(np.float32)
    train, test = train_test_split(binary, test_size=test_size, random_state=random_state)
    return train, test


# -- parameters ----------------------------------------------------------------


def init_params(
    key: jax.Array, train: np.ndarray | None = None, latents: int = LATENTS, pixels: int = PIXELS
) -> Params:
    """Small random weights; the decoder bias starts at the logit of the mean pixel when ``train`` is given.

    No logit starts at exactly 0: NumPyro's ``Bernoulli(logits=0.0).log_prob(v)`` has gradient
    ``v`` instead of ``v − 1/2`` there (the kink of its ``clip``-based formula), which would bias
    every score-function estimator at that point.
    """
    k1, k2, k3 = jax.random.split(key, 3)
    if train is None:
        decoder_bias = jnp.zeros(pixels)
    else:
        mean = jnp.clip(jnp.mean(jnp.asarray(train), axis=0), 0.01, 0.99)
        decoder_bias = jnp.log(mean) - jnp.log1p(-mean)
    return {
        "prior_logits": 0.01 * jax.random.normal(k3, (latents,)),
        "decoder_w": 0.01 * jax.random.normal(k1, (latents, pixels)),
        "decoder_b": decoder_bias,
        "encoder_w": 0.01 * jax.random.normal(k2, (pixels, latents)),
        "encoder_b": jnp.zeros(latents),
    }


def check_params(params: Params) -> tuple[int, int]:
    """``(latents, pixels)`` of a parameter dict; a clear error for a malformed one."""
    expected = {"prior_logits", "decoder_w", "decoder_b", "encoder_w", "encoder_b"}
    if not isinstance(params, dict) or set(params) != expected:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"sbn parameters must be a dict with keys {sorted(expected)}, got {got}")
    latents, pixels = jnp.shape(params["decoder_w"])
    shapes = {
        "prior_logits": (latents,),
        "decoder_b": (pixels,),
        "encoder_w": (pixels, latents),
        "encoder_b": (latents,),
    }
    for name, shape in shapes.items():
        if jnp.shape(params[name]) != shape:
            raise ValueError(
                f"sbn parameter '{name}' has shape {jnp.shape(params[name])}, expected {shape} "
                f"for {latents} latents and {pixels} pixels (from decoder_w)"
            )
    return latents, pixels


def decoder_logits(params: Params, z: jax.Array) -> jax.Array:
    return z @ params["decoder_w"] + params["decoder_b"]


def encoder_logits(params: Params, x: jax.Array) -> jax.Array:
    return x @ params["encoder_w"] + params["encoder_b"]


# -- model and guide ------------------------------------------------------------


@ppl.gen
def model(params: Params, x: jax.Array | None = None) -> jax.Array:
    """``z ~ Bernoulli(σ(b))`` (one site, batch shape ``(latents,)``), ``x ~ Bernoulli(σ(W z + c))``.

    ``x`` (the data argument the objective library passes to model and guide alike) is not
    used: the observed image comes in through the observations.
    """
    z = ppl.sample("z", dist.Bernoulli(logits=params["prior_logits"]))
    return ppl.sample("x", dist.Bernoulli(logits=decoder_logits(params, z)))


@ppl.gen
def guide(params: Params, x: jax.Array) -> jax.Array:
    """``z ~ Bernoulli(σ(V x + a))`` for one image ``x``."""
    return ppl.sample("z", dist.Bernoulli(logits=encoder_logits(params, x)))


@T.expectation
def elbo(params: Params, x: jax.Array) -> jax.Array:
    """``log p(x, z) − log q(z | x)`` for one image, ``z ~ q``.

    ``log q`` enters the value with its direct parameter gradient stopped: that
    gradient, ``−∇φ log q(z | x)``, has expectation zero, so dropping it keeps
    every strategy unbiased and removes its variance (for ``reinforce`` the guide
    gradient becomes ``(log p − log q) ∇φ log q``, as in NumPyro's
    ``TraceGraph_ELBO``). ``T.elbo_stl(model, guide)`` computes the same
    estimator.
    """
    tr = T.sim(guide, params, x)
    return T.density(model, {"z": tr.choices["z"], "x": x}, params) - jax.lax.stop_gradient(tr.score)


@T.expectation
def elbo_standard(params: Params, x: jax.Array) -> jax.Array:
    """:data:`elbo` with the direct ``−∇φ log q`` term kept (``T.elbo``'s standard form)."""
    tr = T.sim(guide, params, x)
    return T.density(model, {"z": tr.choices["z"], "x": x}, params) - tr.score


@ppl.gen
def _unit(prior_logit: jax.Array, guide_logit: jax.Array) -> jax.Array:
    # One latent unit: its guide draw and, right after it, its own prior and entropy terms.
    z = ppl.sample("z", dist.Bernoulli(logits=guide_logit))
    log_q = jax.lax.stop_gradient(dist.Bernoulli(logits=guide_logit).log_prob(z))
    T.add_cost(dist.Bernoulli(logits=prior_logit).log_prob(z) - log_q)
    return z


@T.expectation
def elbo_per_unit(params: Params, x: jax.Array) -> jax.Array:
    """The same ELBO as :data:`elbo`, written so causal Rao-Blackwellization can act.

    The units are a ``ppl.vmap`` plate at address ``units``: unit ``j``'s score
    term multiplies its own ``log p(z_j) − log q(z_j | x)`` and the likelihood
    ``log p(x | z)`` added after the plate, not the other units' terms.
    """
    z = ppl.sample("units", ppl.vmap(_unit), params["prior_logits"], encoder_logits(params, x))
    T.add_cost(jnp.sum(dist.Bernoulli(logits=decoder_logits(params, z)).log_prob(x)))
    return jnp.zeros(())


# -- estimators -----------------------------------------------------------------

#: The estimators of the benchmark, by name (see the module docstring).
ESTIMATORS = (
    "reinforce",
    "reinforce+running-average",
    "reinforce+leave-one-out",
    "vimco",
    "mvd",
    "rb",
    "rb+leave-one-out",
    "reinforce-standard",
)


class Trainer:
    """One estimator of the ELBO (or, for ``vimco``, of IWELBO(K)) gradient on a batch.

    ``grad(key, params, x, state) -> (value, grad, state)`` with ``x`` a batch
    ``(n, pixels)``: ``value`` is the sum over the batch of the objective's
    Monte Carlo estimate, ``grad`` its gradient estimate w.r.t. ``params``
    (ascent direction), ``state`` the estimator state (running averages).
    ``init(params, x)`` makes that state.
    """

    def __init__(self, name: str, particles: int = 4, decay: float = 0.9):
        if name not in ESTIMATORS:
            raise ValueError(f"unknown sbn estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
        if name in ("reinforce+leave-one-out", "vimco", "rb+leave-one-out") and particles < 2:
            raise ValueError(f"{name} needs particles >= 2, got {particles}")
        self.name = name
        self.particles = particles if name in ("reinforce+leave-one-out", "vimco", "rb+leave-one-out") else 1
        self.stateful = name == "reinforce+running-average"
        batched = (0,)  # the objectives' one data argument, x: one image per vmapped copy
        if name == "reinforce":
            est = elbo.estimator({"z": T.reinforce()}, in_axes=batched, reduce="sum")
        elif name == "reinforce+running-average":
            est = elbo.estimator({"z": T.reinforce(T.running_average(decay))}, in_axes=batched, reduce="sum")
        elif name == "reinforce+leave-one-out":
            est = elbo.estimator(
                {"z": T.reinforce(T.leave_one_out())}, particles=particles, in_axes=batched, reduce="sum"
            )
        elif name == "reinforce-standard":
            est = elbo_standard.estimator({"z": T.reinforce()}, in_axes=batched, reduce="sum")
        elif name == "mvd":
            est = elbo.estimator({"z": T.mvd()}, in_axes=batched, reduce="sum")
        elif name == "rb":
            # The plate's only site takes the default strategy (see the module docstring).
            est = elbo_per_unit.estimator(default=T.reinforce(), in_axes=batched, reduce="sum")
        elif name == "rb+leave-one-out":
            est = elbo_per_unit.estimator(
                default=T.reinforce(T.leave_one_out()), particles=particles, in_axes=batched, reduce="sum"
            )
        else:
            # T.vimco is called as (params, observations, x): both data arguments batched. Its
            # guide samples are drawn with stopped parameters, so the site's strategy adds no
            # gradient; naming one keeps auto() from warning about a missing baseline.
            est = T.vimco(model, guide, particles).estimator(
                default=T.reinforce(), in_axes=({"x": 0}, 0), reduce="sum"
            )
        self.estimator = est

    def _data(self, x: jax.Array) -> tuple:
        return ({"x": x}, x) if self.name == "vimco" else (x,)

    def init(self, params: Params, x: jax.Array) -> Any:
        """The estimator state (the running average), or None for the stateless estimators."""
        return self.estimator.init(params, *self._data(x)) if self.stateful else None

    def grad(
        self, key: jax.Array, params: Params, x: jax.Array, state: Any = None
    ) -> tuple[Any, Params, Any]:
        value, grad, new_state = self.estimator.value_and_grad(key, params, *self._data(x), state=state)
        return value, grad, new_state if self.stateful else state

    def cost_note(self) -> str:
        """How many model evaluations one datum costs with this estimator."""
        if self.name == "mvd":
            return f"1 + 2×{LATENTS} continuations per datum (one pair per unit)"
        if self.particles > 1:
            return f"{self.particles} particles per datum"
        return "1 sample per datum"


# -- the NumPyro peer -----------------------------------------------------------


def numpyro_model(x: jax.Array, params: Params) -> None:
    """The same model in NumPyro: data plate (dim −2), latent-unit plate (dim −1).

    With the units in a plate, ``TraceGraph_ELBO``'s provenance tracking gives
    each unit the downstream cost ``log p(z_j) − log q(z_j | x) + log p(x | z)``,
    the same Rao-Blackwellization as :data:`elbo_per_unit`. Parameters are
    ``numpyro.param`` sites initialized from ``params``.
    """
    import numpyro

    p = {name: numpyro.param(name, value) for name, value in params.items() if not name.startswith("encoder")}
    n, latents = x.shape[0], p["prior_logits"].shape[0]
    with numpyro.plate("data", n, dim=-2):
        with numpyro.plate("units", latents, dim=-1):
            z = numpyro.sample("z", dist.Bernoulli(logits=p["prior_logits"]))
        logits = z @ p["decoder_w"] + p["decoder_b"]
        numpyro.sample("x", dist.Bernoulli(logits=logits[:, None, :]).to_event(1), obs=x[:, None, :])


def numpyro_guide(x: jax.Array, params: Params) -> None:
    """The guide in NumPyro, with the same plates as :func:`numpyro_model`."""
    import numpyro

    p = {name: numpyro.param(name, value) for name, value in params.items() if name.startswith("encoder")}
    n, latents = x.shape[0], p["encoder_b"].shape[0]
    with numpyro.plate("data", n, dim=-2), numpyro.plate("units", latents, dim=-1):
        numpyro.sample("z", dist.Bernoulli(logits=x @ p["encoder_w"] + p["encoder_b"]))


def numpyro_grad(
    key: jax.Array, params: Params, x: jax.Array, particles: int = 1
) -> tuple[jax.Array, Params]:
    """``(ELBO estimate, gradient)`` summed over the batch by NumPyro's ``TraceGraph_ELBO``."""
    from numpyro.infer import TraceGraph_ELBO

    loss = TraceGraph_ELBO(num_particles=particles)

    def negative(p: Params) -> jax.Array:
        return loss.loss(key, p, numpyro_model, numpyro_guide, x, p)

    value, grad = jax.value_and_grad(negative)(params)
    return -value, jax.tree.map(jnp.negative, grad)


# -- evaluation -----------------------------------------------------------------


def log_weights(params: Params, x: jax.Array, z: jax.Array) -> jax.Array:
    """``log p(x, z) − log q(z | x)`` for one image ``x`` and latents ``z`` (leading axes batched)."""
    prior = jnp.sum(dist.Bernoulli(logits=params["prior_logits"]).log_prob(z), -1)
    likelihood = jnp.sum(dist.Bernoulli(logits=decoder_logits(params, z)).log_prob(x), -1)
    proposal = jnp.sum(dist.Bernoulli(logits=encoder_logits(params, x)).log_prob(z), -1)
    return prior + likelihood - proposal


def iwelbo(key: jax.Array, params: Params, data: jax.Array, particles: int = 1000) -> jax.Array:
    """Mean over ``data`` of the IWELBO(K) estimate ``log (1/K) Σ_k w_k``, ``z_k ~ q(z | x)``."""
    latents, _ = check_params(params)
    keys = jax.random.split(key, data.shape[0])

    def one(k: jax.Array, x: jax.Array) -> jax.Array:
        probs = jax.nn.sigmoid(encoder_logits(params, x))
        z = jax.random.bernoulli(k, probs, (particles, latents)).astype(x.dtype)
        return jax.nn.logsumexp(log_weights(params, x, z)) - math.log(particles)

    return jnp.mean(jax.lax.map(lambda a: one(*a), (keys, data)))


def exact_log_marginal(params: Params, x: jax.Array) -> jax.Array:
    """``log p(x)`` by enumerating all ``2**latents`` states (tiny models only)."""
    latents, _ = check_params(params)
    if latents > 16:
        raise ValueError(f"exact_log_marginal enumerates 2**latents states; {latents} latents is too many")
    states = jnp.array(np.array(np.unravel_index(np.arange(2**latents), (2,) * latents)).T, x.dtype)
    prior = jnp.sum(dist.Bernoulli(logits=params["prior_logits"]).log_prob(states), -1)
    likelihood = jnp.sum(dist.Bernoulli(logits=decoder_logits(params, states)).log_prob(x), -1)
    return jax.nn.logsumexp(prior + likelihood)


def exact_elbo(params: Params, x: jax.Array) -> jax.Array:
    """The ELBO of one image by enumerating all ``2**latents`` states (tiny models only)."""
    latents, _ = check_params(params)
    if latents > 16:
        raise ValueError(f"exact_elbo enumerates 2**latents states; {latents} latents is too many")
    states = jnp.array(np.array(np.unravel_index(np.arange(2**latents), (2,) * latents)).T, x.dtype)
    proposal = jnp.sum(dist.Bernoulli(logits=encoder_logits(params, x)).log_prob(states), -1)
    return jnp.sum(jnp.exp(proposal) * log_weights(params, x, states))


def make_step(trainer: Trainer, optimizer: Any) -> Callable[..., Any]:
    """A jittable Adam-style step: ``step(carry, key, x) -> carry`` with ``carry = (params, opt, state)``."""
    import optax

    def step(carry: tuple, key: jax.Array, x: jax.Array) -> tuple:
        params, opt_state, est_state = carry
        _, grad, est_state = trainer.grad(key, params, x, est_state)
        updates, opt_state = optimizer.update(jax.tree.map(jnp.negative, grad), opt_state, params)
        return optax.apply_updates(params, updates), opt_state, est_state

    return step
