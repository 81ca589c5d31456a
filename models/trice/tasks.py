r"""Two reasoning tasks with scratchpad rationales, a shared vocabulary, and a disjoint held-out split.

*chain-sum*: digits ``d_1 .. d_k`` (``k = 3 .. 8``), answer ``y = (Σ d_i) mod 10``, gold
rationale the running sums ``s_i = (s_{i-1} + d_i) mod 10`` (``s_0 = 0``), ``i = 1 .. k``, then
EOS, so the last digit before EOS is the answer. *pointer* (k-hop pointer chasing): an array
``a`` of 10 pointers (digits), a start index ``s`` and ``k`` hops, ``p_1 = a[s]``,
``p_{j+1} = a[p_j]``; answer ``p_k``; gold rationale ``p_1 .. p_k``, EOS. Generated arrays are
single 10-cycles (a uniformly random cyclic permutation), so the ``k <= 8`` hops visit distinct
pointers and one wrong hop is never undone (any array is accepted by :func:`make_example`).

Token layout (left-padded with PAD to :data:`PROMPT_LEN`; rationales right-padded with PAD to
:data:`MAX_RATIONALE`)::

    chain-sum  prompt   BOS d_1 .. d_k SEP                 hinted  BOS d_1 .. d_k HINT y SEP
    pointer    prompt   BOS a_0 .. a_9 START s HOPS k SEP  hinted  ... HOPS k HINT y SEP
    rationale           z_1 .. z_k EOS PAD ..

Split: a question (its unhinted prompt) is *held out* iff a fixed hash of its tokens falls in
bucket 0 of :data:`HASH_BUCKETS`, so every held-out split (any seed) is disjoint from every
training or pretraining split (any seed). Within a split, questions are i.i.d. (duplicates are
possible for small ``k``), ``n`` shared out evenly over ``ks``, then shuffled; each split draws
from ``numpy.random.default_rng([seed, task id, split id])``.

Noisy scratchpads for pretraining come from the same rule (:func:`scratchpad`): random wrong
digits (``corruption``) and systematic ones (``slips``, a fixed table from :func:`slip_table`).

The correctness check ``c(z, y) = 1`` iff ``z`` contains EOS, at least one token precedes the
first EOS, and that token equals ``y`` (:func:`correct`).

Example:
    >>> from ppl.models.trice import tasks
    >>> ex = tasks.make_example("chain-sum", [3, 4, 5])
    >>> tasks.to_text(ex.prompt), tasks.to_text(ex.rationale), int(ex.answer)
    ('BOS 3 4 5 SEP', '3 7 2 EOS', 2)
    >>> train = tasks.make_split("pointer", 60, seed=0)
    >>> bool(tasks.correct(train.rationale, train.answer).all())
    True
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# -- vocabulary --------------------------------------------------------------------
DIGITS = 10  #: digits 0..9 are tokens 0..9
BOS, SEP, HINT, EOS, PAD, START, HOPS = range(DIGITS, DIGITS + 7)
VOCAB_SIZE = DIGITS + 7
TOKEN_NAMES = {BOS: "BOS", SEP: "SEP", HINT: "HINT", EOS: "EOS", PAD: "PAD", START: "START", HOPS: "HOPS"}

TASKS = ("chain-sum", "pointer")
MIN_K, MAX_K = 3, 8
POINTERS = 10  #: length of the pointer array
MAX_RATIONALE = MAX_K + 1  #: k steps and EOS
PROMPT_LEN = 1 + POINTERS + 2 + 2 + 2 + 1  #: the longest prompt: a hinted pointer prompt (18)
HASH_BUCKETS = 5  #: held-out: hash bucket 0, i.e. 1/5 of the question space
SPLITS = {"train": 0, "heldout": 1, "pretrain": 2}


class Example(NamedTuple):
    """One example, or a batch of them (every field gains the same leading axes).

    Fields (int32): ``question`` ``(10,)`` the digits ``d_1..d_k`` then zeros (chain-sum) or the
    pointer array ``a_0..a_9`` (pointer); ``start`` the pointer start index (0 for chain-sum);
    ``k`` the number of steps; ``answer`` the digit ``y``; ``prompt`` and ``hinted_prompt``
    ``(PROMPT_LEN,)`` left-padded with PAD; ``rationale`` ``(MAX_RATIONALE,)`` the gold
    rationale, PAD after EOS.
    """

    question: Any
    start: Any
    k: Any
    answer: Any
    prompt: Any
    hinted_prompt: Any
    rationale: Any


# -- checks ------------------------------------------------------------------------
def check_task(task: str) -> str:
    """``task`` if it is known, else a ValueError listing the tasks."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    return task


