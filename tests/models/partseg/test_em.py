"""The PartSLIP++ EM as a program: count-form likelihood, E-steps, the enum M-step, EM behaviour."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.models.partseg import em
from ppl.models.partseg.counts import count_evidence
from ppl.models.partseg.types import Masks, Views

from ppl import transforms as T
from tests.conftest import assert_unbiased, vmapped


def tiny_scene(seed: int = 0, num_points: int = 30, num_superpoints: int = 6, labels: int = 3):
    """Random points → superpoints, one 8×8 view, a random label map (``labels`` masks + other)."""
    rng = np.random.default_rng(seed)
    superpoints = np.concatenate(
        [np.arange(num_superpoints), rng.integers(0, num_superpoints, num_points - num_superpoints)]
    )
    pixel_point = rng.integers(-1, num_points, (1, 8, 8)).astype(np.int32)
    label_map = np.where(pixel_point >= 0, rng.integers(0, labels + 1, (1, 8, 8)), -1).astype(np.int32)
    masks = [np.stack([label_map[0] == m for m in range(labels)])]
    return (
        superpoints,
        Views(pixel_point, np.zeros((1, 2))),
        Masks(masks, [np.zeros(labels, np.int32)], label_map),
    )


def synthetic_views(seed: int = 0, num_superpoints: int = 60, instances: int = 5, views: int = 10):
    """Counts of clean, permuted masks of a random ground-truth partition."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, instances, num_superpoints)
    labels = instances + 1
    counts = np.zeros((views, labels + 2, num_superpoints), np.float32)
    totals = np.zeros((views, num_superpoints), np.float32)
    label_valid = np.zeros((views, labels + 2), bool)
    for v in range(views):
        n = rng.integers(5, 30, num_superpoints) * (rng.random(num_superpoints) < 0.7)
        perm = rng.permutation(instances)
        totals[v] = n
        counts[v, perm[truth], np.arange(num_superpoints)] = n
        label_valid[v, :labels] = True
    return truth, jnp.asarray(counts), jnp.asarray(totals), jnp.asarray(label_valid)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all((a[:, None] == a[None, :]) == (b[:, None] == b[None, :])))


# -- the likelihood ------------------------------------------------------------------------


def test_count_form_equals_the_per_pixel_one_vs_all_likelihood() -> None:
    superpoints, views, masks = tiny_scene()
    ev = count_evidence(views, masks, superpoints)
    logits = jax.random.normal(jax.random.key(0), (6, 5)) * 2.0
    matching = jnp.array([3, 0, 4, 1])  # 3 masks + "other" → instances
    p = jax.nn.softmax(logits, -1)
    seen = views.pixel_point[0] >= 0
    sp = superpoints[views.pixel_point[0][seen]]
    label = masks.label_map[0][seen]
    per_pixel = 0.0
    for m in range(4):
        y = label == m
        q = p[sp, matching[m]]
        per_pixel += float(jnp.sum(jnp.where(y, jnp.log(q), jnp.log1p(-q))))
    cost = em.cost_matrix(logits, jnp.asarray(ev.counts[0]), jnp.asarray(ev.totals[0]))
    counts, totals = ev.counts[0], ev.totals[0]
    from scipy.special import gammaln

    log_comb = np.sum(gammaln(totals + 1) - gammaln(counts + 1) - gammaln(totals - counts + 1))
    count_form = -float(sum(cost[m, matching[m]] for m in range(4))) - log_comb
    assert np.isclose(count_form, per_pixel, rtol=1e-5)
    # and it is the generative program's density
    density, _ = em.view_model.assess(
        {"labels": {"counts": jnp.asarray(counts[:4])}}, logits, matching, jnp.asarray(totals)
    )
    assert np.isclose(float(density), -float(sum(cost[m, matching[m]] for m in range(4))), rtol=1e-5)


@pytest.mark.parametrize("scale", [0.5, 5.0, 40.0])
def test_binomial_logits_match_the_direct_logsumexp_over_the_others(scale) -> None:
    logits = jax.random.normal(jax.random.key(0), (50, 7)) * scale
    logits = logits.at[:, 3].set(jnp.where(jnp.arange(50) < 10, 28.0, logits[:, 3]))  # saturated rows
    others = jnp.where(jnp.eye(7, dtype=bool), -jnp.inf, logits[:, None, :])
    direct = logits - jax.nn.logsumexp(others, axis=-1)
    assert np.allclose(em.binomial_logits(logits), direct, rtol=1e-5, atol=1e-4)
    grad = jax.grad(lambda l: jnp.sum(jnp.sin(em.binomial_logits(l))))(logits)
    assert jnp.all(jnp.isfinite(grad))


