r"""Training: TRICE (three estimators) and the methods it replaces, on one model, data and budget.

Every method starts from the same pretrained base model and tunes the same parameters (the
``mode`` part of :func:`~ppl.models.trice.transformer.partition`) with Adam (cosine-decayed,
gradient norm clipped at 1) on the same training questions:

* ``trice-basic``, ``trice-cv``, ``trice-subsampled``: :func:`ppl.transforms.mcmc_em` over
  :func:`~ppl.models.trice.trice.cot_model`; a memory of one rationale per training question,
  initialized from the hinted guide ``q(z | x, y)`` (not filtered for correctness), updated by
  the chains; ``M`` proposals per step;
* ``rejection``: ``M / 4`` questions per step, 4 proposals each; the first correct one (if any)
  is a training target, ``−Σ log p_θ(z | x) / #successes`` (weight ``1 − (1 − p)^4`` per question);
* ``star``: STaR: each iteration samples one rationale per training question, keeps the correct
  ones, *rationalizes* the failures with the hinted guide (kept if correct), and fine-tunes
  from the base model on what it kept; iterations run until the sampling budget is spent;
* ``direct``: supervised on answer-only targets ``[y, EOS]`` (no rationale);
* ``gold``: supervised on the gold rationales (an upper bound: it sees what the others must infer).

Sampling budgets are equal: the sampling methods draw ``M`` rationales per step for ``steps``
steps (STaR counts its rationalizations). Held-out accuracy is greedy; the training marginal
``p_θ(y | x)`` is estimated by sampled accuracy on a fixed subset of training questions.

:func:`train` checkpoints the whole state (parameters, optimizer, memory, step) every
``checkpoint_every`` steps and resumes from the file if it exists; the per-step keys are
``fold_in(key, step)``, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ppl.models.trice import pretrain, tasks, trice
from ppl.models.trice import transformer as tf

METHODS = ("trice-cv", "trice-basic", "trice-subsampled", "star", "rejection", "direct", "gold")
TRICE_ESTIMATORS = {"trice-basic": "basic", "trice-cv": "control_variate", "trice-subsampled": "subsampled"}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training settings shared by every method."""

    steps: int = 100  #: optimizer steps (STaR: sampling budget ``steps · batch_size``)
    batch_size: int = 64  #: ``M``: questions per TRICE step, rationales sampled per step
    learning_rate: float = 1e-4
    mode: str = "full"  #: ``"full"`` fine-tuning or ``"soft_prompt"`` tuning
    particles: int = 4  #: proposals per question for ``rejection``
    star_steps: int = 50  #: supervised steps per STaR iteration
    eval_every: int = 20
    train_eval: int = 256  #: training questions for the p(y | x) estimate
    train_eval_samples: int = 4
    checkpoint_every: int = 20


class TrainState(NamedTuple):
    """Everything a step changes: trainable parameters, optimizer state, memory, step."""

    params: Any
    opt_state: Any
    memory: jax.Array  #: ``(N, R)`` one rationale per training question (TRICE; zeros otherwise)
    step: jax.Array


@dataclasses.dataclass
class Result:
    """A training run: the final full parameters and the evaluation history."""

    params: tf.Params
    history: list[dict[str, Any]]
    seconds: float
    state: TrainState | None = None
    step_ms: float | None = None


def optimizer(config: TrainConfig, steps: int | None = None) -> optax.GradientTransformation:
    schedule = optax.cosine_decay_schedule(config.learning_rate, steps or config.steps, alpha=0.05)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def _negate(tree: Any) -> Any:
    return jax.tree_util.tree_map(jnp.negative, tree)


def supervised_loss(
    params: Any, frozen: Any, prompts: jax.Array, targets: jax.Array, weights: jax.Array
) -> jax.Array:
    """``−Σ_n w_n log p_θ(z_n | x_n) / max(Σ w, 1)``."""
    log_probs = tf.sequence_log_prob(tf.combine(params, frozen), prompts, targets)
    return -jnp.sum(weights * log_probs) / jnp.maximum(jnp.sum(weights), 1.0)


def answer_targets(answers: jax.Array) -> jax.Array:
    """``[y, EOS, PAD, …]`` for direct answer tuning."""
    targets = jnp.full((answers.shape[0], tasks.MAX_RATIONALE), tasks.PAD, jnp.int32)
    return targets.at[:, 0].set(answers).at[:, 1].set(tasks.EOS)


