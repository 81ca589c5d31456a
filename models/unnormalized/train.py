r"""Training loops: one jitted Adam step per estimator, several seeds at once (vmapped).

Estimators (:data:`ESTIMATORS`), all on the same ``log_density`` and noise ``q``:

* ``compositional``: MLE, ``log Z`` by MECO's moving average (``T.compositional(gamma)``);
* ``bound``: MLE with ``log Z ≤ b + e^{−b} Z − 1`` (``T.self_normalized_bound()``);
* ``naive``: MLE, autodiff through ``log`` of the minibatch mean (``T.naive()``), biased;
* ``nce``: noise-contrastive estimation (``T.nce``, ``ν = 1``).

Budget: a step of NCE with batch ``B`` evaluates the energy at ``B`` data and ``B`` noise points;
the MLE estimators get ``samples = B`` noise points per step, so all see ``2B`` energy
evaluations per step. For the MLE objectives the model's ``c`` is frozen (its gradient is
zeroed): the objective does not depend on ``c``, but the estimators' ``∂/∂c`` is only zero in
expectation (``1 − Ẑ/u_t`` for the moving average), and Adam would turn that noise into a random
walk of ``c`` that the ``log Z`` trackers then have to follow.

A step whose value, gradient or new parameters are not finite is not applied: the run is
recorded as *diverged* at that step (per seed) and its parameters stay at the last finite
values; nothing raises (the estimators' traced checks are off for that reason).

These loops are not :func:`ppl.transforms.fit`: they train several seeds at once (``vmap`` over
a ``lax.scan`` of ``chunk`` steps, one compiled call per chunk) and record a divergence per seed
instead of stopping the run, neither of which ``fit`` (one run, a failure raises) does.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
from ppl.models.unnormalized.energies import EnergyModel

from ppl import transforms as T

ESTIMATORS = ("compositional", "bound", "nce", "naive")
OBJECTIVE_OF = {"compositional": "mle", "bound": "mle", "naive": "mle", "nce": "nce"}


@dataclasses.dataclass
class TrainResult:
    """Per-seed results (leading axis = seed): final params, per-step values and tracked quantity."""

    params: Any
    values: np.ndarray  # (seeds, steps), NaN after divergence
    tracked: np.ndarray | None  # (seeds, steps) of ``track(params)`` after each step
    diverged_at: np.ndarray  # (seeds,), −1 where the run never diverged
    wall_s: float
    compile_s: float

    @property
    def diverged(self) -> np.ndarray:
        return self.diverged_at >= 0

    def seed_params(self, i: int) -> Any:
        return jax.tree_util.tree_map(lambda a: a[i], self.params)


def make_estimator(
    objective_name: str,
    estimator_name: str,
    log_density: Callable[[Any, jax.Array], jax.Array],
    noise: dist.Distribution,
    batch: int,
    gamma: float = 0.1,
    noise_ratio: float = 1.0,
    checks: str | None = "off",
) -> T.Estimator:
    """The (unjitted) estimator ``estimator_name`` of objective ``objective_name`` ("mle" or "nce").

    ``checks`` is the estimator's (see :class:`ppl.transforms.Estimator`); off by default: the
    training loop records a non-finite step as a divergence instead of raising.
    """
    if estimator_name not in OBJECTIVE_OF:
        raise ValueError(f"unknown estimator {estimator_name!r}; choose from {', '.join(ESTIMATORS)}")
    if OBJECTIVE_OF[estimator_name] != objective_name:
        raise ValueError(
            f"estimator {estimator_name!r} belongs to objective {OBJECTIVE_OF[estimator_name]!r}"
        )
    if objective_name == "nce":
        return T.nce(log_density, noise, noise_ratio=noise_ratio).estimator(jit=False, checks=checks)
    strategy = {
        "compositional": lambda: T.compositional(gamma),
        "bound": T.self_normalized_bound,
        "naive": T.naive,
    }[estimator_name]()
    objective = T.unnormalized_nll(log_density, noise, samples=batch)
    return objective.estimator(strategies={"log_partition": strategy}, jit=False, checks=checks)


def _all_finite(tree: Any) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _select(flag: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree_util.tree_map(lambda a, b: jnp.where(flag, a, b), new, old)


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Everything static about a training run: the compiled chunk is cached per spec (hashable)."""

    objective_name: str
    estimator_name: str
    model: EnergyModel
    batch: int
    lr: float
    gamma: float
    chunk: int
    track: Callable[[Any], jax.Array] | None
    optimizer: optax.GradientTransformation | None
    decay_steps: int | None = None  # cosine decay of the default Adam's rate to 0 over this many steps

    def parts(self, noise: dist.Distribution) -> tuple[T.Estimator, optax.GradientTransformation]:
        est = make_estimator(
            self.objective_name, self.estimator_name, self.model.log_density, noise, self.batch, self.gamma
        )
        rate = optax.cosine_decay_schedule(self.lr, self.decay_steps) if self.decay_steps else self.lr
        return est, self.optimizer or optax.adam(rate)


@functools.partial(jax.jit, static_argnums=0)
def _init(spec: _Spec, keys: jax.Array, data: jax.Array, noise: dist.Distribution) -> tuple:
    est, opt = spec.parts(noise)

    def one(key: jax.Array) -> tuple:
        k_init, k_run = jax.random.split(key)
        params = spec.model.init(k_init)
        state = est.init(params, data[: spec.batch])
        return params, opt.init(params), state, k_run, jnp.asarray(0), jnp.asarray(-1)

    return jax.vmap(one)(keys)