def test_saturated_logits_give_finite_likelihood_and_gradient_under_jit() -> None:
    truth, counts, totals, label_valid = synthetic_views()
    logits, slot_valid = em.initial_logits(truth)
    grad = jax.jit(jax.grad(lambda l: jnp.sum(em.cost_matrix(l, counts[0], totals[0]))))(jnp.asarray(logits))
    assert jnp.all(jnp.isfinite(em.binomial_logits(jnp.asarray(logits))))
    assert jnp.all(jnp.isfinite(grad))
    out, values = em.run_em(
        jnp.asarray(logits), jnp.asarray(slot_valid), counts, totals, label_valid, jax.random.key(0)
    )
    assert jnp.all(jnp.isfinite(out)) and jnp.all(jnp.isfinite(values))


# -- E-steps -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 3), (3, 5), (4, 6)])
def test_hungarian_equals_brute_force(shape) -> None:
    rng = np.random.default_rng(sum(shape))
    for _ in range(5):
        cost = rng.normal(size=shape).astype(np.float32)
        best = min(
            itertools.permutations(range(shape[1]), shape[0]),
            key=lambda p: sum(cost[m, k] for m, k in enumerate(p)),
        )
        onehot = em.hard_marginals(jnp.asarray(cost), jnp.ones(shape[0], bool), jnp.ones(shape[1], bool))
        assert [int(k) for k in np.argmax(onehot, 1)] == list(best)


def test_hungarian_respects_invalid_labels_and_slots() -> None:
    cost = jnp.zeros((3, 4)).at[0, 0].set(-5.0)
    onehot = em.hard_marginals(cost, jnp.array([True, True, False]), jnp.array([False, True, True, True]))
    assert onehot[2].sum() == 0 and onehot[:, 0].sum() == 0 and onehot[:2].sum() == 2


def test_sinkhorn_marginals_are_a_partial_doubly_stochastic_plan_close_to_exact() -> None:
    rng = np.random.default_rng(1)
    cost = rng.normal(size=(3, 5)).astype(np.float32)
    plan = em.sinkhorn_marginals(jnp.asarray(cost), jnp.ones(3, bool), jnp.ones(5, bool), iters=500)
    assert np.allclose(plan.sum(1), 1.0, atol=1e-4) and np.all(plan.sum(0) <= 1.0 + 1e-4)
    exact = em.exact_marginals(cost)
    assert np.max(np.abs(np.asarray(plan) - exact)) < 0.15  # an approximation: entropic plan vs permanent
    cold = em.sinkhorn_marginals(jnp.asarray(cost) * 50, jnp.ones(3, bool), jnp.ones(5, bool), iters=2000)
    hard = em.hard_marginals(jnp.asarray(cost), jnp.ones(3, bool), jnp.ones(5, bool))
    assert np.allclose(cold, hard, atol=1e-2)


# -- the M-step objective ------------------------------------------------------------------------


def test_enum_m_step_is_exact() -> None:
    _, counts, totals, _ = synthetic_views(instances=3)
    logits = jax.random.normal(jax.random.key(1), (60, 6))
    marginals = (
        jax.nn.softmax(jax.random.normal(jax.random.key(2), (4, 6)), -1) * jnp.array([1, 1, 1, 0.0])[:, None]
    )
    est = em.expected_log_likelihood.estimator(strategies={"match": T.enum()})
    _, grad, _ = est.value_and_grad(jax.random.key(3), logits, counts[0, :4], totals[0], marginals)

    def exact(l):
        return -jnp.sum(marginals * em.cost_matrix(l, counts[0, :4], totals[0]))

    assert np.allclose(grad, jax.grad(exact)(logits), rtol=1e-4, atol=1e-3)
    # the value is the plain Monte Carlo value of the drawn pair: unbiased for Q
    values = vmapped(lambda k: est.value_and_grad(k, logits, counts[0, :4], totals[0], marginals)[0], 4000)
    assert_unbiased(values, exact(logits), "enum M-step value")


# -- EM behaviour --------------------------------------------------------------------------------


@pytest.mark.parametrize("e_step", ["hard", "soft"])
def test_em_from_random_start_recovers_a_clean_partition(e_step) -> None:
    truth, counts, totals, label_valid = synthetic_views()
    logits, slot_valid = em.random_logits(jax.random.key(0), 60, 8)
    out, _ = em.run_em(
        jnp.asarray(logits),
        jnp.asarray(slot_valid),
        counts,
        totals,
        label_valid,
        jax.random.key(1),
        em.EMConfig(e_step),
    )
    assert same_partition(np.asarray(jnp.argmax(out, -1)), truth)


