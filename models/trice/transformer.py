r"""A small causal transformer over the task vocabulary, and its rationale sampler as a generative function.

Model: decoder-only, token + learned position embeddings, ``layers`` pre-LayerNorm blocks
(``heads``-head causal self-attention, GELU MLP), final LayerNorm, a linear head to
:data:`tasks.VOCAB_SIZE` logits (defaults: d = 64, 4 heads, MLP 256, 2 layers, ≈ 0.1M
parameters). An optional *soft prompt* of ``P`` learned vectors is prepended to every input.

Sequence layout for one question (prompt left-padded with PAD to ``PROMPT_LEN``)::

    [soft prompt (P)] [PAD .. PAD prompt tokens (PROMPT_LEN)] [z_1 .. z_R]
    positions: none    prompt token i of n -> i            z_t -> PROMPT_LEN + t - 1

PAD keys of the prompt are masked out (a query may still see itself), so PAD never reaches a real token.

    log p_θ(z | x) = Σ_{t ≤ T} log softmax(logits_t)[z_t],   T = the first EOS (or R if none),

every position after the first EOS being forced to PAD (log-probability 0). One teacher-forced
pass gives all ``logits_t`` (:func:`sequence_log_prob`); sampling runs a key/value cache, so each
token costs one single-position pass (:func:`sample_rationales`, :func:`greedy_decode`, and the
generative function :data:`rationale_program`). The *hinted guide* ``q(z | x, y)`` is the same
network on the hinted prompt: call the same functions with ``example.hinted_prompt``.

Parameters are a :class:`Params` pytree ``(soft_prompt, model)``; :func:`partition` splits it into
the trainable and frozen parts of a tuning mode (``"soft_prompt"`` or ``"full"``) and
:func:`combine` joins them back.

Example:
    >>> import jax
    >>> from ppl.models.trice import tasks, transformer as tf
    >>> params = tf.init(jax.random.key(0), tf.Config())
    >>> batch = tasks.make_split("chain-sum", 4, seed=0)
    >>> z = tf.sample_rationales(jax.random.key(1), params, batch.prompt)
    >>> tf.sequence_log_prob(params, batch.prompt, z).shape
    (4,)
    >>> trace = tf.rationale_program.simulate(jax.random.key(2), params, batch.prompt[0])
    >>> trace.choices["tokens"]["token"].shape
    (9,)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from ppl.models.trice import tasks

import ppl

MODES = ("soft_prompt", "full")
_MASKED = -1e30  # attention score of a masked key
_FORCED = -1e9  # logit of every token but PAD after EOS


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes of the network; ``soft_prompt`` is the number ``P`` of soft-prompt vectors (0: none)."""

    d_model: int = 64
    heads: int = 4
    mlp: int = 256
    layers: int = 2
    soft_prompt: int = 8
    vocab: int = tasks.VOCAB_SIZE
    prompt_len: int = tasks.PROMPT_LEN
    rationale_len: int = tasks.MAX_RATIONALE


# -- modules -----------------------------------------------------------------------
class Dense(eqx.Module):
    """``x @ w + b`` over the last axis."""

    w: jax.Array
    b: jax.Array

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.w + self.b


class LayerNorm(eqx.Module):
    """Normalize the last axis to zero mean and unit variance, then scale and shift."""

    scale: jax.Array
    bias: jax.Array

    def __call__(self, x: jax.Array) -> jax.Array:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + 1e-5) * self.scale + self.bias


