"""ppl.switch / ppl.cond: sample sites inside branches, addresses per branch, only the selected
branch counts.

Every density is checked against the closed form written out by hand.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import ppl


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


PROBS = np.array([0.2, 0.5, 0.3])


@ppl.gen
def three_way(scale):
    k = ppl.sample("k", dist.Categorical(PROBS))
    loc = ppl.switch(
        k,
        [
            lambda s: ppl.sample("a", dist.Normal(-2.0, s)),
            lambda s: ppl.sample("b", dist.Laplace(1.0, s)),
            lambda s: jnp.asarray(4.0),
        ],
        scale,
        addr="branch",
    )
    ppl.sample("x", dist.Normal(loc, 1.0))
    return loc


def three_way_log_density(choices, scale):
    """log p(k) + the selected branch's site + the observation, by hand."""
    k = int(choices["k"])
    a, b, x = choices["branch"]["0"]["a"], choices["branch"]["1"]["b"], choices["x"]
    inner = [dist.Normal(-2.0, scale).log_prob(a), dist.Laplace(1.0, scale).log_prob(b), 0.0][k]
    loc = [a, b, 4.0][k]
    return np.log(PROBS[k]) + inner + dist.Normal(loc, 1.0).log_prob(x)


def test_outside_a_program_they_are_lax_switch_and_cond():
    branches = [lambda x: x + 1.0, lambda x: x * 10.0]
    assert ppl.switch(1, branches, 2.0) == jax.lax.switch(1, branches, 2.0) == 20.0
    assert ppl.cond(False, lambda: 1.0, lambda: 2.0) == 2.0


def test_every_branch_has_its_own_addresses_under_addr():
    trace = three_way.simulate(jax.random.key(0), 0.5)
    assert sorted(ppl.flatten(trace.choices)) == [
        ("branch", "0", "a"),
        ("branch", "1", "b"),
        ("k",),
        ("x",),
    ]


def test_cond_names_its_branches_true_and_false():
    @ppl.gen
    def model():
        c = ppl.sample("c", dist.Bernoulli(0.5))
        return ppl.cond(c, lambda: ppl.sample("y", dist.Normal(0.0, 1.0)), lambda: jnp.asarray(0.0))

    assert sorted(ppl.flatten(model.simulate(jax.random.key(0)).choices)) == [("c",), ("true", "y")]


def test_simulate_scores_only_the_selected_branch():
    traces = jax.vmap(lambda key: three_way.simulate(key, 0.7))(jax.random.split(jax.random.key(1), 30))
    ks = set()
    for i in range(30):
        one = jax.tree_util.tree_map(lambda v, i=i: v[i], traces)
        ks.add(int(one.choices["k"]))
        np.testing.assert_allclose(one.score, three_way_log_density(one.choices, 0.7), rtol=1e-12)
        loc = [one.choices["branch"]["0"]["a"], one.choices["branch"]["1"]["b"], 4.0][int(one.choices["k"])]
        np.testing.assert_allclose(one.retval, loc)
    assert ks == {0, 1, 2}


@pytest.mark.parametrize("k", [0, 1, 2])
def test_assess_ignores_the_values_of_unselected_branches(k):
    choices = {"k": k, "branch": {"0": {"a": -1.5}, "1": {"b": 0.5}}, "x": 0.3}
    moved = {"k": k, "branch": {"0": {"a": 7.0}, "1": {"b": -9.0}}, "x": 0.3}
    moved["branch"][str(k)] = choices["branch"].get(str(k), {})
    score, _ = three_way.assess(choices, 0.7)
    np.testing.assert_allclose(score, three_way_log_density(choices, 0.7), rtol=1e-12)
    np.testing.assert_allclose(three_way.assess(moved, 0.7)[0], score, rtol=1e-12)


def test_generate_weighs_observations_only_in_the_selected_branch():
    @ppl.gen
    def model():
        c = ppl.sample("c", dist.Bernoulli(0.5))
        ppl.cond(
            c,
            lambda: ppl.sample("y", dist.Normal(1.0, 1.0)),
            lambda: ppl.sample("y", dist.Normal(-1.0, 2.0)),
        )

    obs = {"c": 1, "true": {"y": 0.2}, "false": {"y": 0.2}}
    _, weight = model.generate(jax.random.key(0), obs)
    np.testing.assert_allclose(weight, np.log(0.5) + dist.Normal(1.0, 1.0).log_prob(0.2), rtol=1e-12)


def test_branches_inside_a_plate_select_per_element():
    plate = ppl.vmap(three_way, in_axes=None, axis_size=5)
    trace = jax.jit(plate.simulate)(jax.random.key(2), 0.4)
    total = sum(
        three_way_log_density(jax.tree_util.tree_map(lambda v, i=i: v[i], trace.choices), 0.4)
        for i in range(5)
    )
    np.testing.assert_allclose(trace.score, total, rtol=1e-12)
    np.testing.assert_allclose(jax.jit(plate.assess)(trace.choices, 0.4)[0], total, rtol=1e-12)


