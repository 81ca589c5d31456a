r"""PartSLIP++'s EM as a probabilistic program: 3D part instances from noisy 2D masks.

Parameters: superpoint logits ``ℓ ∈ R^{S×K}``, ``p_{s,k} = softmax(ℓ_s)_k`` the
probability that superpoint ``s`` belongs to 3D instance ``k``. Latent per view
``v``: a one-to-one matching ``π_v`` of its 2D labels ``m`` to 3D instances.
Observations, in count form (:mod:`.counts`)::

    C[v, m, s] ~ Binomial(N[v, s], p_{s, π_v(m)})

which is exactly the original's per-pixel one-vs-all cross-entropy
``c_v(m, k) = −Σ_s [C log p_{s,k} + (N − C) log(1 − p_{s,k})]`` (up to constants
in ``m``). ``log(1 − p_{s,k})`` is computed as ``logsumexp_{j≠k} ℓ_j − logsumexp_j ℓ_j``
through the Binomial's logits, never as ``log(1 − p + eps)``.

- E-step: the posterior over ``π_v`` given ``ℓ``: hard (the most likely matching,
  Hungarian, as in the paper), or soft marginals ``P[m, k] = P(π_v(m) = k)``
  (exact by enumerating injections for small label sets, Sinkhorn otherwise).
- M-step: the expected complete-data log-likelihood ``Σ_{m,k} P[m,k] log
  p(C_{v,m} | k, ℓ)`` is an objective program (:func:`expected_log_likelihood`)
  whose single site picks a (label, instance) pair with probability ``P[m,k]/ΣP``;
  ``T.enum()`` makes its value and gradient exact. Adam steps on it, as in the paper
  (10 epochs × 10 shuffled views, one step each), or to convergence.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import scipy.optimize

import ppl
from ppl import transforms as T

#: The paper's saturated initialization value.
SATURATION = 28.0
#: Instance slots (padded). The paper caps K at 28; the generated benchmark's heuristic
#: over-segments more often (up to ~40 initial instances), so slots are padded to 64.
MAX_INSTANCES = 64
#: A logit for unused instance slots: finite (no NaN in gradients), never chosen.
UNUSED = -1e4


def binomial_logits(logits: jax.Array) -> jax.Array:
    """``log p − log(1 − p)`` per superpoint and instance, ``log(1 − p_k) = logsumexp_{j≠k} ℓ_j − lse``.

    In O(K) per superpoint: for every instance but the most likely one ``p ≤ 1/2``,
    so ``log1p(−p)`` is exact; for the most likely one (``p`` may round to 1 at the
    saturated start) the others' logsumexp is taken directly.
    """
    lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    log_p = logits - lse
    top = jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1], dtype=bool)
    others = jax.nn.logsumexp(jnp.where(top, -jnp.inf, logits), axis=-1, keepdims=True) - lse
    safe = jnp.where(top, -1.0, log_p)  # keeps the unselected branch's gradient finite
    return log_p - jnp.where(top, others, jnp.log1p(-jnp.exp(safe)))


@ppl.gen
def label_counts(logits: jax.Array, instance: jax.Array, totals: jax.Array) -> None:
    """One 2D label matched to 3D instance ``instance``: its counts on every superpoint."""
    probs_logit = binomial_logits(logits)[:, instance]
    ppl.sample("counts", dist.Binomial(totals, logits=probs_logit).to_event(1))


@ppl.gen
def view_model(logits: jax.Array, matching: jax.Array, totals: jax.Array) -> None:
    """One view: every label ``m`` emits its counts from instance ``matching[m]``."""
    ppl.sample("labels", ppl.vmap(label_counts, in_axes=(None, 0, None)), logits, matching, totals)


def cost_matrix(logits: jax.Array, counts: jax.Array, totals: jax.Array) -> jax.Array:
    """``c(m, k) = −Σ_s log Binomial(C[m, s] | N[s], p_{s,k})`` for every label and instance, ``(M, K)``."""
    bl = binomial_logits(logits)
    log_comb = jax.scipy.special.gammaln(totals + 1) - jax.scipy.special.gammaln(counts + 1)
    log_comb = log_comb - jax.scipy.special.gammaln(totals - counts + 1)
    loglik = counts @ bl - totals @ jax.nn.softplus(bl) + jnp.sum(log_comb, -1, keepdims=True)
    return -loglik


@T.expectation
def expected_log_likelihood(logits: jax.Array, counts: jax.Array, totals: jax.Array, marginals: jax.Array):
    """``Σ_{m,k} P[m,k] log p(C[m] | instance k, ℓ)`` for one view (``marginals`` = P, fixed).

    The site ``match`` draws one (label, instance) pair with probability
    ``P[m, k] / ΣP``; the return value is ``ΣP · log p(C[m] | k)``, so the
    expectation is the E-step's expected complete-data log-likelihood. Estimate
    it with ``strategies={"match": T.enum()}`` for the exact gradient. The
    log-likelihoods of all pairs are :func:`label_counts`' densities, evaluated at
    once in matrix form (:func:`cost_matrix`, equal to the program's density), so
    enumerating the pairs costs one gather each.
    """
    weight = jnp.maximum(jnp.sum(marginals), 1e-12)  # every label may be an outlier
    loglik = -cost_matrix(logits, counts, totals)
    pair = ppl.sample("match", dist.Categorical(probs=jnp.ravel(marginals) / weight))
    return weight * jnp.ravel(loglik)[pair]


# -- E-steps ---------------------------------------------------------------------------------


def _masked_cost(cost: jax.Array, label_valid: jax.Array, slot_valid: jax.Array) -> jax.Array:
    big = 1e9
    return jnp.where(label_valid[:, None] & slot_valid[None, :], cost, big)


def _assignment(cost: np.ndarray) -> np.ndarray:
    rows, cols = scipy.optimize.linear_sum_assignment(np.asarray(cost, np.float64))
    out = np.zeros(cost.shape, np.float32)
    out[rows, cols] = 1.0
    return out


def hard_marginals(cost: jax.Array, label_valid: jax.Array, slot_valid: jax.Array) -> jax.Array:
    """The most likely matching (Hungarian; a host call, jit/vmap-safe) as a 0/1 ``(M, K)`` matrix."""
    masked = _masked_cost(cost, label_valid, slot_valid)
    shape = jax.ShapeDtypeStruct(cost.shape, jnp.float32)
    onehot = jax.pure_callback(_assignment, shape, masked, vmap_method="sequential")
    return onehot * (label_valid[:, None] & slot_valid[None, :])


def sinkhorn_marginals(
    cost: jax.Array, label_valid: jax.Array, slot_valid: jax.Array, temperature: float = 1.0, iters: int = 200
) -> jax.Array:
    """Approximate posterior marginals of a uniform-prior matching: Sinkhorn on ``exp(−c/τ)``.

    Labels must each take one instance (rows sum to 1), instances take at most
    one label (a slack row absorbs the unused instances). This is the
    entropy-regularized plan, an approximation of the exact marginals
    (:func:`exact_marginals`); ``τ = 1`` is the posterior's own temperature.
    """
    log_kernel = jnp.where(label_valid[:, None] & slot_valid[None, :], -cost / temperature, -jnp.inf)
    n_labels = jnp.sum(label_valid)
    n_slots = jnp.sum(slot_valid)
    slack = jnp.where(slot_valid, 0.0, -jnp.inf)[None, :]  # one slack row with mass K − M
    log_k = jnp.concatenate([log_kernel, slack], 0)
    row_mass = jnp.concatenate(
        [jnp.where(label_valid, 0.0, -jnp.inf), jnp.log(jnp.maximum(n_slots - n_labels, 1e-6))[None]]
    )
    col_mass = jnp.where(slot_valid, 0.0, -jnp.inf)

    def body(_: int, duals: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        f, g = duals
        f = row_mass - jax.nn.logsumexp(log_k + g[None, :], axis=1)
        f = jnp.where(jnp.isfinite(row_mass), f, -jnp.inf)
        g = col_mass - jax.nn.logsumexp(log_k + f[:, None], axis=0)
        g = jnp.where(jnp.isfinite(col_mass), g, -jnp.inf)
        return f, g

    f0 = jnp.zeros(log_k.shape[0])
    g0 = jnp.zeros(log_k.shape[1])
    f, g = jax.lax.fori_loop(0, iters, body, (f0, g0))
    plan = jnp.exp(log_k + f[:, None] + g[None, :])[:-1]
    return jnp.where(label_valid[:, None] & slot_valid[None, :], plan, 0.0)


def exact_marginals(cost: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Exact ``P(π(m) = k)`` under ``p(π) ∝ exp(−Σ_m c(m, π(m))/τ)`` over injections (small cases)."""
    num_labels, num_slots = cost.shape
    out = np.zeros(cost.shape)
    log_ws, perms = [], list(itertools.permutations(range(num_slots), num_labels))
    for perm in perms:
        log_ws.append(-sum(cost[m, k] for m, k in enumerate(perm)) / temperature)
    log_ws = np.asarray(log_ws)
    ws = np.exp(log_ws - log_ws.max())
    ws /= ws.sum()
    for w, perm in zip(ws, perms):
        out[np.arange(num_labels), perm] += w
    return out


def log_marginal_likelihood(cost: np.ndarray) -> float:
    """``log Σ_π exp(−Σ_m c(m, π(m)))`` minus ``log #π`` (uniform prior), by enumeration."""
    num_labels, num_slots = cost.shape
    perms = list(itertools.permutations(range(num_slots), num_labels))
    terms = np.array([-sum(cost[m, k] for m, k in enumerate(p)) for p in perms])
    top = terms.max()
    return float(top + math.log(np.exp(terms - top).sum()) - math.log(len(perms)))


# -- initializations and the EM loop ---------------------------------------------------------


def initial_logits(
    assignment: np.ndarray, extra: int = 6, saturation: float = SATURATION
) -> tuple[np.ndarray, np.ndarray]:
    """The paper's start: one-hot logits of value ``saturation`` on ``assignment`` (``(S,)``,
    −1 = unassigned, which goes to a "rest" slot), ``K = n + 1 + extra`` slots (capped at
    :data:`MAX_INSTANCES`; unused slots get a fixed, never-chosen logit). Returns
    ``(logits (S, MAX_INSTANCES), slot_valid (MAX_INSTANCES,))``."""
    num = int(assignment.max()) + 1 if (assignment >= 0).any() else 0
    if num + 1 > MAX_INSTANCES:
        raise ValueError(f"{num} initial instances do not fit {MAX_INSTANCES} slots")
    used = min(num + 1 + extra, MAX_INSTANCES)
    slot = np.where(assignment >= 0, assignment, num)
    logits = np.zeros((assignment.shape[0], MAX_INSTANCES), np.float32)
    logits[np.arange(assignment.shape[0]), slot] = saturation
    slot_valid = np.arange(MAX_INSTANCES) < used
    logits[:, ~slot_valid] = UNUSED
    return logits, slot_valid


def random_logits(
    key: jax.Array, num_superpoints: int, used: int, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Random start: logits ``~ N(0, scale²)`` over ``used`` slots."""
    slot_valid = np.arange(MAX_INSTANCES) < used
    logits = np.array(scale * jax.random.normal(key, (num_superpoints, MAX_INSTANCES)), np.float32)
    logits[:, ~slot_valid] = UNUSED
    return logits, slot_valid


@dataclasses.dataclass(frozen=True)
class EMConfig:
    """``e_step``: "hard" (Hungarian) or "soft" (Sinkhorn marginals at ``temperature``);
    ``epochs`` passes over the views in shuffled order, ``m_steps`` Adam steps of rate
    ``learning_rate`` per view (the paper: 10 epochs, 1 step, rate 1). With
    ``outlier_rate`` ρ a label may also stay unmatched (a false positive or a split
    mask), its counts then ``Binomial(N, ρ)`` whatever the instances: it adds no
    M-step term. ``None`` is the paper's model: every label is matched."""

    e_step: str = "hard"
    epochs: int = 10
    m_steps: int = 1
    learning_rate: float = 1.0
    temperature: float = 1.0
    sinkhorn_iters: int = 100
    outlier_rate: float | None = None


_M_STEP = expected_log_likelihood.estimator(strategies={"match": T.enum()}, jit=False)


def e_step(
    cost: jax.Array,
    label_valid: jax.Array,
    slot_valid: jax.Array,
    config: EMConfig,
    counts: jax.Array | None = None,
    totals: jax.Array | None = None,
) -> jax.Array:
    """The E-step's marginals ``P[m, k]`` for one view, from its cost matrix.

    With ``config.outlier_rate``, ``counts``/``totals`` give each label's cost of
    staying unmatched (one private "null" column per label).
    """
    num_labels, num_slots = cost.shape
    if config.outlier_rate is not None:
        rho = config.outlier_rate
        null = -jnp.sum(dist.Binomial(totals, probs=rho).log_prob(counts), -1)
        null_block = jnp.where(jnp.eye(num_labels, dtype=bool), null[:, None], 1e9)
        cost = jnp.concatenate([cost, null_block], 1)
        slot_valid = jnp.concatenate([slot_valid, jnp.ones(num_labels, bool)])
    if config.e_step == "hard":
        marginals = hard_marginals(cost, label_valid, slot_valid)
    elif config.e_step == "soft":
        marginals = sinkhorn_marginals(
            cost, label_valid, slot_valid, config.temperature, config.sinkhorn_iters
        )
    else:
        raise ValueError(f"e_step must be 'hard' or 'soft', got {config.e_step!r}")
    return marginals[:, :num_slots]


@functools.partial(jax.jit, static_argnames=("config",))
def run_em(
    logits: jax.Array,
    slot_valid: jax.Array,
    counts: jax.Array,
    totals: jax.Array,
    label_valid: jax.Array,
    key: jax.Array,
    config: EMConfig = EMConfig(),
) -> tuple[jax.Array, jax.Array]:
    """EM from ``logits``; returns the final logits and the expected log-likelihood per alternation.

    ``counts`` ``(V, M, S)``, ``totals`` ``(V, S)``, ``label_valid`` ``(V, M)`` as in
    :class:`~.counts.Counts`. Each alternation: E-step on one view, then ``m_steps``
    Adam steps on that view's expected complete-data log-likelihood (gradients from
    ``T.enum()``); unused slots stay fixed.
    """
    num_views = counts.shape[0]
    order_keys = jax.random.split(key, config.epochs)
    order = jnp.concatenate([jax.random.permutation(k, num_views) for k in order_keys])
    optimizer = optax.adam(config.learning_rate)
    slot_mask = slot_valid.astype(logits.dtype)

    def alternation(carry: tuple[jax.Array, Any], v: jax.Array) -> tuple[tuple[jax.Array, Any], jax.Array]:
        logits, opt_state = carry
        cost = cost_matrix(logits, counts[v], totals[v])
        marginals = jax.lax.stop_gradient(
            e_step(cost, label_valid[v], slot_valid, config, counts[v], totals[v])
        )
        expected = -jnp.sum(marginals * cost)  # Q at the E-step's logits, exact

        def m_step(_: int, inner: tuple[jax.Array, Any]) -> tuple[jax.Array, Any]:
            logits, opt_state = inner
            grad = _M_STEP.grad(key, logits, counts[v], totals[v], marginals)
            updates, opt_state = optimizer.update(-grad * slot_mask, opt_state)
            return optax.apply_updates(logits, updates), opt_state

        logits, opt_state = jax.lax.fori_loop(0, config.m_steps, m_step, (logits, opt_state))
        return (logits, opt_state), expected

    (logits, _), values = jax.lax.scan(alternation, (logits, optimizer.init(logits)), order)
    return logits, values


def assignments(logits: jax.Array, superpoint_valid: np.ndarray) -> np.ndarray:
    """The most likely 3D instance of every real superpoint, ``(S_real,)``."""
    return np.asarray(jnp.argmax(logits, -1))[superpoint_valid]