class Block(eqx.Module):
    """Pre-LayerNorm block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    ln1: LayerNorm
    qkv: Dense
    out: Dense
    ln2: LayerNorm
    up: Dense
    down: Dense


class Transformer(eqx.Module):
    """Embeddings, blocks, final LayerNorm and the vocabulary head."""

    token_embed: jax.Array
    position_embed: jax.Array
    blocks: tuple[Block, ...]
    ln_f: LayerNorm
    head: Dense
    config: Config = eqx.field(static=True)


class Params(eqx.Module):
    """All parameters: ``soft_prompt`` ``(P, d)`` (or None) and the ``model``."""

    soft_prompt: jax.Array | None
    model: Transformer


def _dense(key: jax.Array, n_in: int, n_out: int, scale: float = 1.0) -> Dense:
    return Dense(jax.random.normal(key, (n_in, n_out)) * scale / math.sqrt(n_in), jnp.zeros(n_out))


def _norm(d: int) -> LayerNorm:
    return LayerNorm(jnp.ones(d), jnp.zeros(d))


def init(key: jax.Array, config: Config = Config()) -> Params:
    """Random parameters: N(0, 0.02²) embeddings and soft prompt, scaled-normal dense layers."""
    if config.d_model % config.heads:
        raise ValueError(f"d_model {config.d_model} is not divisible by heads {config.heads}")
    d = config.d_model
    k_tok, k_pos, k_soft, k_head, *k_blocks = jax.random.split(key, 4 + config.layers)
    residual = 1.0 / math.sqrt(2 * config.layers)
    blocks = []
    for kb in k_blocks:
        k1, k2, k3, k4 = jax.random.split(kb, 4)
        attention = (_dense(k1, d, 3 * d), _dense(k2, d, d, residual))
        mlp = (_dense(k3, d, config.mlp), _dense(k4, config.mlp, d, residual))
        blocks.append(Block(_norm(d), *attention, _norm(d), *mlp))
    positions = config.prompt_len + config.rationale_len
    embed = 0.02 * jax.random.normal(k_tok, (config.vocab, d))
    position_embed = 0.02 * jax.random.normal(k_pos, (positions, d))
    head = _dense(k_head, d, config.vocab)
    model = Transformer(embed, position_embed, tuple(blocks), _norm(d), head, config)
    soft = 0.02 * jax.random.normal(k_soft, (config.soft_prompt, d)) if config.soft_prompt else None
    return Params(soft, model)


def num_parameters(params: Params) -> int:
    """The number of scalar parameters."""
    return sum(x.size for x in jax.tree.leaves(params))


# -- tuning modes ------------------------------------------------------------------
def trainable_mask(params: Params, mode: str) -> Params:
    """A pytree of bools like ``params``: True on the leaves that ``mode`` trains."""
    if mode not in MODES:
        raise ValueError(f"unknown tuning mode {mode!r}; choose from {', '.join(MODES)}")
    if mode == "full":
        return jax.tree.map(lambda _: True, params)
    if params.soft_prompt is None:
        raise ValueError("soft_prompt mode needs a soft prompt: use Config(soft_prompt=P) with P > 0")
    return Params(True, jax.tree.map(lambda _: False, params.model))


def partition(params: Params, mode: str) -> tuple[Params, Params]:
    """``(trainable, frozen)`` for ``mode`` (``eqx.partition``; the other part's leaves are None).

    Differentiate a loss of ``combine(trainable, frozen)`` w.r.t. ``trainable`` only.
    """
    return eqx.partition(params, trainable_mask(params, mode))


def combine(trainable: Params, frozen: Params) -> Params:
    """Inverse of :func:`partition`."""
    return eqx.combine(trainable, frozen)


# -- the forward pass --------------------------------------------------------------
def _split_heads(x: jax.Array, heads: int) -> jax.Array:
    """``(T, d) -> (heads, T, d / heads)``."""
    return x.reshape(x.shape[0], heads, -1).transpose(1, 0, 2)


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax attention of ``q`` ``(H, Tq, e)`` over ``k, v`` ``(H, Tk, e)`` where ``mask`` ``(Tq, Tk)``."""
    scores = jnp.einsum("hqe,hke->hqk", q, k) / math.sqrt(q.shape[-1])
    weights = jax.nn.softmax(jnp.where(mask, scores, _MASKED), axis=-1)
    out = jnp.einsum("hqk,hke->hqe", weights, v)
    return out.transpose(1, 0, 2).reshape(q.shape[1], -1)


def _block(
    block: Block, x: jax.Array, heads: int, attend: Callable[[jax.Array, jax.Array, jax.Array], Any]
) -> tuple[jax.Array, Any]:
    """One block on ``x`` ``(T, d)``; ``attend(q, k, v)`` (heads split) returns ``(out, extra)``."""
    q, k, v = jnp.split(block.qkv(block.ln1(x)), 3, axis=-1)
    attended, extra = attend(_split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads))
    x = x + block.out(attended)
    return x + block.down(jax.nn.gelu(block.up(block.ln2(x)))), extra


