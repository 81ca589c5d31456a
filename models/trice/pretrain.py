r"""An imperfect base model: pretraining on corrupted scratchpads and hinted gold rationales, cached on disk.

Each pretraining minibatch of ``B`` sequences mixes two kinds of examples drawn from the
``"pretrain"`` split (disjoint from every held-out split, see :mod:`.tasks`):

* ``(1 - hinted_fraction) B`` *unhinted* prompts followed by noisy scratchpads
  (:func:`tasks.scratchpad`) with two kinds of error, each propagating (later steps continue
  from the written value, so the answer is usually wrong): *slips*, a fixed table of
  ``slip_fraction`` of the 100 step contexts (``(s_{i-1}, d_i)`` or ``(p_{j-1}, a[p_{j-1}])``)
  where one particular wrong digit is written with probability ``slip_rate``, and, elsewhere,
  with probability ``corruption`` a uniformly random wrong digit (defaults 0.12, 0.6, 0.1:
  about 15% of steps wrong). Uniform corruption alone leaves the right digit the most likely
  one at every step, so a well-fit model would be about 100% right under greedy decoding; the
  slips are misconceptions that greedy decoding repeats, so greedy accuracy is imperfect too.
* ``hinted_fraction · B`` *hinted* prompts (the answer shown) followed by clean gold rationales,
  so the hinted guide ``q(z | x, y)`` is clearly better than ``p_θ(z | x)``.

The loss is the mean per-token negative log-likelihood ``-Σ_n log p_θ(z_n | x_n) / Σ_n |z_n|``
(tokens up to and including EOS); all parameters (soft prompt included, so the soft-prompted
model starts as the base model) are trained with Adam (warmup, cosine decay, clipping),
``chunk`` jitted steps per call. Defaults: 1500 steps of 64 sequences, about 1.5 minutes per
task on 2 CPU cores; held-out accuracy falls with ``k``.

:func:`load_or_pretrain` caches the parameters under ``cache_dir`` (default: ``$PPL_CACHE`` or
``~/.cache/ppl-jax/trice``), keyed by task, seed and a hash of the configuration, as one
:func:`ppl.transforms.save_checkpoint` file (no pickle; a SHA-256 checksum; the task, seed and
whole configuration as its identity); a missing file retrains, and so does one that fails its
checks (corrupt, modified, or another configuration's), with a warning.

Example:
    >>> import jax
    >>> from ppl.models.trice import pretrain, tasks
    >>> params = pretrain.load_or_pretrain("chain-sum", seed=0)  # doctest: +SKIP
    >>> heldout = tasks.make_split("chain-sum", 600, seed=0, split="heldout")
    >>> pretrain.evaluate_accuracy(jax.random.key(0), params, heldout, greedy=False)  # doctest: +SKIP
    {3: 0.51, 4: 0.43, 5: 0.41, 6: 0.33, 7: 0.32, 8: 0.26}
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ppl.models.trice import tasks
from ppl.models.trice import transformer as tf

from ppl import transforms as T

#: Bump when the data, model or training code changes what a configuration produces.
FORMAT_VERSION = 2


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Pretraining settings (all of them enter the cache key)."""

    steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup: int = 100
    corruption: float = 0.1
    slip_fraction: float = 0.12
    slip_rate: float = 0.6
    hinted_fraction: float = 0.5
    hinted_slips: bool = True
    pool_size: int = 20000
    chunk: int = 50
    model: tf.Config = dataclasses.field(default_factory=tf.Config)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or self.pool_size < 1 or self.chunk < 1:
            raise ValueError("steps, chunk and pool_size must be >= 1 and batch_size >= 2")
        for name in ("corruption", "slip_fraction", "slip_rate", "hinted_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


DEFAULT = PretrainConfig()


# -- training --------------------------------------------------------------------------
def _optimizer(config: PretrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, min(config.warmup, config.steps), config.steps, config.learning_rate * 0.05
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


class Noise(NamedTuple):
    """The scratchpad noise as arrays (so changing it does not recompile the training step)."""

    corruption: jax.Array
    slips: jax.Array
    slip_rate: jax.Array


def noise_of(task: str, config: PretrainConfig) -> Noise:
    """``config``'s noise: its corruption, the task's :func:`tasks.slip_table`, its slip rate."""
    table = tasks.slip_table(task, config.slip_fraction)
    return Noise(jnp.float32(config.corruption), jnp.asarray(table), jnp.float32(config.slip_rate))


def mixture_batch(
    task: str, pool: tasks.Example, key: jax.Array, config: PretrainConfig, noise: Noise | None = None
) -> tuple[jax.Array, jax.Array]:
    """One minibatch ``(prompts (B, L), rationales (B, R))``: noisy unhinted, then hinted.

    Hinted rationales are clean, or with ``config.hinted_slips`` carry the same systematic slips
    (no random corruption) with their last step replaced by the answer: the guide is right by
    copying the answer it is shown, and no clean algorithm is learned that the unhinted model
    could simply switch to, so tuning must fix the slips one context at a time. ``noise``
    defaults to :func:`noise_of` ``(task, config)``.
    """
    noise = noise_of(task, config) if noise is None else noise
    n_hinted = round(config.batch_size * config.hinted_fraction)
    n_plain = config.batch_size - n_hinted
    k_plain, k_hinted, k_corrupt = jax.random.split(key, 3)
    pool_size = pool.k.shape[0]
    plain = jax.tree.map(lambda a: a[jax.random.randint(k_plain, (n_plain,), 0, pool_size)], pool)
    hinted = jax.tree.map(lambda a: a[jax.random.randint(k_hinted, (n_hinted,), 0, pool_size)], pool)

    def noisy(q: jax.Array, s: jax.Array, k: jax.Array, key: jax.Array) -> jax.Array:
        return tasks.scratchpad(task, q, s, k, key, noise.corruption, noise.slips, noise.slip_rate)

    def rationalized(q: jax.Array, s: jax.Array, k: jax.Array, y: jax.Array, key: jax.Array) -> jax.Array:
        z = tasks.scratchpad(task, q, s, k, key, 0.0, noise.slips, noise.slip_rate)
        return z.at[k - 1].set(y)

    k_c1, k_c2 = jax.random.split(k_corrupt)
    corrupted = jax.vmap(noisy)(plain.question, plain.start, plain.k, jax.random.split(k_c1, n_plain))
    guide = hinted.rationale
    if config.hinted_slips:
        keys = jax.random.split(k_c2, n_hinted)
        guide = jax.vmap(rationalized)(hinted.question, hinted.start, hinted.k, hinted.answer, keys)
    return (
        jnp.concatenate([plain.prompt, hinted.hinted_prompt]),
        jnp.concatenate([corrupted, guide]),
    )


def loss_fn(params: tf.Params, prompts: jax.Array, rationales: jax.Array) -> jax.Array:
    """Mean negative log-likelihood per rationale token (up to and including EOS)."""
    tokens = jnp.sum(~tf.after_eos(rationales))
    return -jnp.sum(tf.sequence_log_prob(params, prompts, rationales)) / tokens


def _train_chunk(task: str, config: PretrainConfig) -> Any:
    """Jitted ``(params, opt_state, pool, keys (chunk,), noise) -> (params, opt_state, losses (chunk,))``."""
    return _compiled_chunk(
        task, dataclasses.replace(config, corruption=0.0, slip_fraction=0.0, slip_rate=0.0)
    )


@functools.cache
def _compiled_chunk(task: str, config: PretrainConfig) -> Any:
    optimizer = _optimizer(config)

    @jax.jit
    def run(params: tf.Params, opt_state: Any, pool: tasks.Example, keys: jax.Array, noise: Noise) -> Any:
        def step(carry: tuple, key: jax.Array) -> tuple[tuple, jax.Array]:
            params, opt_state = carry
            prompts, rationales = mixture_batch(task, pool, key, config, noise)
            loss, grads = jax.value_and_grad(loss_fn)(params, prompts, rationales)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), keys)
        return params, opt_state, losses

    return run