def check_k(k: int, what: str = "k") -> int:
    """``k`` as an int if ``MIN_K <= k <= MAX_K``, else a ValueError."""
    if isinstance(k, bool) or int(k) != k or not MIN_K <= int(k) <= MAX_K:
        raise ValueError(f"{what} must be in {MIN_K}..{MAX_K}, got {k!r}")
    return int(k)


def _digit(value: Any, what: str) -> int:
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise ValueError(f"{what} is empty: give one digit 0-9")
        if len(value) != 1 or not value.isdigit():
            raise ValueError(f"{what} must be one digit 0-9, got {value!r}")
        return int(value)
    arr = np.asarray(value)
    if arr.size == 0:
        raise ValueError(f"{what} is empty: give one digit 0-9")
    if arr.size != 1 or not np.issubdtype(arr.dtype, np.integer) or not 0 <= int(arr) <= 9:
        raise ValueError(f"{what} must be one digit 0-9, got {value!r}")
    return int(arr)


def _digits(values: Any, what: str) -> list[int]:
    arr = np.asarray(values)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{what} must be a flat sequence of digits 0-9, got {values!r}")
    if arr.size and (arr.min() < 0 or arr.max() > 9):
        raise ValueError(f"{what} must be digits 0-9, got {arr.tolist()}")
    return [int(v) for v in arr]


def _rationale_tokens(rationale: Any) -> np.ndarray:
    """A user's rationale as ``(MAX_RATIONALE,)`` tokens: EOS appended if missing, PAD after."""
    tokens = [int(t) for t in np.asarray(rationale).reshape(-1)]
    if tokens and tokens[-1] == EOS:
        tokens = tokens[:-1]
    if not tokens:
        raise ValueError("rationale is empty: give at least one token before EOS")
    if len(tokens) + 1 > MAX_RATIONALE:
        raise ValueError(
            f"rationale has {len(tokens) + 1} tokens with EOS, more than the maximum {MAX_RATIONALE}"
        )
    for i, t in enumerate(tokens):
        if t == EOS:
            raise ValueError(f"rationale has EOS at position {i}, before its last token")
        if t == PAD or not 0 <= t < VOCAB_SIZE:
            raise ValueError(f"rationale token {t} at position {i} is not a rationale token")
    return np.asarray(tokens + [EOS] + [PAD] * (MAX_RATIONALE - len(tokens) - 1), np.int32)


def validate_example(example: Example) -> Example:
    """Check an example or a batch (shapes, ranges, EOS/PAD layout); return it or raise ValueError."""
    ex = Example(*(np.asarray(f) for f in example))
    lead = ex.k.shape
    expected = {
        "question": (*lead, POINTERS),
        "start": lead,
        "answer": lead,
        "prompt": (*lead, PROMPT_LEN),
        "hinted_prompt": (*lead, PROMPT_LEN),
        "rationale": (*lead, MAX_RATIONALE),
    }
    for name, shape in expected.items():
        value = getattr(ex, name)
        if value.shape != shape:
            raise ValueError(f"example field {name} has shape {value.shape}, expected {shape}")
        if not np.issubdtype(value.dtype, np.integer):
            raise ValueError(f"example field {name} must be integer tokens, got dtype {value.dtype}")
    if ex.k.size and (ex.k.min() < MIN_K or ex.k.max() > MAX_K):
        raise ValueError(f"k must be in {MIN_K}..{MAX_K}, got values {sorted(set(ex.k.ravel().tolist()))}")
    if ex.answer.size and (ex.answer.min() < 0 or ex.answer.max() > 9):
        raise ValueError("answer must be one digit 0-9 in every example")
    is_eos = ex.rationale == EOS
    if not is_eos.any(-1).all():
        raise ValueError(f"rationale has no EOS within the maximum length {MAX_RATIONALE}")
    first = is_eos.argmax(-1)
    if (first == 0).any():
        raise ValueError("rationale is empty: give at least one token before EOS")
    after = np.arange(MAX_RATIONALE) > first[..., None]
    if ((ex.rationale != PAD) & after).any():
        raise ValueError("rationale must be PAD after its first EOS")
    for name in ("prompt", "hinted_prompt", "rationale"):
        value = getattr(ex, name)
        if value.size and (value.min() < 0 or value.max() >= VOCAB_SIZE):
            raise ValueError(f"example field {name} has tokens outside 0..{VOCAB_SIZE - 1}")
    return example


