"""The TRICE transformer (ppl.models.trice.transformer): log-probabilities, cache, sampling, tuning."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from ppl.models.trice import tasks
from ppl.models.trice import transformer as tf

R = tasks.MAX_RATIONALE
_next_logits = jax.jit(tf.next_token_logits)  # one compilation per prefix length
_rationale_logits = jax.jit(jax.vmap(tf.rationale_logits, in_axes=(None, 0, 0)))
_cached_logits = jax.jit(jax.vmap(tf.cached_logits, in_axes=(None, 0, 0)))
_after_eos = jax.jit(tf.after_eos)
_simulate = jax.jit(jax.vmap(tf.rationale_program.simulate, in_axes=(0, None, 0)))


def _eos_heavy(params: tf.Params, boost: float = 2.5) -> tf.Params:
    """Random parameters whose samples end (EOS) within a few tokens, so PAD forcing is exercised."""
    return eqx.tree_at(lambda p: p.model.head.b, params, params.model.head.b.at[tasks.EOS].add(boost))


@pytest.fixture(scope="module")
def params() -> tf.Params:
    return _eos_heavy(tf.init(jax.random.key(0)))


@pytest.fixture(scope="module")
def batch() -> tasks.Example:
    return jax.tree.map(lambda *x: jnp.concatenate(x), *(tasks.make_split(t, 4, seed=1) for t in tasks.TASKS))


def _garbled(batch: tasks.Example, seed: int = 0) -> jax.Array:
    """Rationales with random tokens and an early EOS in some rows, PAD after EOS."""
    z = jax.random.randint(jax.random.key(seed), batch.rationale.shape, 0, tasks.VOCAB_SIZE)
    z = z.at[0, 2].set(tasks.EOS).at[1, 0].set(tasks.EOS).at[2].set(jnp.where(z[2] == tasks.EOS, 3, z[2]))
    return jnp.where(_after_eos(z), tasks.PAD, z)


def test_shapes_and_size(params, batch):
    assert 80_000 < tf.num_parameters(params) < 130_000
    n = batch.prompt.shape[0]
    logits = _rationale_logits(params, batch.prompt, batch.rationale)
    assert logits.shape == (n, R, tasks.VOCAB_SIZE)
    lp = tf.sequence_log_prob(params, batch.prompt, batch.rationale)
    assert lp.shape == (n,) and lp.dtype == jnp.float32
    grid = tf.sequence_log_prob(params, batch.prompt.reshape(2, 4, -1), batch.rationale.reshape(2, 4, -1))
    np.testing.assert_allclose(grid.reshape(-1), lp, rtol=1e-6)
    z = tf.sample_rationales(jax.random.key(0), params, jnp.repeat(batch.prompt, 4, axis=0))
    assert z.shape == (4 * n, R) and z.dtype == jnp.int32
    assert tf.greedy_decode(params, batch.hinted_prompt).shape == (n, R)  # the hinted guide: same network
    with pytest.raises(ValueError, match="prompt must have 18 tokens"):
        tf.sequence_log_prob(params, batch.prompt[:, 1:], batch.rationale)


def test_log_prob_equals_naive_prefix_loop(params, batch):
    z = _garbled(batch)
    fast = np.asarray(tf.sequence_log_prob(params, batch.prompt, z))
    for i in range(z.shape[0]):
        naive = 0.0
        for t in range(R):
            logits = _next_logits(params, batch.prompt[i], z[i, :t])
            naive += float(jax.nn.log_softmax(logits)[z[i, t]])
            if int(z[i, t]) == tasks.EOS:
                break
        np.testing.assert_allclose(fast[i], naive, rtol=1e-5, atol=1e-4)
    # Whatever follows the first EOS does not count.
    junk = jnp.where(_after_eos(z), 5, z)
    np.testing.assert_allclose(tf.sequence_log_prob(params, batch.prompt, junk), fast, rtol=1e-6)


def test_gradient_matches_central_differences(batch):
    z = _garbled(batch)
    with jax.enable_x64(True):
        flat, unravel = ravel_pytree(
            jax.tree.map(lambda x: x.astype(jnp.float64), tf.init(jax.random.key(3)))
        )
        # One compilation serves the gradient and the function values.
        value_and_grad = jax.jit(
            jax.value_and_grad(lambda v: tf.sequence_log_prob(unravel(v), batch.prompt, z).sum())
        )
        grad = value_and_grad(flat)[1]
        assert grad.dtype == jnp.float64
        for seed in (1, 2):
            direction = jax.random.normal(jax.random.key(seed), flat.shape, flat.dtype)
            direction = direction / jnp.linalg.norm(direction)
            eps = 1e-5
            up, down = value_and_grad(flat + eps * direction)[0], value_and_grad(flat - eps * direction)[0]
            np.testing.assert_allclose(float(grad @ direction), float((up - down) / (2 * eps)), rtol=1e-7)


def test_cache_matches_full_forward(params, batch):
    z = _garbled(batch, seed=1)
    full = _rationale_logits(params, batch.prompt, z)
    cached = _cached_logits(params, batch.prompt, z)
    after = np.asarray(_after_eos(z))
    np.testing.assert_allclose(np.asarray(cached)[~after], np.asarray(full)[~after], atol=1e-4, rtol=1e-4)
    # After EOS the decoder's distribution is PAD with probability 1.
    forced = jax.nn.log_softmax(np.asarray(cached)[after], axis=-1)
    np.testing.assert_allclose(forced[:, tasks.PAD], 0.0, atol=1e-6)
    _, first = tf.prefill(params, batch.prompt[0])
    np.testing.assert_allclose(first, _next_logits(params, batch.prompt[0], jnp.zeros(0, int)), atol=1e-5)


def test_trace_score_equals_sequence_log_prob(params, batch):
    prompts = jnp.repeat(batch.prompt, 4, axis=0)
    traces = _simulate(jax.random.split(jax.random.key(5), prompts.shape[0]), params, prompts)
    z = traces.retval
    np.testing.assert_array_equal(traces.choices["tokens"]["token"], z)
    np.testing.assert_allclose(traces.score, tf.sequence_log_prob(params, prompts, z), rtol=1e-5, atol=1e-4)
    ends = np.asarray(_after_eos(z)).any(-1)
    assert 0.3 < ends.mean() < 1.0  # both rationales that end early and ones that run to R
    score, retval = tf.rationale_program.assess(tf.choice_map(z[0]), params, prompts[0])
    np.testing.assert_allclose(score, traces.score[0], rtol=1e-5)
    np.testing.assert_array_equal(retval, z[0])


def _check_pad_after_eos(z: np.ndarray) -> None:
    after = np.asarray(_after_eos(z))
    assert (z[after] == tasks.PAD).all()
    assert after.any()


def test_only_pad_after_eos(params, batch):
    prompts = jnp.repeat(batch.prompt, 8, axis=0)
    for temperature in (1.0, 3.0):
        _check_pad_after_eos(
            np.asarray(tf.sample_rationales(jax.random.key(1), params, prompts, temperature))
        )
    _check_pad_after_eos(np.asarray(tf.greedy_decode(params, batch.prompt)))
    traces = _simulate(jax.random.split(jax.random.key(2), prompts.shape[0]), params, prompts)
    _check_pad_after_eos(np.asarray(traces.retval))
    # PAD is impossible (log density -inf) after EOS for the program: e.g. EOS then a digit.
    bad = jnp.array([3, tasks.EOS, 4, *([tasks.PAD] * (R - 3))])
    score, _ = tf.rationale_program.assess(tf.choice_map(bad), params, batch.prompt[0])
    assert float(score) < -1e8


def test_sampler_draws_from_the_model(params, batch):
    prompts = jnp.broadcast_to(batch.prompt[0], (32, batch.prompt.shape[1]))  # the (32, L) shape used above
    draws = np.concatenate(
        [np.asarray(tf.sample_rationales(jax.random.key(i), params, prompts)[:, 0]) for i in range(100)]
    )
    freq = np.bincount(draws, minlength=tasks.VOCAB_SIZE) / draws.size  # 3200 first tokens
    prob = np.asarray(jax.nn.softmax(_next_logits(params, batch.prompt[0], jnp.zeros(0, int))))
    se = np.sqrt(prob * (1 - prob) / draws.size)
    assert np.all(np.abs(freq - prob) < 4.5 * se + 1e-3)


def test_greedy_and_keys_are_deterministic(params, batch):
    g1, g2 = tf.greedy_decode(params, batch.prompt), tf.greedy_decode(params, batch.prompt)
    np.testing.assert_array_equal(g1, g2)
    # Greedy = argmax of the uncached logits, step by step, until EOS.
    for i in range(2):
        for t in range(R):
            step = int(jnp.argmax(_next_logits(params, batch.prompt[i], g1[i, :t])))
            assert int(g1[i, t]) == step
            if step == tasks.EOS:
                break
    prompts = jnp.repeat(batch.prompt, 4, axis=0)
    a = tf.sample_rationales(jax.random.key(4), params, prompts)
    np.testing.assert_array_equal(a, tf.sample_rationales(jax.random.key(4), params, prompts))
    assert not np.array_equal(a, tf.sample_rationales(jax.random.key(5), params, prompts))
    t1 = tf.rationale_program.simulate(jax.random.key(4), params, batch.prompt[0])
    t2 = tf.rationale_program.simulate(jax.random.key(4), params, batch.prompt[0])
    np.testing.assert_array_equal(t1.retval, t2.retval)


def test_jit_and_vmap_agree_with_eager(params, batch):
    z = _garbled(batch)
    jitted = tf.sequence_log_prob(params, batch.prompt, z)
    mapped = jax.vmap(tf.sequence_log_prob, in_axes=(None, 0, 0))(params, batch.prompt, z)
    np.testing.assert_allclose(mapped, jitted, rtol=1e-5)
    with jax.disable_jit():
        eager = tf.sequence_log_prob(params, batch.prompt[:2], z[:2])
    np.testing.assert_allclose(jitted[:2], eager, rtol=1e-5)
    # A jitted, vmapped program trace = the eager one.
    keys = jax.random.split(jax.random.key(7), 32)
    prompts = jnp.repeat(batch.prompt, 4, axis=0)
    eager = tf.rationale_program.simulate(keys[5], params, prompts[5])
    np.testing.assert_array_equal(_simulate(keys, params, prompts).retval[5], eager.retval)


def test_soft_prompt_mode_trains_only_the_soft_prompt(params, batch):
    trainable, frozen = tf.partition(params, "soft_prompt")
    loss = lambda t: -tf.sequence_log_prob(tf.combine(t, frozen), batch.prompt, batch.rationale).mean()
    grads = jax.grad(loss)(trainable)
    assert float(jnp.abs(grads.soft_prompt).max()) > 0
    assert jax.tree.leaves(grads.model) == []  # the frozen part has no gradient leaves at all
    opt = optax.adam(0.1)
    updates, _ = opt.update(grads, opt.init(trainable), trainable)
    new = tf.combine(optax.apply_updates(trainable, updates), frozen)
    assert not np.allclose(new.soft_prompt, params.soft_prompt)
    for a, b in zip(jax.tree.leaves(new.model), jax.tree.leaves(params.model)):
        np.testing.assert_array_equal(a, b)
    # Full mode: every leaf is trainable and gets a gradient.
    full, rest = tf.partition(params, "full")
    assert jax.tree.leaves(rest) == []
    g_full = jax.grad(lambda p: -tf.sequence_log_prob(p, batch.prompt, batch.rationale).mean())(full)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g_full))
    with pytest.raises(ValueError, match="unknown tuning mode 'lora'; choose from soft_prompt, full"):
        tf.partition(params, "lora")


def test_without_soft_prompt(batch):
    plain = tf.init(jax.random.key(1), tf.Config(soft_prompt=0))
    assert plain.soft_prompt is None
    trace = tf.rationale_program.simulate(jax.random.key(0), plain, batch.prompt[0])
    np.testing.assert_allclose(
        trace.score, tf.sequence_log_prob(plain, batch.prompt[0], trace.retval), rtol=1e-5
    )
    assert tf.sequence_log_prob(plain, batch.prompt, batch.rationale).shape == (batch.prompt.shape[0],)
    with pytest.raises(ValueError, match="soft_prompt mode needs a soft prompt"):
        tf.partition(plain, "soft_prompt")
