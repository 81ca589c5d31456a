r"""Training: TRICE (three estimators) and the methods it replaces, on one model, data and budget.

Every method starts from the same pretrained base model and tunes the same parameters (the
``mode`` part of :func:`~ppl.models.trice.transformer.partition`) with Adam (cosine-decayed,
gradient norm clipped at 1) on the same training questions:

* ``trice-basic``, ``trice-cv``, ``trice-subsampled``: :func:`ppl.transforms.mcmc_em` and
  :func:`ppl.transforms.mcmc_em_control_variate` over :func:`~ppl.models.trice.trice.cot_model`;
  a memory of one rationale per training question, initialized from the hinted guide
  ``q(z | x, y)`` (not filtered for correctness), updated by the chains; ``M`` proposals per step;
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

:func:`train` checkpoints a run to one file (``checkpoint=PATH``), written atomically with
:func:`ppl.transforms.save_checkpoint`: the whole state (parameters, optimizer, memory, step;
STaR: the current parameters after each iteration) and the evaluation history (UTF-8 JSON
bytes as an array, under the same SHA-256 checksum), every ``checkpoint_every`` steps and at the
end. The file's identity (:func:`run_identity`) is the method, the whole configuration, the
seed and digests of the base model and of the data; a file of another run, or a corrupt or
modified one, is refused (:class:`CheckpointError`) instead of resumed. The per-step keys are
``fold_in(key, step)``, so a resumed run equals an uninterrupted one bit for bit.

Why not :func:`ppl.transforms.fit`: every method here does more per step than an estimator's
gradient and an optimizer update. TRICE writes the chains' new states (the estimator's ``aux``
output) back into the memory, which is the next step's data; rejection sampling draws and
filters proposals and reports the fraction found; STaR restarts from the base model each
iteration; and all of them record per-step statistics, evaluate at step 0 and keep the
evaluation history in the checkpoint, which ``fit`` does not (its checkpoint holds the values
only). ``direct`` and ``gold`` are plain supervised losses (``jax.value_and_grad``), not
estimators. They share the one loop below, with the library's checkpoint functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ppl.models.trice import pretrain, tasks, trice
from ppl.models.trice import transformer as tf

from ppl import transforms as T

METHODS = ("trice-cv", "trice-basic", "trice-subsampled", "star", "rejection", "direct", "gold")
TRICE_ESTIMATORS = {"trice-basic": "basic", "trice-cv": "control_variate", "trice-subsampled": "subsampled"}
#: What a checkpoint of :func:`train` is; part of its identity (bump when the file's content changes).
CHECKPOINT_KIND = "ppl.models.trice.train/2"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training settings shared by every method (counts are positive integers, the learning rate
    a finite positive number; checked on construction)."""

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

    def __post_init__(self) -> None:
        for name in (
            "steps",
            "batch_size",
            "particles",
            "star_steps",
            "eval_every",
            "train_eval",
            "train_eval_samples",
            "checkpoint_every",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        rate = self.learning_rate
        if (
            isinstance(rate, bool)
            or not isinstance(rate, int | float)
            or not (math.isfinite(rate) and rate > 0)
        ):
            raise ValueError(f"TrainConfig.learning_rate must be a finite positive number, got {rate!r}")


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


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed: corrupt or modified (checksum), or of another run."""


class DivergedError(ValueError):
    """A training step produced a non-finite loss or parameter."""


def optimizer(config: TrainConfig, steps: int | None = None) -> optax.GradientTransformation:
    schedule = optax.cosine_decay_schedule(config.learning_rate, steps or config.steps, alpha=0.05)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def _negate(tree: Any) -> Any:
    return jax.tree_util.tree_map(jnp.negative, tree)


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


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
    """The jitted ``(state, key) -> (state, stats, finite)`` of a step-based method (``finite``:
    whether every new parameter is finite)."""
    opt = optimizer(config)
    n, m = train.answer.shape[0], config.batch_size
    prompts, answers = jnp.asarray(train.prompt), jnp.asarray(train.answer)

    def apply(state: TrainState, grad: Any, memory: jax.Array) -> tuple[TrainState, jax.Array]:
        """The optimizer's update, and whether every new parameter is finite."""
        updates, opt_state = opt.update(grad, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, memory, state.step + 1), _all_finite(params)

    if method in TRICE_ESTIMATORS:
        model = trice.cot_model(frozen)
        est = trice.estimator(model, TRICE_ESTIMATORS[method], m if method == "trice-subsampled" else None)
        obs = trice.observations(m)

        def trice_step(state: TrainState, key: jax.Array) -> tuple[TrainState, dict[str, jax.Array], Any]:
            index = jax.random.choice(jax.random.fold_in(key, 0), n, (m,), replace=False)
            batch = trice.Question(prompts[index], answers[index])
            (value, step), grad, _ = est.value_and_grad(
                jax.random.fold_in(key, 1), state.params, batch, obs, trice.memory(state.memory[index])
            )
            memory = state.memory.at[index].set(trice.rationales(step.state))
            stats = {"acceptance": jnp.mean(step.accepted), "valid": jnp.mean(step.valid), "objective": value}
            new, finite = apply(state, _negate(grad), memory)
            return new, stats, finite

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

    def supervised_step(state: TrainState, key: jax.Array) -> tuple[TrainState, dict[str, jax.Array], Any]:
        (loss, stats), grad = jax.value_and_grad(loss_and_targets, has_aux=True)(state.params, key)
        new, finite = apply(state, grad, state.memory)
        return new, {**stats, "loss": loss}, finite

    return jax.jit(supervised_step)


# -- evaluation --------------------------------------------------------------------------
def evaluate(
    key: jax.Array, params: tf.Params, train: tasks.Example, heldout: tasks.Example, config: TrainConfig
) -> dict[str, Any]:
    """Held-out greedy accuracy per k (keys are strings, as in JSON) and their mean, and the sampled
    training marginal p(y | x)."""
    per_k = pretrain.evaluate_accuracy(key, params, heldout)
    subset = jax.tree_util.tree_map(lambda a: a[: config.train_eval], train)
    train_p = pretrain.evaluate_accuracy(key, params, subset, greedy=False, samples=config.train_eval_samples)
    return {
        "heldout": {str(k): v for k, v in per_k.items()},
        "heldout_mean": pretrain.mean_accuracy(per_k),
        "train_p": pretrain.mean_accuracy(train_p),
    }


# -- checkpoints -------------------------------------------------------------------------
def tree_digest(tree: Any) -> str:
    """SHA-256 (hex) of a pytree's leaves: their dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        array = np.asarray(leaf)
        h.update(f"{array.dtype}{array.shape}".encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def run_identity(
    method: str,
    config: TrainConfig,
    seed: int,
    base: tf.Params,
    train_split: tasks.Example,
    heldout: tasks.Example,
) -> dict[str, Any]:
    """What a checkpoint of :func:`train` must match to be resumed: the method, the whole
    configuration, the seed, and digests of the base model and of the training and held-out data."""
    return {
        "kind": CHECKPOINT_KIND,
        "method": method,
        "config": dataclasses.asdict(config),
        "seed": int(seed),
        "base": tree_digest(base),
        "data": tree_digest((train_split, heldout)),
    }


def save_run(path: str | os.PathLike, state: Any, payload: dict[str, Any], identity: dict[str, Any]) -> None:
    """Write ``state`` (a pytree of arrays) and ``payload`` (JSON-able: the history, the counters)
    to one checkpoint, atomically, with ``identity`` and a checksum over both."""
    text = json.dumps(payload, sort_keys=True).encode()
    tree = {"payload": np.frombuffer(text, np.uint8), "state": state}
    T.save_checkpoint(path, tree, identity)


def load_run(path: str | os.PathLike, like: Any, identity: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``(state, payload)`` of a checkpoint written by :func:`save_run` for ``identity``.

    Raises:
        CheckpointError: the file is corrupt or was modified (checksum), belongs to another run
            (each differing identity entry is named), or holds another structure.
    """
    size = _payload_size(path)
    tree_like = {"payload": np.zeros(size, np.uint8), "state": like}
    try:
        tree = T.load_checkpoint(path, tree_like, identity)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    except Exception as e:  # a damaged archive can fail inside zipfile or NumPy's header parser
        raise CheckpointError(
            f"checkpoint {os.fspath(path)!r} cannot be read as a ppl checkpoint: {type(e).__name__}: {e}"
        ) from e
    return tree["state"], json.loads(bytes(np.asarray(tree["payload"])).decode())


def _payload_size(path: str | os.PathLike) -> int:
    """The stored payload's length (the first leaf: ``"payload"`` sorts before ``"state"``), read
    from the archive's description without pickle, to shape the template; every check is then
    :func:`ppl.transforms.load_checkpoint`'s (0 if unreadable: that call reports why)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(bytes(archive["meta"]).decode())
        dtype, shape = meta["leaves"][0]
        return int(shape[0]) if dtype == "uint8" and len(shape) == 1 else 0
    except Exception:  # unreadable: load_checkpoint says why
        return 0


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


def check_settings(method: str, config: TrainConfig, train_questions: int) -> None:
    """Raise ``ValueError`` for a method, mode or batch size :func:`train` cannot run."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if config.mode not in tf.MODES:
        raise ValueError(f"unknown tuning mode {config.mode!r}; choose from {', '.join(tf.MODES)}")
    if config.batch_size < 2 or config.batch_size > train_questions:
        raise ValueError(
            f"batch_size must be in [2, {train_questions}] (the training questions), got {config.batch_size}"
        )
    if method == "rejection" and config.batch_size < config.particles:
        raise ValueError(
            f"rejection samples {config.particles} proposals for each of batch_size / particles questions: "
            f"batch_size must be at least particles = {config.particles}, got {config.batch_size}"
        )


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

    ``checkpoint``: a file (its folder must exist) to save the run to every
    ``checkpoint_every`` steps (STaR: every iteration) and at the end; if it exists, the run
    resumes from it, after checking its checksum and that it is this run's
    (:func:`run_identity`), else :class:`CheckpointError`. A finished run's file returns its
    result without training. ``on_eval(state, frozen)`` (step-based methods), if given, runs at
    each evaluation and its dict (JSON-able) joins that evaluation's record (the benchmark
    measures gradient variance there); it is not part of the identity. ``Result.step_ms`` is
    the median wall time of a step after the first (compiled) one of this call.

    Raises:
        ValueError: bad settings.
        DivergedError: a non-finite loss or parameter (with the step).
        CheckpointError: the checkpoint cannot be resumed.
    """
    check_settings(method, config, train_split.answer.shape[0])
    if checkpoint is not None:
        checkpoint = T.check_output_path(checkpoint, f"{method} checkpoint")
    start = time.perf_counter()
    key = jax.random.key(seed)
    identity = run_identity(method, config, seed, base, train_split, heldout)
    if method == "star":
        return _star(key, base, train_split, heldout, config, start, log, checkpoint, identity)
    state, frozen = initial_state(jax.random.fold_in(key, 1), method, base, train_split, config)
    history: list[dict[str, Any]] = []
    stats: dict[str, float] = {}
    if checkpoint is not None and os.path.exists(checkpoint):
        state, payload = load_run(checkpoint, state, identity)
        history, stats = payload["history"], payload["stats"]
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
                record.update(stats)
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
        state, new_stats, finite = jax.block_until_ready(
            step_fn(state, jax.random.fold_in(jax.random.fold_in(key, 2), step))
        )
        times.append(time.perf_counter() - tick)
        stats = {k: float(v) for k, v in new_stats.items()}
        bad = sorted(k for k, v in stats.items() if not math.isfinite(v))
        if bad or not bool(finite):
            what = f"{', '.join(bad)} not finite" if bad else "a parameter became non-finite"
            raise DivergedError(
                f"{method} step {step}: {what} (diverged: a learning rate of {config.learning_rate:g} "
                "too large?)"
            )
        done = int(state.step)
        if checkpoint is not None and done % config.checkpoint_every == 0:
            save_run(checkpoint, state, {"history": history, "stats": stats}, identity)
    if checkpoint is not None:  # the finished run, its last evaluation included
        save_run(checkpoint, state, {"history": history, "stats": stats}, identity)
    step_ms = float(np.median(times[1:]) * 1000) if len(times) > 1 else None
    return Result(tf.combine(state.params, frozen), history, time.perf_counter() - start, state, step_ms)


def _star(
    key: jax.Array,
    base: tf.Params,
    train: tasks.Example,
    heldout: tasks.Example,
    config: TrainConfig,
    start: float,
    log: Callable[[str], None] | None,
    checkpoint: str | None = None,
    identity: dict[str, Any] | None = None,
) -> Result:
    """STaR's outer loop (see the module docstring); checkpointed after every iteration."""
    budget = config.steps * config.batch_size
    base_params, frozen = tf.partition(base, config.mode)
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
        (params, _), losses = jax.lax.scan(step, (base_params, opt.init(base_params)), keys)
        return params, losses

    params, sampled, iteration = base_params, 0, 0
    if checkpoint is not None and os.path.exists(checkpoint):
        params, payload = load_run(checkpoint, base_params, identity)
        history, sampled, iteration = payload["history"], payload["sampled"], payload["iteration"]
    else:
        history = [{"step": 0, "sampled": 0, **evaluate(key, base, train, heldout, config)}]
    full = tf.combine(params, frozen)
    while sampled < budget:
        k_sample, k_hint, k_tune = jax.random.split(jax.random.fold_in(key, 10 + iteration), 3)
        z = tf.sample_rationales(k_sample, full, prompts)
        ok = tasks.correct(z, answers)
        hint_z = tf.sample_rationales(k_hint, full, hinted)
        keep = ok | tasks.correct(hint_z, answers)  # failures rationalized with the hint
        sampled += int(n + jnp.sum(~ok))
        if int(jnp.sum(keep)) >= 1:
            targets = jnp.where(ok[:, None], z, hint_z)
            params, losses = fine_tune(targets, keep.astype(jnp.float32), k_tune)
            if not (bool(jnp.all(jnp.isfinite(losses))) and bool(_all_finite(params))):
                raise DivergedError(
                    f"star iteration {iteration + 1}: the fine-tuning diverged (a non-finite loss or "
                    f"parameter; a learning rate of {config.learning_rate:g} too large?)"
                )
            full = tf.combine(params, frozen)
        iteration += 1
        record = {"step": iteration, "sampled": sampled, "kept": float(jnp.mean(keep))}
        record.update(evaluate(key, full, train, heldout, config))
        history.append(record)
        if checkpoint is not None:
            payload = {"history": history, "sampled": sampled, "iteration": iteration}
            save_run(checkpoint, params, payload, identity)
        if log is not None:
            log(
                f"star iteration {iteration}: held-out {record['heldout_mean']:.3f}, "
                f"kept {record['kept']:.2f}"
            )
    return Result(full, history, time.perf_counter() - start)
