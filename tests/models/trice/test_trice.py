"""TRICE on the transformer: the program's estimators are exactly TRICE's formulas; training
runs are reproducible and resumable; bad settings are refused."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.models.trice import tasks, train, trice
from ppl.models.trice import transformer as tf

M = 8


@pytest.fixture(scope="module")
def setup():
    base = tf.init(jax.random.key(0), tf.Config())
    batch = tasks.make_split("chain-sum", M, seed=0)
    # Half of the memories are the gold rationales (correct), half guide samples (mostly wrong).
    guide = tf.sample_rationales(jax.random.key(1), base, batch.hinted_prompt)
    memory = jnp.where((jnp.arange(M) % 2 == 0)[:, None], batch.rationale, guide)
    return base, batch, memory


def tree_allclose(a, b, **kw):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, **kw)


@pytest.mark.parametrize("sites", trice.SITES)
def test_cot_model_observes_correctness(setup, sites) -> None:
    base, batch, _ = setup
    model = trice.cot_model(sites=sites)
    trace = model.simulate(jax.random.key(3), base, trice.Question(batch.prompt[0], batch.answer[0]))
    z = trice.rationales(trace.choices)
    assert trace.choices[trice.OBSERVED] == tasks.correct(z, batch.answer[0])
    np.testing.assert_allclose(trace.score, tf.sequence_log_prob(base, batch.prompt[0], z), rtol=1e-5)


def test_both_site_forms_are_the_same_distribution(setup) -> None:
    base, batch, memory = setup
    question = trice.Question(batch.prompt[1], batch.answer[1])
    scores = [
        trice.cot_model(sites=sites).assess(
            {**trice.memory(memory[1], sites), trice.OBSERVED: 1.0}, base, question
        )[0]
        for sites in trice.SITES
    ]
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5)
    with pytest.raises(ValueError, match="unknown rationale sites 'words'; choose from sequence, tokens"):
        trice.cot_model(sites="words")


@pytest.mark.parametrize("sites", trice.SITES)
@pytest.mark.parametrize("name", ["basic", "control_variate"])
def test_estimators_equal_trices_formulas(setup, name, sites) -> None:
    """Same key, same chains: the transforms' gradient is (1/Σv) Σ v ∇log p(z') [− v β ∇log p(z̃)]."""
    base, batch, memory = setup
    est = trice.estimator(trice.cot_model(sites=sites), name)
    (value, step), grad, _ = est.value_and_grad(
        jax.random.key(4), base, trice.questions(batch), trice.observations(M), trice.memory(memory, sites)
    )
    new, proposal = trice.rationales(step.state), trice.rationales(step.proposal)
    hit = tasks.correct(proposal, batch.answer)
    np.testing.assert_array_equal(step.accepted, hit)
    np.testing.assert_array_equal(new, jnp.where(hit[:, None], proposal, memory))
    v = tasks.correct(new, batch.answer).astype(jnp.float32)
    np.testing.assert_array_equal(step.valid, v > 0)
    c = hit.astype(jnp.float32)
    beta = jnp.array([(c.sum() - c[m]) / (v.sum() - v[m]) for m in range(M)]) if name != "basic" else 0.0 * c

    def by_hand(params):
        memory_term = jnp.sum(v * tf.sequence_log_prob(params, batch.prompt, new))
        proposal_term = jnp.sum(v * beta * tf.sequence_log_prob(params, batch.prompt, proposal))
        return (memory_term - proposal_term) / v.sum(), memory_term / v.sum()

    (_, expected_value), expected = jax.value_and_grad(lambda p: by_hand(p), has_aux=True)(base)
    expected = jax.grad(lambda p: by_hand(p)[0])(base)
    np.testing.assert_allclose(value, expected_value, rtol=1e-5)
    tree_allclose(grad, expected, rtol=2e-3, atol=2e-5)


def test_soft_prompt_mode_differentiates_the_soft_prompt_only() -> None:
    base = tf.init(jax.random.key(0), tf.Config(soft_prompt=4))
    params, frozen = tf.partition(base, "soft_prompt")
    batch = tasks.make_split("chain-sum", M, seed=1)
    est = trice.estimator(trice.cot_model(frozen), "control_variate")
    memory = trice.memory(jnp.asarray(batch.rationale))
    (_, step), grad, _ = est.value_and_grad(
        jax.random.key(0), params, trice.questions(batch), trice.observations(M), memory
    )
    assert grad.soft_prompt.shape == (4, 64) and float(jnp.abs(grad.soft_prompt).sum()) > 0
    assert jax.tree_util.tree_leaves(grad.model) == []
    assert bool(jnp.all(step.valid))


SMALL = train.TrainConfig(
    steps=4, batch_size=8, eval_every=2, star_steps=3, train_eval=16, checkpoint_every=2
)


@pytest.fixture(scope="module")
def splits():
    return tasks.make_splits("chain-sum", 32, 30, seed=0)


@pytest.fixture(scope="module")
def cv_run(setup, splits):
    """An uninterrupted TRICE-CV run (seed 5), shared by the reproducibility and resume tests."""
    return train.train("trice-cv", setup[0], *splits, SMALL, seed=5)


def test_fixed_keys_give_identical_runs(setup, splits, cv_run) -> None:
    b = train.train("trice-cv", setup[0], *splits, SMALL, seed=5)
    tree_allclose(cv_run.params, b.params, rtol=0, atol=0)
    np.testing.assert_array_equal(cv_run.state.memory, b.state.memory)
    assert cv_run.history == b.history


class Stop(Exception):
    pass


def stop_at(text: str):
    """A ``log`` that interrupts the run when it reports ``text``."""

    def log(line: str) -> None:
        if text in line:
            raise Stop

    return log


def interrupted(method, base, splits, path, text, config=SMALL, seed=5):
    with pytest.raises(Stop):
        train.train(method, base, *splits, config, seed=seed, checkpoint=path, log=stop_at(text))
    assert path.exists()


def test_a_resumed_run_equals_an_uninterrupted_one(setup, splits, cv_run, tmp_path) -> None:
    base, whole = setup[0], cv_run
    path = tmp_path / "run.npz"
    interrupted("trice-cv", base, splits, path, "step 2:")
    resumed = train.train("trice-cv", base, *splits, SMALL, seed=5, checkpoint=path)
    tree_allclose(resumed.params, whole.params, rtol=0, atol=0)
    np.testing.assert_array_equal(resumed.state.memory, whole.state.memory)
    tree_allclose(resumed.state.opt_state, whole.state.opt_state, rtol=0, atol=0)
    assert [h["step"] for h in resumed.history] == [0, 2, 4]
    assert resumed.history == whole.history  # the evaluations before the stop come from the file
    # The finished run's file holds its last evaluation: it returns without training.
    again = train.train("trice-cv", base, *splits, SMALL, seed=5, checkpoint=path)
    assert again.history == whole.history and again.step_ms is None
    tree_allclose(again.params, whole.params, rtol=0, atol=0)


@pytest.mark.slow
def test_a_resumed_star_run_equals_an_uninterrupted_one(setup, splits, tmp_path) -> None:
    base = setup[0]
    longer = dataclasses.replace(SMALL, steps=16)  # a budget of 128 rationales: 2-3 iterations
    whole = train.train("star", base, *splits, longer, seed=2)
    assert len(whole.history) >= 3
    path = tmp_path / "star.npz"
    interrupted("star", base, splits, path, "star iteration 1:", config=longer, seed=2)
    resumed = train.train("star", base, *splits, longer, seed=2, checkpoint=path)
    tree_allclose(resumed.params, whole.params, rtol=0, atol=0)
    assert resumed.history == whole.history


def test_a_modified_checkpoint_is_refused(setup, splits, tmp_path) -> None:
    base = setup[0]
    path = tmp_path / "run.npz"
    interrupted("gold", base, splits, path, "step 2:")
    original = path.read_bytes()
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    name = max((n for n in arrays if n != "meta"), key=lambda n: arrays[n].size)
    # Bytes flipped inside the largest parameter array: a checksum fails (the archive's CRC-32
    # of that array, or the checkpoint's SHA-256 over every array and the identity).
    data = bytearray(original)
    at = original.index(arrays[name].tobytes()[:64]) + 16
    data[at : at + 8] = bytes(b ^ 0xFF for b in data[at : at + 8])
    path.write_bytes(bytes(data))
    with pytest.raises(train.CheckpointError, match=r"Bad CRC-32|checksum mismatch"):
        train.train("gold", base, *splits, SMALL, seed=5, checkpoint=path)
    # An array changed and the archive rewritten consistently (a deliberate edit): the SHA-256
    # over the arrays and the identity no longer matches.
    arrays[name] = arrays[name] + np.asarray(1, arrays[name].dtype)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(train.CheckpointError, match="checksum mismatch, the file is corrupt or was modified"):
        train.train("gold", base, *splits, SMALL, seed=5, checkpoint=path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(train.CheckpointError, match="cannot be read as a ppl checkpoint"):
        train.train("gold", base, *splits, SMALL, seed=5, checkpoint=path)
    # Nothing in the file is unpickled: an object array planted in it is refused.
    with open(path, "wb") as f:
        np.savez(f, meta=np.array([{"x": 1}], dtype=object))
    with pytest.raises(train.CheckpointError, match="cannot be read as a ppl checkpoint"):
        train.train("gold", base, *splits, SMALL, seed=5, checkpoint=path)


@pytest.mark.slow
def test_another_runs_checkpoint_is_refused(setup, splits, tmp_path) -> None:
    """A checkpoint of method A (or of another configuration, seed or base model) is never resumed
    as method B: the error names what differs."""
    base = setup[0]
    path = tmp_path / "run.npz"
    interrupted("direct", base, splits, path, "step 2:")
    with pytest.raises(
        train.CheckpointError, match=r"belongs to another run \(method: stored 'direct', this run 'gold'\)"
    ):
        train.train("gold", base, *splits, SMALL, seed=5, checkpoint=path)
    with pytest.raises(train.CheckpointError, match=r"belongs to another run \(seed: stored 5, this run 6\)"):
        train.train("direct", base, *splits, SMALL, seed=6, checkpoint=path)
    faster = dataclasses.replace(SMALL, learning_rate=1e-3)
    with pytest.raises(
        train.CheckpointError, match=r"belongs to another run \(config: stored .*'learning_rate'"
    ):
        train.train("direct", base, *splits, faster, seed=5, checkpoint=path)
    other_base = tf.init(jax.random.key(9), tf.Config())
    with pytest.raises(train.CheckpointError, match=r"belongs to another run \(base: stored"):
        train.train("direct", other_base, *splits, SMALL, seed=5, checkpoint=path)
    # The matching run resumes it.
    resumed = train.train("direct", base, *splits, SMALL, seed=5, checkpoint=path)
    assert [h["step"] for h in resumed.history] == [0, 2, 4]


@pytest.mark.parametrize("method", [m for m in train.METHODS if m != "trice-cv"])
def test_every_method_runs_and_spends_the_same_sampling_budget(setup, splits, method) -> None:
    result = train.train(method, setup[0], *splits, SMALL, seed=0)
    last = result.history[-1]
    assert 0.0 <= last["heldout_mean"] <= 1.0 and 0.0 <= last["train_p"] <= 1.0
    if method in ("direct", "gold"):
        assert last["sampled"] == 0
    elif method == "star":
        assert last["sampled"] >= SMALL.steps * SMALL.batch_size
    else:
        assert last["sampled"] == SMALL.steps * SMALL.batch_size


def test_bad_settings(setup, splits) -> None:
    base = setup[0]
    with pytest.raises(ValueError, match="unknown method 'trice'; choose from trice-cv, trice-basic"):
        train.train("trice", base, *splits, SMALL)
    with pytest.raises(
        ValueError, match=r"batch_size must be in \[2, 32\] \(the training questions\), got 64"
    ):
        train.train("gold", base, *splits, train.TrainConfig(batch_size=64))
    with pytest.raises(ValueError, match="unknown tuning mode 'lora'; choose from soft_prompt, full"):
        train.train("gold", base, *splits, train.TrainConfig(mode="lora"))
    with pytest.raises(ValueError, match="unknown TRICE estimator 'cv'; choose from basic, control_variate"):
        trice.estimator(trice.cot_model(), "cv")
    with pytest.raises(ValueError, match="the subsampled TRICE estimator needs samples=L"):
        trice.estimator(trice.cot_model(), "subsampled")
    with pytest.raises(
        ValueError, match=r"TrainConfig\.learning_rate must be a finite positive number, got nan"
    ):
        train.TrainConfig(learning_rate=float("nan"))
    with pytest.raises(ValueError, match=r"TrainConfig\.steps must be a positive integer, got 0"):
        train.TrainConfig(steps=0)
    with pytest.raises(ValueError, match="batch_size must be at least particles = 4, got 2"):
        train.train("rejection", base, *splits, dataclasses.replace(SMALL, batch_size=2))
    with pytest.raises(ValueError, match=r"checkpoint path .* the folder .* does not exist"):
        train.train("gold", base, *splits, SMALL, checkpoint="/nonexistent-folder/run.npz")


def test_a_diverging_run_stops_with_the_step(setup, splits) -> None:
    huge = dataclasses.replace(SMALL, learning_rate=1e38)
    with pytest.raises(
        train.DivergedError, match=r"gold step \d: (loss not finite|a parameter became non-finite)"
    ):
        train.train("gold", setup[0], *splits, huge)