def _embed(params: Params, tokens: jax.Array, positions: jax.Array) -> jax.Array:
    model = params.model
    return model.token_embed[tokens] + model.position_embed[positions]


def _prompt_layout(params: Params, prompt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Embedded ``[soft prompt, prompt]`` ``(P + L, d)`` and its key-validity mask ``(P + L,)``."""
    valid = prompt != tasks.PAD
    positions = jnp.maximum(jnp.cumsum(valid) - 1, 0)
    x = _embed(params, prompt, positions)
    if params.soft_prompt is not None:
        x = jnp.concatenate([params.soft_prompt, x])
        valid = jnp.concatenate([jnp.ones(params.soft_prompt.shape[0], bool), valid])
    return x, valid


def _check_prompt(config: Config, prompt: jax.Array) -> None:
    if prompt.shape[-1] != config.prompt_len:
        raise ValueError(f"prompt must have {config.prompt_len} tokens (left-padded), got {prompt.shape[-1]}")


def _full_forward(params: Params, prompt: jax.Array, inputs: jax.Array) -> tuple[jax.Array, list]:
    """Logits ``(P + L + n, V)`` of ``[soft, prompt, inputs]`` and each layer's keys/values."""
    config = params.model.config
    x, valid = _prompt_layout(params, prompt)
    x = jnp.concatenate([x, _embed(params, inputs, config.prompt_len + jnp.arange(inputs.shape[0]))])
    valid = jnp.concatenate([valid, jnp.ones(inputs.shape[0], bool)])
    n = x.shape[0]
    causal = jnp.tril(jnp.ones((n, n), bool))
    mask = causal & (valid[None, :] | jnp.eye(n, dtype=bool))
    cache = []
    for block in params.model.blocks:
        x, kv = _block(block, x, config.heads, lambda q, k, v: (_attend(q, k, v, mask), (k, v)))
        cache.append(kv)
    model = params.model
    return model.head(model.ln_f(x)), cache


def rationale_logits(params: Params, prompt: jax.Array, rationale: jax.Array) -> jax.Array:
    """Teacher-forced next-token logits ``(R, V)``: row t predicts ``z_{t+1}`` from the prompt and ``z_{≤t}``.

    One example (``prompt`` ``(PROMPT_LEN,)``, ``rationale`` ``(R,)``); vmap for batches.
    The rows are the raw network logits: PAD forcing after EOS is applied by the callers.
    """
    _check_prompt(params.model.config, prompt)
    logits, _ = _full_forward(params, prompt, rationale[:-1])
    start = logits.shape[0] - rationale.shape[0]
    return logits[start:]


def next_token_logits(params: Params, prompt: jax.Array, prefix: jax.Array) -> jax.Array:
    """Logits ``(V,)`` of the token after ``prefix`` ``(t,)``, ``0 <= t < R``: the plain, uncached pass."""
    _check_prompt(params.model.config, prompt)
    return _full_forward(params, prompt, jnp.asarray(prefix, jnp.int32))[0][-1]


def after_eos(rationale: jax.Array) -> jax.Array:
    """True at positions strictly after the first EOS (the forced-PAD part), ``(..., R)``."""
    is_eos = (jnp.asarray(rationale) == tasks.EOS).astype(jnp.int32)
    return (jnp.cumsum(is_eos, axis=-1) - is_eos) > 0


def token_log_probs(params: Params, prompt: jax.Array, rationale: jax.Array) -> jax.Array:
    """``log p_θ(z_t | x, z_{<t})`` per position ``(..., R)``, 0 after the first EOS."""

    def one(p: jax.Array, z: jax.Array) -> jax.Array:
        logp = jax.nn.log_softmax(rationale_logits(params, p, z), axis=-1)
        picked = jnp.take_along_axis(logp, z[:, None], axis=-1)[:, 0]
        return jnp.where(after_eos(z), 0.0, picked)

    return _batched(one, prompt, rationale)


@jax.jit
def sequence_log_prob(params: Params, prompt: jax.Array, rationale: jax.Array) -> jax.Array:
    """``log p_θ(z | x)`` ``(...)`` of rationales ``(..., R)`` given prompts ``(..., PROMPT_LEN)``.

    The sum over positions up to and including the first EOS, from one teacher-forced pass
    per sequence. Differentiable in ``params``; batched over matching leading axes.
    """
    return token_log_probs(params, prompt, rationale).sum(-1)


def _batched(fn: Callable[..., jax.Array], prompt: jax.Array, *rest: jax.Array) -> jax.Array:
    """``fn`` on one example, vmapped over the (flattened) leading axes of its arguments."""
    prompt = jnp.asarray(prompt)
    lead = prompt.shape[:-1]
    flat = [prompt.reshape(-1, prompt.shape[-1])] + [
        jnp.asarray(r).reshape(-1, *r.shape[len(lead) :]) for r in rest
    ]
    out = jax.vmap(fn)(*flat)
    return out.reshape(*lead, *out.shape[1:])


# -- the key/value cache -----------------------------------------------------------
class Cache(eqx.Module):
    """Keys and values ``(layers, heads, S, e)``, ``S = P + PROMPT_LEN + R``; key validity ``(S,)``."""

    keys: jax.Array
    values: jax.Array
    valid: jax.Array


def prefill(params: Params, prompt: jax.Array) -> tuple[Cache, jax.Array]:
    """Run ``[soft, prompt]`` once: the cache and the logits ``(V,)`` of the first rationale token."""
    config = params.model.config
    _check_prompt(config, prompt)
    logits, kv = _full_forward(params, prompt, jnp.zeros((0,), jnp.int32))
    _, valid = _prompt_layout(params, prompt)
    extra = config.rationale_len
    pad = lambda a: jnp.pad(a, ((0, 0), (0, extra), (0, 0)))  # noqa: E731
    keys = jnp.stack([pad(k) for k, _ in kv])
    values = jnp.stack([pad(v) for _, v in kv])
    return Cache(keys, values, jnp.concatenate([valid, jnp.ones(extra, bool)])), logits[-1]


def extend(params: Params, cache: Cache, token: jax.Array, t: jax.Array) -> tuple[Cache, jax.Array]:
    """Feed rationale token ``z_{t+1}`` (``t`` 0-based): the updated cache and the logits of ``z_{t+2}``."""
    config = params.model.config
    index = cache.keys.shape[2] - config.rationale_len + t
    x = _embed(params, token[None], (config.prompt_len + t)[None])
    mask = (jnp.arange(cache.keys.shape[2]) <= index) & cache.valid
    keys, values = [], []
    for layer, block in enumerate(params.model.blocks):

        def attend(q: jax.Array, k: jax.Array, v: jax.Array, layer: int = layer) -> Any:
            k_all = jax.lax.dynamic_update_slice_in_dim(cache.keys[layer], k, index, axis=1)
            v_all = jax.lax.dynamic_update_slice_in_dim(cache.values[layer], v, index, axis=1)
            return _attend(q, k_all, v_all, mask[None, :]), (k_all, v_all)

        x, (k_all, v_all) = _block(block, x, config.heads, attend)
        keys.append(k_all)
        values.append(v_all)
    model = params.model
    logits = model.head(model.ln_f(x))[0]
    return Cache(jnp.stack(keys), jnp.stack(values), cache.valid), logits


def decode(
    params: Params,
    prompt: jax.Array,
    choose: Callable[[jax.Array, Any], jax.Array],
    xs: Any = None,
    scan: Callable[..., Any] = jax.lax.scan,
) -> tuple[jax.Array, jax.Array]:
    """Generate one rationale with the cache: ``(tokens (R,), the logits each token was chosen from (R, V))``.

    ``choose(logits, x)`` picks token t from its logits (already PAD-forced after EOS) and
    ``x``, step t's slice of ``xs``; ``scan`` is ``jax.lax.scan`` or ``ppl.scan``.
    """
    config = params.model.config
    cache, logits = prefill(params, prompt)
    pad_only = jnp.full((config.vocab,), _FORCED).at[tasks.PAD].set(0.0)

    def step(carry: tuple, x: Any) -> tuple[tuple, tuple[jax.Array, jax.Array]]:
        cache, logits, done, t = carry
        logits = jnp.where(done, pad_only, logits)
        token = jnp.asarray(choose(logits, x), jnp.int32)
        cache, next_logits = extend(params, cache, token, t)
        return (cache, next_logits, done | (token == tasks.EOS), t + 1), (token, logits)

    init_carry = (cache, logits, jnp.asarray(False), jnp.asarray(0, jnp.int32))
    _, (tokens, used) = scan(step, init_carry, xs, length=config.rationale_len)
    return tokens, used


def cached_logits(params: Params, prompt: jax.Array, rationale: jax.Array) -> jax.Array:
    """The logits ``(R, V)`` the cache decoder computes while fed ``rationale`` (for checking the cache)."""
    _, used = decode(params, prompt, lambda _, z: z, rationale)
    return used


@jax.jit
def sample_rationales(
    key: jax.Array, params: Params, prompts: jax.Array, temperature: float | jax.Array = 1.0
) -> jax.Array:
    """Rationales ``(..., R)`` sampled from ``softmax(logits / temperature)``, one per prompt ``(..., L)``.

    ``temperature = 1`` samples ``p_θ(z | x)`` exactly; PAD after EOS.
    """
    prompts = jnp.asarray(prompts)
    keys = jax.random.split(key, math.prod(prompts.shape[:-1])).reshape(prompts.shape[:-1])

    def one(prompt: jax.Array, k: jax.Array) -> jax.Array:
        step_keys = jax.random.split(k, params.model.config.rationale_len)
        choose = lambda logits, kt: jax.random.categorical(kt, logits / temperature)  # noqa: E731
        return decode(params, prompt, choose, step_keys)[0]

    return _batched(one, prompts, keys)


@jax.jit
def greedy_decode(params: Params, prompts: jax.Array) -> jax.Array:
    """The most likely next token at each step (argmax decoding), rationales ``(..., R)``."""
    return _batched(lambda p: decode(params, p, lambda logits, _: jnp.argmax(logits))[0], prompts)


# -- the generative function -------------------------------------------------------
@ppl.gen
def rationale_program(params: Params, prompt: jax.Array) -> jax.Array:
    """``z ~ p_θ(z | x)`` token by token: choices ``tokens/token`` ``(R,)``, each a Categorical.

    After EOS the Categorical puts all mass on PAD, so the trace's score is
    ``sequence_log_prob(params, prompt, z)``. Returns the rationale ``(R,)``. With the hinted
    prompt it is the guide ``q(z | x, y)``. One prompt; use ``ppl.vmap(rationale_program,
    in_axes=(None, 0))`` for a batch.
    """

    def choose(logits: jax.Array, _: Any) -> jax.Array:
        return ppl.sample("token", dist.Categorical(logits=logits))

    tokens, _ = decode(
        params, prompt, choose, None, scan=lambda f, c, xs, length: ppl.scan(f, c, xs, length, addr="tokens")
    )
    return tokens


def choice_map(rationale: jax.Array) -> dict[str, Any]:
    """The choice map of :data:`rationale_program` that holds ``rationale`` (for ``assess``)."""
    return {"tokens": {"token": jnp.asarray(rationale)}}