@dataclasses.dataclass
class PretrainResult:
    """Pretrained parameters, the loss per step, and the wall time in seconds (compilation included)."""

    params: tf.Params
    losses: np.ndarray
    wall_s: float


def pretrain(
    task: str, seed: int, config: PretrainConfig = DEFAULT, progress: bool = False
) -> PretrainResult:
    """Pretrain a fresh model (initialized from ``seed``) on ``task``'s corrupted/hinted mixture."""
    tasks.check_task(task)
    start = time.perf_counter()
    pool = tasks.make_split(task, config.pool_size, seed, split="pretrain")
    key_init, key_train = jax.random.split(jax.random.key(seed))
    params = tf.init(key_init, config.model)
    opt_state = _optimizer(config).init(params)
    run = _train_chunk(task, config)
    noise = noise_of(task, config)
    keys = jax.random.split(key_train, config.steps)
    losses = []
    for begin in range(0, config.steps, config.chunk):  # a shorter last chunk compiles once more
        params, opt_state, chunk_losses = run(
            params, opt_state, pool, keys[begin : begin + config.chunk], noise
        )
        losses.append(np.asarray(chunk_losses))
        if progress:
            done = min(begin + config.chunk, config.steps)
            print(f"{task}: step {done}/{config.steps}, loss {losses[-1].mean():.4f}", flush=True)
    return PretrainResult(params, np.concatenate(losses), time.perf_counter() - start)