def first_correct(rationales: jax.Array, answers: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per question (rows of ``(Q, P, R)``): the first correct proposal and whether one exists."""
    hits = tasks.correct(rationales, answers[:, None])
    pick = jnp.argmax(hits, axis=1)
    return rationales[jnp.arange(rationales.shape[0]), pick], jnp.any(hits, axis=1)


# -- steps -------------------------------------------------------------------------------
def make_step(method: str, config: TrainConfig, frozen: Any, train: tasks.Example) -> Callable[..., Any]:
    """The jitted ``(state, key) -> (state, stats)`` of a step-based method."""
    opt = optimizer(config)
    n, m = train.answer.shape[0], config.batch_size
    prompts, answers = jnp.asarray(train.prompt), jnp.asarray(train.answer)

    def apply(state: TrainState, grad: Any, memory: jax.Array) -> TrainState:
        updates, opt_state = opt.update(grad, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state, memory, state.step + 1)

    if method in TRICE_ESTIMATORS:
        model = trice.cot_model(frozen)
        est = trice.estimator(model, TRICE_ESTIMATORS[method], m if method == "trice-subsampled" else None)
        obs = trice.observations(m)

        def trice_step(state: TrainState, key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
            index = jax.random.choice(jax.random.fold_in(key, 0), n, (m,), replace=False)
            batch = trice.Question(prompts[index], answers[index])
            (value, step), grad = est.value_and_grad(
                jax.random.fold_in(key, 1), state.params, batch, obs, trice.memory(state.memory[index])
            )
            memory = state.memory.at[index].set(trice.rationales(step.state))
            stats = {"acceptance": jnp.mean(step.accepted), "valid": jnp.mean(step.valid), "objective": value}
            return apply(state, _negate(grad), memory), stats

        return jax.jit(trice_step)

    def loss_and_targets(params: Any, key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        if method == "rejection":
            q = m // config.particles
            index = jax.random.choice(jax.random.fold_in(key, 0), n, (q,), replace=False)
            many = jnp.repeat(prompts[index][:, None], config.particles, axis=1)
            proposals = tf.sample_rationales(jax.random.fold_in(key, 1), tf.combine(params, frozen), many)
            targets, found = first_correct(jax.lax.stop_gradient(proposals), answers[index])
            loss = supervised_loss(params, frozen, prompts[index], targets, found.astype(jnp.float32))
            return loss, {"acceptance": jnp.mean(found)}
        index = jax.random.choice(jax.random.fold_in(key, 0), n, (m,), replace=False)
        targets = (
            answer_targets(answers[index]) if method == "direct" else jnp.asarray(train.rationale)[index]
        )
        return supervised_loss(params, frozen, prompts[index], targets, jnp.ones(m)), {}

    def supervised_step(state: TrainState, key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        (loss, stats), grad = jax.value_and_grad(loss_and_targets, has_aux=True)(state.params, key)
        return apply(state, grad, state.memory), {**stats, "loss": loss}

    return jax.jit(supervised_step)


# -- evaluation --------------------------------------------------------------------------
def evaluate(
    key: jax.Array, params: tf.Params, train: tasks.Example, heldout: tasks.Example, config: TrainConfig
) -> dict[str, Any]:
    """Held-out greedy accuracy per k (and mean), and the sampled training marginal p(y | x)."""
    per_k = pretrain.evaluate_accuracy(key, params, heldout)
    subset = jax.tree_util.tree_map(lambda a: a[: config.train_eval], train)
    train_p = pretrain.evaluate_accuracy(key, params, subset, greedy=False, samples=config.train_eval_samples)
    return {
        "heldout": per_k,
        "heldout_mean": pretrain.mean_accuracy(per_k),
        "train_p": pretrain.mean_accuracy(train_p),
    }


# -- checkpoints -------------------------------------------------------------------------
def save_state(path: pathlib.Path, state: TrainState) -> None:
    """Write the state atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    eqx.tree_serialise_leaves(tmp, state)
    os.replace(tmp, path)


def load_state(path: pathlib.Path, like: TrainState) -> TrainState:
    return eqx.tree_deserialise_leaves(path, like)


# -- runs --------------------------------------------------------------------------------
def initial_state(
    key: jax.Array, method: str, base: tf.Params, train: tasks.Example, config: TrainConfig
) -> tuple[TrainState, Any]:
    """``(state, frozen)``: the base model's trainable part, fresh optimizer state, and (TRICE)
    the memory sampled from the hinted guide."""
    params, frozen = tf.partition(base, config.mode)
    memory = jnp.zeros((train.answer.shape[0], tasks.MAX_RATIONALE), jnp.int32)
    if method in TRICE_ESTIMATORS:
        memory = tf.sample_rationales(key, base, jnp.asarray(train.hinted_prompt))
    return TrainState(params, optimizer(config).init(params), memory, jnp.zeros((), jnp.int32)), frozen


def train(
    method: str,
    base: tf.Params,
    train_split: tasks.Example,
    heldout: tasks.Example,
    config: TrainConfig,
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
    on_eval: Callable[[TrainState, Any], dict[str, Any]] | None = None,
) -> Result:
    """Run ``method`` (:data:`METHODS`) from ``base``; evaluate every ``eval_every`` steps.

    ``on_eval(state, frozen)`` (step-based methods), if given, runs at each evaluation and its
    dict joins that evaluation's record (the benchmark measures gradient variance there).
    ``Result.step_ms`` is the median wall time of a step after the first (compiled) one.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if config.mode not in tf.MODES:
        raise ValueError(f"unknown tuning mode {config.mode!r}; choose from {', '.join(tf.MODES)}")
    if config.batch_size < 2 or config.batch_size > train_split.answer.shape[0]:
        raise ValueError(
            f"batch_size must be in [2, {train_split.answer.shape[0]}] (the training questions), "
            f"got {config.batch_size}"
        )
    start = time.perf_counter()
    key = jax.random.key(seed)
    if method == "star":
        return _star(key, base, train_split, heldout, config, start, log)
    state, frozen = initial_state(jax.random.fold_in(key, 1), method, base, train_split, config)
    path = pathlib.Path(checkpoint) if checkpoint is not None else None
    history: list[dict[str, Any]] = []
    stats: dict[str, Any] = {}
    if path is not None and path.exists():
        state = load_state(path, state)
        history, stats = _read_history(path)
    step_fn = make_step(method, config, frozen, train_split)
    per_step = config.batch_size if method not in ("direct", "gold") else 0
    times: list[float] = []
    while True:
        step = int(state.step)
        if step % config.eval_every == 0 or step == config.steps:
            if not history or history[-1]["step"] != step:
                full = tf.combine(state.params, frozen)
                record = {
                    "step": step,
                    "sampled": step * per_step,
                    **evaluate(key, full, train_split, heldout, config),
                }
                record.update({k: float(v) for k, v in stats.items()})
                if on_eval is not None:
                    record.update(on_eval(state, frozen))
                history.append(record)
                if log is not None:
                    log(
                        f"{method} step {step}: held-out {record['heldout_mean']:.3f}, "
                        f"train p(y|x) {record['train_p']:.3f}"
                    )
        if step >= config.steps:
            break
        tick = time.perf_counter()
        state, stats = jax.block_until_ready(
            step_fn(state, jax.random.fold_in(jax.random.fold_in(key, 2), step))
        )
        times.append(time.perf_counter() - tick)
        if path is not None and int(state.step) % config.checkpoint_every == 0:
            save_state(path, state)
            _write_history(path, history, stats)
    step_ms = float(np.median(times[1:]) * 1000) if len(times) > 1 else None
    return Result(tf.combine(state.params, frozen), history, time.perf_counter() - start, state, step_ms)


def _history_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_suffix(".history.npy")


def _write_history(path: pathlib.Path, history: list[dict[str, Any]], stats: dict[str, Any]) -> None:
    """The evaluations so far and the last step's statistics, beside the state."""
    record = {"history": history, "stats": {k: float(v) for k, v in stats.items()}}
    np.save(_history_path(path), np.array(record, dtype=object), allow_pickle=True)


def _read_history(path: pathlib.Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    file = _history_path(path)
    if not file.exists():
        return [], {}
    record = np.load(file, allow_pickle=True).item()
    return record["history"], record["stats"]


def _star(
    key: jax.Array,
    base: tf.Params,
    train: tasks.Example,
    heldout: tasks.Example,
    config: TrainConfig,
    start: float,
    log: Callable[[str], None] | None,
) -> Result:
    """STaR's outer loop (see the module docstring)."""
    budget = config.steps * config.batch_size
    base_params, frozen = tf.partition(base, config.mode)
    full = base
    prompts, hinted, answers = (jnp.asarray(a) for a in (train.prompt, train.hinted_prompt, train.answer))
    n, m = answers.shape[0], config.batch_size
    opt = optimizer(config, config.star_steps)

    @jax.jit
    def fine_tune(targets: jax.Array, keep: jax.Array, key: jax.Array) -> Any:
        """``star_steps`` supervised steps from the base model on the kept (question, rationale) pairs."""

        def step(carry: tuple, k: jax.Array) -> tuple[tuple, jax.Array]:
            params, opt_state = carry
            index = jax.random.choice(k, n, (m,), p=keep / jnp.sum(keep))
            loss, grad = jax.value_and_grad(supervised_loss)(
                params, frozen, prompts[index], targets[index], jnp.ones(m)
            )
            updates, opt_state = opt.update(grad, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        keys = jax.random.split(key, config.star_steps)
        (params, _), _ = jax.lax.scan(step, (base_params, opt.init(base_params)), keys)
        return params

    sampled, iteration = 0, 0
    history = [{"step": 0, "sampled": 0, **evaluate(key, full, train, heldout, config)}]
    while sampled < budget:
        k_sample, k_hint, k_tune = jax.random.split(jax.random.fold_in(key, 10 + iteration), 3)
        z = tf.sample_rationales(k_sample, full, prompts)
        ok = tasks.correct(z, answers)
        hint_z = tf.sample_rationales(k_hint, full, hinted)
        keep = ok | tasks.correct(hint_z, answers)  # failures rationalized with the hint
        sampled += int(n + jnp.sum(~ok))
        if int(jnp.sum(keep)) >= 1:
            targets = jnp.where(ok[:, None], z, hint_z)
            full = tf.combine(fine_tune(targets, keep.astype(jnp.float32), k_tune), frozen)
        iteration += 1
        record = {"step": iteration, "sampled": sampled, "kept": float(jnp.mean(keep))}
        record.update(evaluate(key, full, train, heldout, config))
        history.append(record)
        if log is not None:
            log(
                f"star iteration {iteration}: held-out {record['heldout_mean']:.3f}, "
                f"kept {record['kept']:.2f}"
            )
    return Result(full, history, time.perf_counter() - start)