@functools.partial(jax.jit, static_argnums=0)
def _run_chunk(spec: _Spec, carry: tuple, data: jax.Array, noise: dist.Distribution, steps: jax.Array) -> Any:
    est, opt = spec.parts(noise)

    def step(carry: tuple, _: None) -> tuple[tuple, tuple]:
        params, opt_state, est_state, key, t, diverged_at = carry
        key, k_batch, k_est = jax.random.split(key, 3)
        x = data[jax.random.randint(k_batch, (spec.batch,), 0, data.shape[0])]
        value, grad, new_est_state = est.value_and_grad(k_est, params, x, state=est_state)
        if spec.objective_name == "mle":  # c is frozen: see the module docstring
            grad = {**grad, "c": jnp.zeros_like(grad["c"])}
        updates, new_opt_state = opt.update(grad, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(value) & _all_finite(grad) & _all_finite(new_params)
        active = (t < steps) & (diverged_at < 0)
        ok = active & finite
        diverged_at = jnp.where(active & ~finite, t, diverged_at)
        params = _select(ok, new_params, params)
        carry = (
            params,
            _select(ok, new_opt_state, opt_state),
            _select(ok, new_est_state, est_state),
            key,
            t + 1,
            diverged_at,
        )
        tracked = spec.track(params) if spec.track is not None else jnp.zeros(())
        return carry, (jnp.where(ok, value, jnp.nan), tracked)

    return jax.vmap(lambda c: jax.lax.scan(step, c, None, length=spec.chunk))(carry)


def theta(params: Any) -> jax.Array:
    """``params["theta"]``: the tracked quantity of the 1D runs."""
    return params["theta"]


def train(
    objective_name: str,
    estimator_name: str,
    model: EnergyModel,
    data: np.ndarray,
    noise: dist.Distribution,
    steps: int,
    batch: int,
    lr: float,
    seed: int | Sequence[int] = 0,
    *,
    track: Callable[[Any], jax.Array] | None = None,
    optimizer: optax.GradientTransformation | None = None,
    gamma: float = 0.1,
    chunk: int = 100,
    progress: bool = False,
    desc: str | None = None,
    decay: bool = False,
) -> TrainResult:
    """Train ``model`` on ``data`` for ``steps`` steps of ``optimizer`` (default ``optax.adam(lr)``,
    with ``decay`` its rate decays to 0 by the last step on a cosine schedule).

    ``seed`` is one seed or a sequence of seeds (trained together, vmapped; the result always has
    a leading seed axis). Each step draws a minibatch of ``batch`` data uniformly with replacement.
    ``track(params) -> scalar`` is recorded after every step (e.g. :func:`theta` in 1D). The loop
    is ``lax.scan`` over ``chunk`` steps, jitted once per (estimator, model, sizes, ``track``,
    ``optimizer``): data, noise parameters and ``steps`` are arguments, so runs that differ only
    in those reuse the compiled loop. A tqdm bar (``progress``, labelled ``desc``) advances per chunk.
    """
    from tqdm import tqdm

    seeds = [int(seed)] if np.ndim(seed) == 0 else [int(s) for s in seed]
    data = jnp.asarray(data, jnp.float32)
    if data.shape[1:] != model.datum_shape:
        raise ValueError(
            f"data of shape {data.shape} do not fit {model.name} (datum shape {model.datum_shape})"
        )
    if steps < 1 or batch < 1:
        raise ValueError(f"steps and batch must be >= 1, got {steps} and {batch}")
    make_estimator(objective_name, estimator_name, model.log_density, noise, batch, gamma)  # checks names
    spec = _Spec(
        objective_name,
        estimator_name,
        model,
        batch,
        float(lr),
        float(gamma),
        max(1, min(chunk, steps)),
        track,
        optimizer,
        steps if decay else None,
    )
    start = time.perf_counter()
    carry = _init(spec, jnp.stack([jax.random.key(s) for s in seeds]), data, noise)
    values, tracked = [], []
    compile_s = 0.0
    n_steps = jnp.asarray(steps)
    with tqdm(
        total=steps, desc=desc or estimator_name, disable=not progress, mininterval=0.5, leave=False
    ) as bar:
        for i in range(-(-steps // spec.chunk)):
            carry, (v, tr) = _run_chunk(spec, carry, data, noise, n_steps)
            values.append(v)
            tracked.append(tr)
            if i == 0:
                jax.block_until_ready(v)
                compile_s = time.perf_counter() - start
            bar.update(min(spec.chunk, steps - bar.n))
            if i % 10 == 9 and bool(jnp.all(carry[5] >= 0)):
                break  # every seed diverged
    values_np = np.concatenate([np.asarray(v) for v in values], 1)[:, :steps]
    tracked_np = np.concatenate([np.asarray(t) for t in tracked], 1)[:, :steps]
    pad = steps - values_np.shape[1]
    if pad > 0:  # stopped early: all seeds diverged
        values_np = np.pad(values_np, ((0, 0), (0, pad)), constant_values=np.nan)
        tracked_np = np.pad(tracked_np, ((0, 0), (0, pad)), mode="edge")
    return TrainResult(
        carry[0],
        values_np,
        tracked_np if track is not None else None,
        np.asarray(carry[5]),
        time.perf_counter() - start,
        compile_s,
    )