def test_ground_truth_start_with_clean_masks_is_a_fixed_point() -> None:
    truth, counts, totals, label_valid = synthetic_views(seed=3)
    logits, slot_valid = em.initial_logits(truth)
    out, _ = em.run_em(
        jnp.asarray(logits), jnp.asarray(slot_valid), counts, totals, label_valid, jax.random.key(0)
    )
    assert np.array_equal(np.asarray(jnp.argmax(out, -1)), truth)


def test_soft_em_with_exact_e_step_never_decreases_the_marginal_likelihood() -> None:
    rng = np.random.default_rng(4)
    num_s, views = 8, 3
    truth = rng.integers(0, 3, num_s)
    counts = np.zeros((views, 3, num_s), np.float32)
    totals = rng.integers(1, 6, (views, num_s)).astype(np.float32)
    for v in range(views):
        noisy = np.where(rng.random(num_s) < 0.2, rng.integers(0, 3, num_s), truth)
        counts[v, rng.permutation(3)[noisy], np.arange(num_s)] = totals[v]
    counts, totals = jnp.asarray(counts), jnp.asarray(totals)
    logits = jax.random.normal(jax.random.key(0), (num_s, 4)) * 0.3

    def log_marginal(l):
        return sum(
            em.log_marginal_likelihood(np.asarray(em.cost_matrix(l, counts[v], totals[v])))
            for v in range(views)
        )

    est = em.expected_log_likelihood.estimator(strategies={"match": T.enum()})
    history = [log_marginal(logits)]
    for _ in range(8):
        posts = [
            jnp.asarray(em.exact_marginals(np.asarray(em.cost_matrix(logits, counts[v], totals[v]))))
            for v in range(views)
        ]
        for _ in range(20):  # generalized M-step: small gradient-ascent steps increase Q
            grad = sum(
                est.grad(jax.random.key(0), logits, counts[v], totals[v], posts[v]) for v in range(views)
            )
            logits = logits + 0.01 * grad
        history.append(log_marginal(logits))
    assert np.all(np.diff(history) >= -1e-3), history
    assert history[-1] > history[0] + 1.0


def test_same_key_same_result() -> None:
    _, counts, totals, label_valid = synthetic_views()
    logits, slot_valid = em.random_logits(jax.random.key(0), 60, 8)
    args = (jnp.asarray(logits), jnp.asarray(slot_valid), counts, totals, label_valid, jax.random.key(5))
    a, b = em.run_em(*args), em.run_em(*args)
    assert np.array_equal(a[0], b[0])


# -- bad input ---------------------------------------------------------------------------------------


def test_counts_reject_mismatched_views_and_absent_points() -> None:
    superpoints, views, masks = tiny_scene()
    small = Views(views.pixel_point[:, :4, :4], views.cameras)
    with pytest.raises(
        ValueError, match="views have shape \\(1, 4, 4\\) but the label map has shape \\(1, 8, 8\\)"
    ):
        count_evidence(small, masks, superpoints)
    bad = masks.label_map.copy()
    bad[views.pixel_point < 0] = 0
    with pytest.raises(ValueError, match="view 0: the label map labels pixels where the view sees no point"):
        count_evidence(views, Masks(masks.masks, masks.mask_class, bad), superpoints)
    with pytest.raises(ValueError, match="views reference point 29, but there are 10 points"):
        count_evidence(views, masks, superpoints[:10])


def test_outlier_option_leaves_a_split_mask_unmatched() -> None:
    truth, counts, totals, label_valid = synthetic_views(seed=2)
    logits, slot_valid = em.initial_logits(truth)
    logits, slot_valid = jnp.asarray(logits), jnp.asarray(slot_valid)
    v = 0
    part = counts[v, 0] > 0  # label 0 covers one whole instance; split it: a label on half its superpoints
    half = part & (jnp.cumsum(part) <= jnp.sum(part) // 2)
    split = counts[v].at[6].set(jnp.where(half, counts[v, 0], 0.0))
    valid = label_valid[v].at[6].set(True)
    cost = em.cost_matrix(logits, split, totals[v])
    paper = em.e_step(cost, valid, slot_valid, em.EMConfig())
    robust = em.e_step(cost, valid, slot_valid, em.EMConfig(outlier_rate=0.05), split, totals[v])
    assert paper[6].sum() == 1.0  # the paper's model must match it to some instance
    assert robust[6].sum() == 0.0 and np.array_equal(robust[:6], paper[:6])