# -- evaluation ------------------------------------------------------------------------
def evaluate_accuracy(
    key: jax.Array,
    params: tf.Params,
    split: tasks.Example,
    hinted: bool = False,
    greedy: bool = True,
    samples: int = 1,
) -> dict[int, float]:
    """Accuracy per k: the fraction of rationales with ``c(z, y) = 1``.

    ``greedy``: argmax decoding (``key`` unused); otherwise ``samples`` rationales per question
    drawn at temperature 1 (the mean estimates ``p_θ(y | x)``). ``hinted``: decode from the
    hinted prompts (the guide ``q(z | x, y)``).
    """
    prompts = split.hinted_prompt if hinted else split.prompt
    if greedy:
        hits = tasks.correct(tf.greedy_decode(params, prompts), split.answer)[None]
    else:
        many = jnp.tile(prompts, (samples, 1))  # (samples * n, L)
        z = tf.sample_rationales(key, params, many).reshape(samples, *split.rationale.shape)
        hits = tasks.correct(z, split.answer)
    hits = np.asarray(hits, np.float64).mean(0)
    ks = np.asarray(split.k)
    return {int(k): float(hits[ks == k].mean()) for k in np.unique(ks)}


def mean_accuracy(per_k: dict[int, float]) -> float:
    """The unweighted mean over k of a per-k accuracy dict."""
    return float(np.mean(list(per_k.values())))


# -- the disk cache --------------------------------------------------------------------
def default_cache_dir() -> pathlib.Path:
    """``$PPL_CACHE`` if set, else ``~/.cache/ppl-jax/trice``."""
    env = os.environ.get("PPL_CACHE")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "ppl-jax" / "trice"


def config_hash(task: str, config: PretrainConfig) -> str:
    """A short hash of the task, the configuration and :data:`FORMAT_VERSION`."""
    record = {"version": FORMAT_VERSION, "task": task, "config": dataclasses.asdict(config)}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(task: str, seed: int, config: PretrainConfig = DEFAULT, cache_dir: Any = None) -> pathlib.Path:
    """Where :func:`load_or_pretrain` keeps the parameters of ``(task, seed, config)``."""
    root = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"{tasks.check_task(task)}-seed{seed}-{config_hash(task, config)}.npz"


def cache_identity(task: str, seed: int, config: PretrainConfig) -> dict[str, Any]:
    """The identity a cached file must carry: format version, task, seed, whole configuration."""
    return {
        "kind": "ppl.models.trice.pretrain",
        "version": FORMAT_VERSION,
        "task": task,
        "seed": int(seed),
        "config": dataclasses.asdict(config),
    }


def load_params(path: pathlib.Path, task: str, seed: int, config: PretrainConfig) -> tf.Params:
    """Read parameters saved by :func:`save_params` for ``(task, seed, config)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is unreadable, corrupt or modified (checksum), or of another task,
            seed or configuration (:func:`ppl.transforms.load_checkpoint`'s message).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no cached parameters at {os.fspath(path)!r}")
    like = tf.init(jax.random.key(0), config.model)
    return T.load_checkpoint(path, like, cache_identity(task, seed, config))


def save_params(path: pathlib.Path, params: tf.Params, task: str, seed: int, config: PretrainConfig) -> None:
    """Write parameters atomically with their identity and a checksum (the folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    T.save_checkpoint(path, params, cache_identity(task, seed, config))


def load_or_pretrain(
    task: str,
    seed: int,
    cache_dir: Any = None,
    config: PretrainConfig = DEFAULT,
    progress: bool = False,
) -> tf.Params:
    """The pretrained parameters of ``(task, seed, config)``: from the cache, or trained and cached.

    A missing cache file is trained and written; one that fails its checks (unreadable, corrupt,
    modified, or of another configuration) is retrained and overwritten, with a warning. The
    training record (loss curve summary, wall time) goes beside it as strict JSON.
    """
    path = cache_path(task, seed, config, cache_dir)
    try:
        return load_params(path, task, seed, config)
    except FileNotFoundError:
        pass
    except Exception as e:  # ValueError from the checks; a damaged archive can fail inside zipfile
        warnings.warn(f"retraining the base model: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
    result = pretrain(task, seed, config, progress)
    save_params(path, result.params, task, seed, config)
    record = {
        "task": task,
        "seed": seed,
        "config": dataclasses.asdict(config),
        "wall_s": result.wall_s,
        "final_loss": float(result.losses[-min(50, len(result.losses)) :].mean()),
    }
    T.write_json(record, path.with_suffix(".json"))
    return result.params