# -- prompts and scratchpads ---------------------------------------------------------
def prompt_tokens(
    task: str, question: np.ndarray, start: np.ndarray, k: int, answer: np.ndarray | None = None
) -> np.ndarray:
    """Prompts ``(n, PROMPT_LEN)`` of ``n`` questions with the same ``k``, left-padded with PAD.

    ``question`` ``(n, 10)``, ``start`` ``(n,)``; with ``answer`` ``(n,)`` the hinted prompts.
    """
    question, start = np.asarray(question), np.asarray(start)
    n = question.shape[0]

    def column(value: Any) -> np.ndarray:
        return np.broadcast_to(np.asarray(value), (n,))[:, None]

    if check_task(task) == "chain-sum":
        body = [column(BOS), question[:, :k]]
    else:
        body = [column(BOS), question, column(START), column(start), column(HOPS), column(k)]
    if answer is not None:
        body += [column(HINT), column(answer)]
    body = np.concatenate([*body, column(SEP)], axis=1)
    pad = np.full((n, PROMPT_LEN - body.shape[1]), PAD)
    return np.concatenate([pad, body], axis=1).astype(np.int32)


def step_context(
    task: str, question: jax.Array, prev: jax.Array, i: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(correct value, context id in 0..99)`` of step ``i`` (0-based) after value ``prev``.

    The context is what the step reads: chain-sum ``(s_{i-1}, d_i)``, pointer ``(p_{j-1}, a[p_{j-1}])``.
    """
    if task == "chain-sum":
        return (prev + question[i]) % DIGITS, prev * DIGITS + question[i]
    value = question[prev]
    return value, prev * DIGITS + value


def slip_table(task: str, fraction: float) -> np.ndarray:
    """A fixed "misconception" table ``(100,)``: a wrong digit for ``round(100 fraction)`` step contexts.

    Entry ``c`` (a :func:`step_context` id) is the wrong digit written there, or −1 (no slip).
    Fixed per task (not per seed): the same misconception in every pretraining run.
    """
    check_task(task)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"slip fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng([20231204, TASKS.index(task)])
    contexts = rng.permutation(DIGITS * DIGITS)[: round(DIGITS * DIGITS * fraction)]
    shifts = rng.integers(1, DIGITS, DIGITS * DIGITS)
    prev, read = np.divmod(np.arange(DIGITS * DIGITS), DIGITS)
    truth = (prev + read) % DIGITS if task == "chain-sum" else read
    table = np.full(DIGITS * DIGITS, -1, np.int32)
    table[contexts] = (truth[contexts] + shifts[contexts]) % DIGITS
    return table


def scratchpad(
    task: str,
    question: jax.Array,
    start: jax.Array,
    k: jax.Array,
    key: jax.Array | None = None,
    corruption: float | jax.Array = 0.0,
    slips: jax.Array | None = None,
    slip_rate: float | jax.Array = 0.0,
) -> jax.Array:
    r"""The rationale ``(MAX_RATIONALE,)`` of one question: steps ``1..k``, EOS, PAD.

    chain-sum ``v_i = (v_{i-1} + d_i) mod 10`` from ``v_0 = 0``; pointer ``v_j = a[v_{j-1}]``
    from ``v_0 = s``. Noise (needs a ``key``), later steps always continuing from the written
    value: with ``slips`` (a :func:`slip_table`) a step whose context has a slip writes that
    wrong digit with probability ``slip_rate`` (a systematic error); otherwise, with probability
    ``corruption``, a uniformly drawn wrong digit. Pure ``jnp`` (``task`` static): vmap it over a
    batch. The only implementation of the task rules: gold rationales and answers come from it.
    """
    check_task(task)
    question = jnp.asarray(question, jnp.int32)
    if key is None:
        key = jax.random.key(0)
    flip_key, shift_key, slip_key = jax.random.split(key, 3)
    flips = jax.random.bernoulli(flip_key, corruption, (MAX_K,))
    shifts = jax.random.randint(shift_key, (MAX_K,), 1, DIGITS)
    slipping = jax.random.bernoulli(slip_key, slip_rate, (MAX_K,))
    table = jnp.full(DIGITS * DIGITS, -1, jnp.int32) if slips is None else jnp.asarray(slips, jnp.int32)

    def step(prev: jax.Array, inputs: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
        i, flip, shift, slip = inputs
        value, context = step_context(task, question, prev, i)
        wrong = table[context]
        value = jnp.where(slip & (wrong >= 0), wrong, jnp.where(flip, (value + shift) % DIGITS, value))
        return value, value

    init = jnp.asarray(0 if task == "chain-sum" else start, jnp.int32)
    _, values = jax.lax.scan(step, init, (jnp.arange(MAX_K), flips, shifts, slipping))
    position = jnp.arange(MAX_RATIONALE)
    values = jnp.concatenate([values, jnp.zeros((1,), jnp.int32)])
    return jnp.where(position < k, values, jnp.where(position == k, EOS, PAD)).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=0)
def _gold_padded(task: str, question: jax.Array, start: jax.Array, k: jax.Array) -> jax.Array:
    return jax.vmap(lambda q, s, kk: scratchpad(task, q, s, kk))(question, start, k)


def _gold(task: str, question: np.ndarray, start: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Gold rationales ``(n, R)``; the batch is padded to a power of two (>= 64) to reuse compilations."""
    n = question.shape[0]
    size = max(64, 1 << max(n - 1, 0).bit_length())
    pad = lambda a: np.concatenate([a, np.zeros((size - n, *a.shape[1:]), a.dtype)])  # noqa: E731
    out = _gold_padded(task, pad(question), pad(start), pad(k))
    return np.asarray(out, np.int32)[:n]


def build_examples(task: str, question: np.ndarray, start: np.ndarray, k: int) -> Example:
    """Examples (leading axis ``n``) of ``n`` questions with the same ``k``, gold rationales and answers.

    No validation: :func:`make_example` is the checked constructor for user input.
    """
    question = np.asarray(question, np.int32)
    start = np.asarray(start, np.int32)
    n = question.shape[0]
    ks = np.full(n, k, np.int32)
    rationale = _gold(check_task(task), question, start, ks)
    answer = rationale[:, k - 1]
    return Example(
        question,
        start,
        ks,
        answer,
        prompt_tokens(task, question, start, k),
        prompt_tokens(task, question, start, k, answer),
        rationale,
    )


def make_example(
    task: str,
    question: Sequence[int],
    answer: Any = None,
    rationale: Any = None,
    *,
    start: int | None = None,
    hops: int | None = None,
) -> Example:
    """One validated example (no leading axis).

    ``question``: chain-sum the digits ``d_1..d_k``; pointer the 10 pointers ``a_0..a_9``,
    with ``start`` and ``hops`` (= k). ``answer`` (default: computed) must be the question's
    answer; ``rationale`` (default: gold) a token sequence, EOS appended if missing.
    Raises ValueError naming what is wrong (unknown task, k out of range, empty or non-digit
    answer, empty or over-long rationale, ...).
    """
    check_task(task)
    digits = _digits(question, "question")
    if task == "chain-sum":
        k = check_k(len(digits), "the number of digits k")
        start_index = 0
        digits = digits + [0] * (POINTERS - k)
    else:
        if len(digits) != POINTERS:
            raise ValueError(f"pointer question must have {POINTERS} pointers, got {len(digits)}")
        if start is None or hops is None:
            raise ValueError("pointer examples need start= and hops=")
        start_index = _digit(start, "start")
        k = check_k(hops, "hops k")
    example = jax.tree.map(
        lambda f: f[0], build_examples(task, np.asarray([digits]), np.asarray([start_index]), k)
    )
    if answer is not None:
        y = _digit(answer, "answer")
        if y != int(example.answer):
            raise ValueError(f"answer {y} is wrong for this question: its answer is {int(example.answer)}")
    if rationale is not None:
        example = example._replace(rationale=_rationale_tokens(rationale))
    return example


# -- splits ------------------------------------------------------------------------
def heldout_mask(prompt: Any) -> np.ndarray:
    """True for questions (unhinted prompts ``(..., PROMPT_LEN)``) in the held-out part of the space."""
    tokens = np.asarray(prompt).astype(np.uint64)
    h = np.full(tokens.shape[:-1], 0xCBF29CE484222325, np.uint64)
    for i in range(tokens.shape[-1]):  # FNV-1a, then a murmur-style finalizer
        h = (h ^ tokens[..., i]) * np.uint64(0x100000001B3)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    return (h % np.uint64(HASH_BUCKETS)) == 0


def _draw(task: str, rng: np.random.Generator, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random questions: uniform digits (chain-sum) or a uniform single 10-cycle and start (pointer)."""
    if task == "chain-sum":
        question = rng.integers(0, DIGITS, (n, POINTERS))
        question[:, k:] = 0
        return question, np.zeros(n, np.int64)
    order = rng.permuted(np.tile(np.arange(POINTERS), (n, 1)), axis=1)
    question = np.empty_like(order)
    np.put_along_axis(question, order, np.roll(order, -1, axis=1), axis=1)  # a[σ_i] = σ_{i+1}
    return question, rng.integers(0, POINTERS, n)


def make_split(
    task: str,
    n: int,
    seed: int,
    ks: Iterable[int] = range(MIN_K, MAX_K + 1),
    split: str = "train",
) -> Example:
    """``n`` examples of ``task`` (an :class:`Example` with leading axis ``n``), deterministic per seed.

    ``split``: ``"train"`` or ``"pretrain"`` (questions outside the held-out part, independent
    streams) or ``"heldout"`` (questions inside it). ``n`` is shared out evenly over ``ks``
    (the first ``n mod len(ks)`` values get one more), and the result is shuffled.
    """
    check_task(task)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    ks = [check_k(k) for k in ks]
    if not ks:
        raise ValueError("ks is empty: give at least one k")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng([seed, TASKS.index(task), SPLITS[split]])
    parts = []
    for i, k in enumerate(ks):
        count = n // len(ks) + (i < n % len(ks))
        questions, starts = np.zeros((0, POINTERS), np.int64), np.zeros(0, np.int64)
        while len(questions) < count:
            q, s = _draw(task, rng, k, 2 * count + 16)
            keep = heldout_mask(prompt_tokens(task, q, s, k)) == (split == "heldout")
            questions, starts = np.concatenate([questions, q[keep]]), np.concatenate([starts, s[keep]])
        parts.append(build_examples(task, questions[:count], starts[:count], k))
    order = rng.permutation(n)
    return Example(*(jnp.asarray(np.concatenate(f)[order]) for f in zip(*parts)))


def make_splits(
    task: str, n_train: int, n_heldout: int, seed: int, ks: Iterable[int] = range(MIN_K, MAX_K + 1)
) -> tuple[Example, Example]:
    """``(train, heldout)``: disjoint question sets, both deterministic per ``seed``."""
    ks = list(ks)
    return make_split(task, n_train, seed, ks, "train"), make_split(task, n_heldout, seed, ks, "heldout")


# -- the correctness check -------------------------------------------------------------
def answer_of(rationale: jax.Array) -> jax.Array:
    """The token just before the first EOS of each rationale ``(..., R)``; −1 if no EOS or none before it."""
    rationale = jnp.asarray(rationale)
    is_eos = rationale == EOS
    first = jnp.argmax(is_eos, axis=-1)
    before = jnp.take_along_axis(rationale, jnp.maximum(first - 1, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(is_eos.any(-1) & (first >= 1), before, -1)


def correct(rationale: jax.Array, answer: jax.Array) -> jax.Array:
    """``c(z, y)`` (bool, broadcast over leading axes): z has EOS, a token before it, and that token is y."""
    found = answer_of(rationale)
    return (found >= 0) & (found == jnp.asarray(answer))


def to_text(tokens: Any) -> str:
    """Tokens as text, PAD dropped: ``'BOS 3 4 5 SEP'``."""
    names = [TOKEN_NAMES.get(int(t), str(int(t))) for t in np.asarray(tokens).reshape(-1)]
    return " ".join(n for n in names if n != "PAD")