def test_plates_and_scans_inside_a_branch_count_only_when_selected():
    @ppl.gen
    def model(xs):
        c = ppl.sample("c", dist.Bernoulli(0.25))

        def walk():
            def step(z, x):
                z = ppl.sample("z", dist.Normal(z, 1.0))
                ppl.sample("x", dist.Normal(z, 0.5))
                return z, None

            ppl.scan(step, 0.0, xs, addr="walk")
            return jnp.asarray(0.0)

        def iid():
            ppl.sample("x", ppl.vmap(ppl.gen(lambda: ppl.sample("v", dist.Normal(0.0, 3.0))), axis_size=3))
            return jnp.asarray(1.0)

        return ppl.cond(c, walk, iid)

    xs = jnp.array([0.1, -0.2, 0.4])
    zs, vs = jnp.array([0.3, -0.1, 0.2]), jnp.array([1.0, 2.0, -1.0])
    walk = dist.Normal(jnp.concatenate([jnp.zeros(1), zs[:-1]]), 1.0).log_prob(zs).sum()
    walk = walk + dist.Normal(zs, 0.5).log_prob(xs).sum()
    iid = dist.Normal(0.0, 3.0).log_prob(vs).sum()
    for c, expected in [(1, np.log(0.25) + walk), (0, np.log(0.75) + iid)]:
        choices = {"c": c, "true": {"walk": {"z": zs, "x": xs}}, "false": {"x": {"v": vs}}}
        np.testing.assert_allclose(jax.jit(model.assess)(choices, xs)[0], expected, rtol=1e-12)


def test_nested_branches_count_only_when_all_enclosing_ones_are_selected():
    @ppl.gen
    def model():
        i = ppl.sample("i", dist.Bernoulli(0.5))
        j = ppl.sample("j", dist.Bernoulli(0.5))

        def outer():
            return ppl.cond(j, lambda: ppl.sample("y", dist.Normal(0.0, 1.0)), lambda: jnp.asarray(0.0))

        return ppl.cond(i, outer, lambda: jnp.asarray(0.0))

    base = 2 * np.log(0.5)
    for i, j, extra in [(1, 1, dist.Normal(0.0, 1.0).log_prob(0.7)), (1, 0, 0.0), (0, 1, 0.0)]:
        score = model.assess({"i": i, "j": j, "true": {"true": {"y": 0.7}}})[0]
        np.testing.assert_allclose(score, base + extra, rtol=1e-12)


def test_traced_checks_apply_in_the_selected_branch_only():
    @ppl.gen
    def model(scale):
        c = ppl.sample("c", dist.Bernoulli(0.5))
        return ppl.cond(
            c,
            lambda: ppl.sample("y", dist.Normal(0.0, scale)),
            lambda: ppl.sample("w", dist.Normal(0.0, 1.0)),
        )

    assess = jax.jit(model.assess)
    unselected = assess({"c": 0, "true": {"y": 0.1}, "false": {"w": 0.2}}, -1.0)[0]
    np.testing.assert_allclose(unselected, np.log(0.5) + dist.Normal(0.0, 1.0).log_prob(0.2), rtol=1e-12)
    with pytest.raises(Exception, match=r"true/y.*scale"):
        jax.block_until_ready(assess({"c": 1, "true": {"y": 0.1}, "false": {"w": 0.2}}, -1.0))


def test_bad_index_or_branches_raise_at_trace_time():
    def run(body):
        return ppl.gen(body).simulate(jax.random.key(0))

    with pytest.raises(TypeError, match="integer scalar"):
        run(lambda: ppl.switch(jnp.array([0, 1]), [lambda: 0.0, lambda: 1.0]))
    with pytest.raises(TypeError, match="integer scalar"):
        run(lambda: ppl.switch(0.5, [lambda: 0.0, lambda: 1.0]))
    with pytest.raises(TypeError, match="boolean scalar"):
        run(lambda: ppl.cond(jnp.array([True, False]), lambda: 0.0, lambda: 1.0))
    with pytest.raises(TypeError, match="non-empty"):
        run(lambda: ppl.switch(0, []))
    with pytest.raises(TypeError, match=r"branch '1' returns a float\S*\[2\] where branch '0'"):
        run(lambda: ppl.switch(0, [lambda: jnp.zeros(3), lambda: jnp.zeros(2)]))
    with pytest.raises(TypeError, match="same structure"):
        run(lambda: ppl.switch(0, [lambda: (1.0, 2.0), lambda: 1.0]))
    with pytest.raises(TypeError, match="same shapes and dtypes"):
        run(lambda: ppl.cond(True, lambda: jnp.int32(1), lambda: jnp.float32(1.0)))


def test_the_index_is_clamped_like_lax_switch():
    @ppl.gen
    def model():
        return ppl.switch(5, [lambda: jnp.asarray(0.0), lambda: ppl.sample("y", dist.Normal(0.0, 1.0))])

    trace = model.simulate(jax.random.key(0))
    np.testing.assert_allclose(trace.retval, trace.choices["1"]["y"])
    np.testing.assert_allclose(trace.score, dist.Normal(0.0, 1.0).log_prob(trace.retval))
