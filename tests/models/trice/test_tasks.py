"""The TRICE tasks (ppl.models.trice.tasks): rules by hand, splits, the correctness check, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.models.trice import tasks
from ppl.models.trice.tasks import BOS, EOS, HINT, HOPS, PAD, SEP, START


def _rows(tokens) -> set[tuple[int, ...]]:
    return {tuple(r) for r in np.asarray(tokens).tolist()}


def test_chain_sum_by_hand():
    ex = tasks.make_example("chain-sum", [3, 4, 5, 9])
    # running sums 3, 7, 12 -> 2, 11 -> 1; answer (3 + 4 + 5 + 9) mod 10 = 1
    assert ex.rationale.tolist() == [3, 7, 2, 1, EOS, PAD, PAD, PAD, PAD]
    assert int(ex.answer) == 1 and int(ex.k) == 4
    pad = [PAD] * (tasks.PROMPT_LEN - 6)
    assert ex.prompt.tolist() == pad + [BOS, 3, 4, 5, 9, SEP]
    assert ex.hinted_prompt.tolist() == pad[2:] + [BOS, 3, 4, 5, 9, HINT, 1, SEP]
    assert tasks.to_text(ex.rationale) == "3 7 2 1 EOS"


def test_pointer_by_hand():
    a = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    ex = tasks.make_example("pointer", a, start=0, hops=4)
    # p1 = a[0] = 3, p2 = a[3] = 1, p3 = a[1] = 1, p4 = a[1] = 1
    assert ex.rationale.tolist()[:5] == [3, 1, 1, 1, EOS]
    assert int(ex.answer) == 1
    assert ex.prompt.tolist() == [PAD, PAD, BOS, *a, START, 0, HOPS, 4, SEP]
    assert ex.hinted_prompt.tolist() == [BOS, *a, START, 0, HOPS, 4, HINT, 1, SEP]
    assert len(ex.hinted_prompt) == tasks.PROMPT_LEN


@pytest.mark.parametrize("task", tasks.TASKS)
def test_splits_are_deterministic_balanced_and_correct(task):
    a = tasks.make_split(task, 120, seed=3)
    b = tasks.make_split(task, 120, seed=3)
    c = tasks.make_split(task, 120, seed=4)
    for fa, fb in zip(a, b):
        np.testing.assert_array_equal(fa, fb)
    assert not np.array_equal(a.prompt, c.prompt)
    tasks.validate_example(a)
    assert np.bincount(np.asarray(a.k), minlength=9)[3:].tolist() == [20] * 6
    assert bool(tasks.correct(a.rationale, a.answer).all())
    np.testing.assert_array_equal(tasks.answer_of(a.rationale), a.answer)
    # Each example is what make_example builds from its question.
    for i in range(5):
        q, s, k = np.asarray(a.question[i]), int(a.start[i]), int(a.k[i])
        single = (
            tasks.make_example(task, q[:k])
            if task == "chain-sum"
            else tasks.make_example(task, q, start=s, hops=k)
        )
        for f_split, f_single in zip(a, single):
            f_split = f_split[i]
            np.testing.assert_array_equal(f_split, f_single)
    # Fixed shapes whatever k is: one jit trace for every k.
    assert a.prompt.shape == (120, tasks.PROMPT_LEN) and a.rationale.shape == (120, tasks.MAX_RATIONALE)
    assert a.prompt.dtype == jnp.int32
    some = tasks.make_split(task, 7, seed=0, ks=[5])
    assert set(np.asarray(some.k).tolist()) == {5}


@pytest.mark.parametrize("task", tasks.TASKS)
def test_heldout_is_disjoint_from_train_for_any_seeds(task):
    heldout = set()
    for seed in (0, 1):
        heldout |= _rows(tasks.make_split(task, 600, seed, split="heldout").prompt)
    for seed in (0, 1, 2):
        train, held = tasks.make_splits(task, 600, 60, seed)
        assert not _rows(train.prompt) & heldout
        assert not _rows(tasks.make_split(task, 600, seed, split="pretrain").prompt) & heldout
        assert bool(tasks.heldout_mask(held.prompt).all()) and not tasks.heldout_mask(train.prompt).any()
    # About 1/HASH_BUCKETS of random questions are held out.
    frac = tasks.heldout_mask(tasks.build_examples(task, *_random_questions(task), 4).prompt).mean()
    assert 0.15 < frac < 0.25


def _random_questions(task):
    rng = np.random.default_rng(0)
    return rng.integers(0, 10, (4000, 10)), rng.integers(0, 10, 4000)


def test_pointer_arrays_are_single_cycles():
    split = tasks.make_split("pointer", 60, seed=0)
    for a, s, k, z in zip(*(np.asarray(f) for f in (split.question, split.start, split.k, split.rationale))):
        p, seen = int(s), []
        for _ in range(10):
            p = a[p]
            seen.append(p)
        assert sorted(seen) == list(range(10))  # one cycle through all 10 pointers
        assert len(set(z[:k].tolist())) == k


def test_correct_and_answer_of():
    z = jnp.array(
        [
            [3, 7, 2, EOS, PAD, PAD, PAD, PAD, PAD],  # correct for y = 2
            [3, 7, 2, 5, 5, 5, 5, 5, 5],  # no EOS
            [3, 7, 4, EOS, PAD, PAD, PAD, PAD, PAD],  # wrong answer
            [EOS, PAD, PAD, PAD, PAD, PAD, PAD, PAD, PAD],  # empty rationale
            [2, EOS, 9, EOS, PAD, PAD, PAD, PAD, PAD],  # the first EOS counts
            [3, SEP, EOS, PAD, PAD, PAD, PAD, PAD, PAD],  # a non-digit before EOS
        ]
    )
    y = jnp.array([2, 2, 2, 2, 2, 2])
    assert tasks.correct(z, y).tolist() == [True, False, False, False, True, False]
    assert tasks.answer_of(z).tolist() == [2, -1, 4, -1, 2, SEP]
    assert not bool(tasks.correct(z[1], -1))  # a missing answer never matches
    jitted = jax.jit(jax.vmap(tasks.correct))(z, y)
    np.testing.assert_array_equal(jitted, tasks.correct(z, y))
    # Broadcasting: several rationales per answer.
    assert tasks.correct(jnp.stack([z, z]), y).shape == (2, 6)


@pytest.mark.parametrize("task", tasks.TASKS)
def test_corrupted_scratchpads(task):
    split = tasks.make_split(task, 300, seed=0)
    keys = jax.random.split(jax.random.key(0), 300)

    @jax.jit
    def noisy(corruption, slips, rate):
        fn = lambda q, s, k, key: tasks.scratchpad(task, q, s, k, key, corruption, slips, rate)
        return jax.vmap(fn)(split.question, split.start, split.k, keys)

    def run(corruption, slips=None, rate=0.0):
        return np.asarray(noisy(corruption, np.full(100, -1) if slips is None else slips, rate))

    np.testing.assert_array_equal(run(0.0), split.rationale)
    always = run(1.0)
    # Every step is wrong given the value written before it; errors propagate; layout kept.
    q, s = np.asarray(split.question), np.asarray(split.start)
    for i in range(300):
        k, prev = int(split.k[i]), (0 if task == "chain-sum" else int(s[i]))
        for j in range(k):
            right = (prev + q[i, j]) % 10 if task == "chain-sum" else q[i, prev]
            assert always[i, j] != right and 0 <= always[i, j] <= 9
            prev = always[i, j]
        assert always[i, k] == EOS and (always[i, k + 1 :] == PAD).all()
    some = run(0.15)
    step_errors = (some != np.asarray(split.rationale))[np.arange(9) < np.asarray(split.k)[:, None]]
    assert 0.1 < step_errors.mean() < 0.9  # errors propagate beyond the 15% corrupted steps
    acc = tasks.correct(some, split.answer).mean()
    assert 0.2 < acc < 0.9
    # Slips: a fixed wrong digit in the table's contexts, written with the given rate.
    table = tasks.slip_table(task, 0.12)
    assert (table >= 0).sum() == 12
    assert np.array_equal(table, tasks.slip_table(task, 0.12))
    slipped = run(0.0, table, 1.0)
    for i in range(50):
        prev = 0 if task == "chain-sum" else int(s[i])
        for j in range(int(split.k[i])):
            right = (prev + q[i, j]) % 10 if task == "chain-sum" else q[i, prev]
            context = prev * 10 + (q[i, j] if task == "chain-sum" else right)
            assert slipped[i, j] == (table[context] if table[context] >= 0 else right)
            prev = int(slipped[i, j])


def test_bad_examples_give_clear_errors():
    with pytest.raises(ValueError, match="unknown task 'sum'; choose from chain-sum, pointer"):
        tasks.make_example("sum", [1, 2, 3])
    with pytest.raises(ValueError, match="unknown task 'x'"):
        tasks.make_split("x", 10, 0)
    with pytest.raises(ValueError, match=r"the number of digits k must be in 3\.\.8, got 9"):
        tasks.make_example("chain-sum", [1] * 9)
    with pytest.raises(ValueError, match=r"the number of digits k must be in 3\.\.8, got 2"):
        tasks.make_example("chain-sum", [1, 2])
    with pytest.raises(ValueError, match=r"hops k must be in 3\.\.8, got 9"):
        tasks.make_example("pointer", list(range(10)), start=0, hops=9)
    with pytest.raises(ValueError, match=r"k must be in 3\.\.8, got 2"):
        tasks.make_split("chain-sum", 10, 0, ks=[2, 3])
    with pytest.raises(ValueError, match="answer is empty: give one digit 0-9"):
        tasks.make_example("chain-sum", [1, 2, 3], answer="")
    with pytest.raises(ValueError, match="answer is empty: give one digit 0-9"):
        tasks.make_example("chain-sum", [1, 2, 3], answer=[])
    with pytest.raises(ValueError, match="answer must be one digit 0-9, got '12'"):
        tasks.make_example("chain-sum", [1, 2, 3], answer="12")
    with pytest.raises(ValueError, match="answer must be one digit 0-9, got 10"):
        tasks.make_example("chain-sum", [1, 2, 3], answer=10)
    with pytest.raises(ValueError, match="answer 5 is wrong for this question: its answer is 6"):
        tasks.make_example("chain-sum", [1, 2, 3], answer=5)
    with pytest.raises(ValueError, match="rationale has 10 tokens with EOS, more than the maximum 9"):
        tasks.make_example("chain-sum", [1, 2, 3], rationale=[1] * 9)
    with pytest.raises(ValueError, match="rationale is empty: give at least one token before EOS"):
        tasks.make_example("chain-sum", [1, 2, 3], rationale=[EOS])
    with pytest.raises(ValueError, match="rationale is empty"):
        tasks.make_example("chain-sum", [1, 2, 3], rationale=[])
    with pytest.raises(ValueError, match="rationale has EOS at position 1, before its last token"):
        tasks.make_example("chain-sum", [1, 2, 3], rationale=[1, EOS, 6])
    with pytest.raises(ValueError, match="rationale token 14 at position 0 is not a rationale token"):
        tasks.make_example("chain-sum", [1, 2, 3], rationale=[PAD, 6])
    with pytest.raises(ValueError, match="question must be digits 0-9"):
        tasks.make_example("chain-sum", [1, 12, 3])
    with pytest.raises(ValueError, match="pointer question must have 10 pointers, got 3"):
        tasks.make_example("pointer", [1, 2, 3], start=0, hops=3)
    with pytest.raises(ValueError, match="pointer examples need start= and hops="):
        tasks.make_example("pointer", list(range(10)))
    with pytest.raises(ValueError, match="unknown split 'test'"):
        tasks.make_split("pointer", 10, 0, split="test")
    # A given, well-formed (even wrong) rationale is kept, EOS appended.
    ex = tasks.make_example("chain-sum", [1, 2, 3], answer="6", rationale=[1, 3, 5])
    assert ex.rationale.tolist()[:4] == [1, 3, 5, EOS] and not bool(tasks.correct(ex.rationale, ex.answer))


def test_validate_example_names_the_problem():
    batch = tasks.make_split("chain-sum", 12, seed=0)
    assert tasks.validate_example(batch) is batch
    bad_answer = batch._replace(answer=batch.answer.at[0].set(11))
    with pytest.raises(ValueError, match="answer must be one digit 0-9 in every example"):
        tasks.validate_example(bad_answer)
    bad_k = batch._replace(k=batch.k.at[1].set(9))
    with pytest.raises(ValueError, match=r"k must be in 3\.\.8, got values \[3, 4, 5, 6, 7, 8, 9\]"):
        tasks.validate_example(bad_k)
    no_eos = batch._replace(rationale=jnp.where(batch.rationale == EOS, 1, batch.rationale))
    with pytest.raises(ValueError, match="rationale has no EOS within the maximum length 9"):
        tasks.validate_example(no_eos)
    empty = batch._replace(rationale=batch.rationale.at[0].set(jnp.array([EOS] + [PAD] * 8)))
    with pytest.raises(ValueError, match="rationale is empty"):
        tasks.validate_example(empty)
    short = batch._replace(prompt=batch.prompt[:, 1:])
    with pytest.raises(ValueError, match=r"example field prompt has shape \(12, 17\), expected \(12, 18\)"):
        tasks.validate_example(short)
