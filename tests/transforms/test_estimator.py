"""The estimator's calling convention, its checks of numbers, and ``explain``."""

from __future__ import annotations

import re
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import ppl
from ppl import transforms as T


@ppl.gen
def model(params):
    z = ppl.sample("z", dist.Normal(0.0, 1.0))
    ppl.sample("x", dist.Normal(z, 0.5))


@ppl.gen
def guide(params):
    ppl.sample("z", dist.Normal(params["loc"], params["scale"]))


PARAMS = {"loc": 0.2, "scale": 0.9}
OBS = {"x": 1.0}


def elbo_estimator(**kw):
    return T.elbo(model, guide).estimator(**kw)


# -- calling convention ------------------------------------------------------------------------
def test_value_and_grad_returns_value_grad_and_state_with_grad_shaped_like_params() -> None:
    out = elbo_estimator().value_and_grad(jax.random.key(0), PARAMS, OBS)
    assert isinstance(out, T.Estimate)
    value, grad, state = out
    assert value.shape == () and state == {}
    assert jax.tree_util.tree_structure(grad) == jax.tree_util.tree_structure(PARAMS)
    assert out.grad is grad


def test_the_same_return_shape_with_a_stateful_baseline() -> None:
    @T.expectation
    def objective(theta):
        return ppl.sample("n", dist.Poisson(jnp.exp(theta))) * 1.0

    est = objective.estimator(strategies={"n": T.reinforce(T.running_average())})
    state = est.init(0.3)
    _, _, state = est.value_and_grad(jax.random.key(0), 0.3, state=state)
    assert set(state) == {"n"} and int(state["n"]["count"]) == 1
    with pytest.raises(
        ValueError, match=re.escape("create the state with state = estimator.init(params, *data)")
    ):
        est.value_and_grad(jax.random.key(0), 0.3)


def test_data_passed_where_params_are_expected_is_caught() -> None:
    est = elbo_estimator()
    with pytest.raises(TypeError) as info:
        est.value_and_grad(jax.random.key(0), 1.0, PARAMS)
    assert "the call is value_and_grad(key, params, *data), parameters first" in "".join(info.value.__notes__)

    @T.expectation
    def uses_data_only(params, x):
        return ppl.sample("z", dist.Normal(x, 1.0))

    with pytest.raises(
        ValueError, match=re.escape("does not depend on params, the first argument after the key")
    ):
        uses_data_only.estimator().value_and_grad(jax.random.key(0), 1.0, 2.0)
    with pytest.raises(TypeError, match=re.escape("params['n'] has dtype int32; params (the first argument")):
        est.value_and_grad(jax.random.key(0), {"n": jnp.arange(3)}, OBS)
    with pytest.raises(ValueError, match="params \\(the first argument after the key\\) is empty"):
        est.value_and_grad(jax.random.key(0), {}, OBS)


def test_numpy_integer_particle_counts_are_accepted_and_bad_ones_refused() -> None:
    assert elbo_estimator(particles=np.int64(3)).particles == 3
    assert T.sir(np.int32(4)).particles == 4
    with pytest.raises(ValueError, match="particles must be a positive integer, got 0"):
        elbo_estimator(particles=0)
    with pytest.raises(TypeError, match=r"particles must be a positive integer, got 2\.5"):
        elbo_estimator(particles=2.5)


def test_a_traced_baseline_constant_gets_a_clear_error() -> None:
    T.constant(np.float32(1.5))  # concrete NumPy and JAX scalars are fine
    T.constant(jnp.asarray(1.5))
    with pytest.raises(TypeError, match="constant: the baseline must be a concrete number"):
        jax.jit(lambda c: T.reinforce(T.constant(c)).baseline.c)(1.0)


def test_compiles_once_across_steps() -> None:
    traces = []

    @T.expectation
    def objective(theta, x):
        traces.append(1)
        return -((ppl.sample("z", dist.Normal(theta, 1.0)) - x) ** 2)

    est = objective.estimator()
    for i in range(4):
        est.value_and_grad(jax.random.key(i), 0.1 * i, 1.0 + i)
    est.check()
    assert len(traces) == 1


# -- checks of numbers -------------------------------------------------------------------------
BAD_SCALE = "address 'z' (Normal): parameter scale = -1.0 is outside its constraint ((0, inf))"


def test_the_first_call_raises_a_bad_parameter_at_once() -> None:
    with pytest.raises(ValueError, match=re.escape(BAD_SCALE)):
        elbo_estimator().value_and_grad(jax.random.key(0), {"loc": 0.0, "scale": -1.0}, OBS)


def test_later_failures_are_raised_one_call_late_or_by_check() -> None:
    est = elbo_estimator()
    est.value_and_grad(jax.random.key(0), PARAMS, OBS)
    bad = est.value_and_grad(jax.random.key(1), {"loc": 0.0, "scale": -1.0}, OBS)
    assert jnp.isnan(bad.value)  # the failed check poisons the value, it is never a finite lie
    with pytest.raises(ValueError, match=re.escape(BAD_SCALE + " [in the previous call of this estimator")):
        est.value_and_grad(jax.random.key(2), PARAMS, OBS)
    est.value_and_grad(jax.random.key(3), {"loc": 0.0, "scale": -1.0}, OBS)
    with pytest.raises(ValueError, match=re.escape(BAD_SCALE + " [in the last call of this estimator]")):
        est.check()
    est.check()  # nothing pending any more


def test_sync_checks_raise_in_the_same_call_and_off_checks_never_raise() -> None:
    sync = elbo_estimator(checks="sync")
    sync.value_and_grad(jax.random.key(0), PARAMS, OBS)
    with pytest.raises(ValueError, match=re.escape(BAD_SCALE)):
        sync.value_and_grad(jax.random.key(1), {"loc": 0.0, "scale": -1.0}, OBS)
    off = elbo_estimator(checks="off")
    assert jnp.isnan(off.value_and_grad(jax.random.key(1), {"loc": 0.0, "scale": -1.0}, OBS).value)
    with pytest.raises(ValueError, match="checks must be one of deferred, sync, off"):
        elbo_estimator(checks="always")


def test_set_runtime_checks_takes_effect_when_changed() -> None:
    est = elbo_estimator()
    bad = {"loc": 0.0, "scale": -1.0}
    with pytest.raises(ValueError):
        est.value_and_grad(jax.random.key(0), bad, OBS)
    ppl.set_runtime_checks(False)
    try:
        assert jnp.isnan(est.value_and_grad(jax.random.key(0), bad, OBS).value)
        est.check()
    finally:
        ppl.set_runtime_checks(True)
    est.value_and_grad(jax.random.key(0), bad, OBS)
    with pytest.raises(ValueError, match=re.escape(BAD_SCALE)):
        est.check()


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_non_finite_data_on_a_real_site_names_the_site(bad) -> None:
    with pytest.raises(ValueError, match=re.escape("address 'x' (Normal): the value given to assess is")):
        elbo_estimator().value_and_grad(jax.random.key(0), PARAMS, {"x": bad})


def test_bernoulli_probs_outside_the_unit_interval_is_not_a_silent_one() -> None:
    @T.expectation
    def objective(p):
        return ppl.sample("c", dist.Bernoulli(probs=p))

    est = objective.estimator(strategies={"c": T.reinforce()})
    with pytest.raises(ValueError, match=re.escape("address 'c' (BernoulliProbs): parameter probs = 1.7")):
        est.value_and_grad(jax.random.key(0), 1.7)


def test_a_non_finite_gradient_with_valid_numbers_names_the_leaf() -> None:
    @T.expectation
    def objective(params):
        z = ppl.sample("z", dist.Normal(0.0, 1.0))
        return jnp.sqrt(params["a"]) + z * params["b"]

    with pytest.raises(
        ValueError,
        match=re.escape("the gradient of params['a'] has a non-finite entry while the value is finite"),
    ):
        objective.estimator().value_and_grad(jax.random.key(0), {"a": 0.0, "b": 1.0})


def test_a_non_finite_entry_in_a_matrix_leaf_is_named_among_finite_leaves() -> None:
    @T.expectation
    def objective(params):
        z = ppl.sample("z", dist.Normal(0.0, 1.0))
        return jnp.sum(jnp.sqrt(params["w"])) + z * jnp.sum(params["b"])

    w = jnp.ones((3, 4)).at[2, 1].set(0.0)  # d sqrt(w)/dw = inf there
    with pytest.raises(ValueError, match=re.escape("the gradient of params['w'] has a non-finite entry")):
        objective.estimator(checks="sync").value_and_grad(jax.random.key(0), {"b": jnp.ones(2), "w": w})


def test_opposite_infinities_in_a_gradient_are_caught() -> None:
    @T.expectation
    def objective(w):
        return jnp.sqrt(w[0]) - jnp.sqrt(w[1]) + ppl.sample("z", dist.Normal(w[2], 1.0))

    with pytest.raises(ValueError, match=re.escape("the gradient of params has a non-finite entry")):
        objective.estimator(checks="sync").value_and_grad(jax.random.key(0), jnp.array([0.0, 0.0, 1.0]))


def test_a_finite_gradient_whose_entries_sum_past_float32_is_not_a_failure() -> None:
    # The compiled step screens the gradient by the sum of its entries, which overflows here
    # (2 x 2e38); each entry is finite, so nothing is raised and the gradient is returned as is.
    @T.expectation
    def objective(params):
        z = ppl.sample("z", dist.Normal(0.0, 1.0))
        return 2e38 * (params["a"][0] - 1.0) + 2e38 * (params["b"][0, 0] - 1.0) + z * params["a"][1]

    est = objective.estimator(checks="sync")
    params = {"a": jnp.ones(2), "b": jnp.ones((2, 2))}
    for i in range(2):
        grad = est.value_and_grad(jax.random.key(i), params).grad
    assert float(grad["a"][0]) == pytest.approx(2e38) and float(grad["b"][0, 0]) == pytest.approx(2e38)
    assert jnp.isfinite(jax.jit(lambda p: est.grad(jax.random.key(0), p)["a"][0])(params))


def test_diagnose_returns_none_when_all_is_well() -> None:
    assert elbo_estimator().diagnose(jax.random.key(0), PARAMS, OBS) is None


def test_a_non_finite_value_with_valid_numbers_says_so() -> None:
    @T.expectation
    def objective(a):
        return jnp.log(a - 1.0) + ppl.sample("z", dist.Normal(a, 1.0))

    with pytest.raises(
        ValueError, match="the value of <expectation 'objective'> is not finite while every distribution"
    ):
        objective.estimator().value_and_grad(jax.random.key(0), 0.5)


def test_inside_the_users_vmap_a_failure_raises_naming_the_mapped_index() -> None:
    est = elbo_estimator()
    keys = jax.random.split(jax.random.key(0), 3)
    scales = jnp.array([1.0, -1.0, 1.0])
    grads = jax.vmap(lambda k: est.grad(k, PARAMS, OBS))(keys)
    assert grads["loc"].shape == (3,)
    with pytest.raises(Exception, match="at mapped index 1"):
        jax.block_until_ready(jax.vmap(lambda k, s: est.grad(k, {"loc": 0.0, "scale": s}, OBS))(keys, scales))
    with pytest.raises(ValueError, match=re.escape(BAD_SCALE)):
        est.diagnose(keys[1], {"loc": 0.0, "scale": -1.0}, OBS)


# -- strategies: errors, explain, auto's budget -------------------------------------------------
def test_an_unprefixed_strategy_address_suggests_the_full_one() -> None:
    est = T.iwelbo(model, guide, 3).estimator(strategies={"z": T.reparam()})
    with pytest.raises(
        ValueError,
        match=re.escape(
            "strategies: no sample site or log_expectation at address 'z' in <expectation 'iwelbo(3)'>; "
            "its addresses are 'particles/z'; did you mean 'particles/z'?"
        ),
    ):
        est.value_and_grad(jax.random.key(0), PARAMS, OBS)


def test_a_site_missing_from_the_model_names_the_program_and_its_addresses() -> None:
    @ppl.gen
    def other_guide(params):
        ppl.sample("zz", dist.Normal(params["loc"], params["scale"]))

    with pytest.raises(
        ValueError,
        match=re.escape(
            "assess: <generative function 'model'> samples address 'z' (Normal), but the choice map has no "
            "value for it (every sample site needs one); the choice map has 'x', 'zz'; did you mean 'zz'?"
        ),
    ):
        T.elbo(model, other_guide).estimator().value_and_grad(jax.random.key(0), PARAMS, OBS)


def test_an_address_the_model_never_samples_lists_what_it_samples() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "assess: the choice map has address 'y', which <generative function 'model'> never samples; "
            "it samples 'x', 'z'"
        ),
    ):
        model.assess({"z": 0.0, "x": 1.0, "y": 2.0}, None)


def test_explain_lists_each_site_with_its_strategy_baseline_and_rule(capsys) -> None:
    @T.expectation
    def objective(theta):
        a = ppl.sample("a", dist.Normal(theta, 1.0))
        b = ppl.sample("b", dist.Bernoulli(logits=theta))
        n = ppl.sample("n", dist.Poisson(jnp.exp(theta)))
        return a + b + n

    est = objective.estimator(strategies={"n": T.reinforce(T.constant(1.0))})
    explanation = est.explain(0.3)
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == ["address", "distribution", "strategy", "baseline", "rule"]
    assert isinstance(explanation["a"].strategy, T.Reparam)
    assert explanation["a"].rule == "auto: continuous, reparameterized sampler"
    assert isinstance(explanation["b"].strategy, T.Enum)
    assert explanation["b"].rule.startswith("auto: finite support of 2 values, enumeration cost 2 <= 64")
    assert explanation["n"].rule == "strategies['n']" and explanation["n"].baseline == "Constant(c=1.0)"
    assert "Poisson" in printed and "strategies['n']" in printed


def test_auto_bounds_the_total_enumeration_cost_and_warns_once_naming_the_sites() -> None:
    @T.expectation
    def many(theta):
        total = 0.0
        for i in range(40):
            total = total + ppl.sample(f"c{i}", dist.Bernoulli(logits=theta))
        return total

    est = many.estimator()
    start = time.perf_counter()
    with pytest.warns(T.StrategyWarning) as record:
        est.value_and_grad(jax.random.key(0), 0.2)
    assert len(record) == 1
    assert str(record[0].message).startswith(
        "auto: the enumeration budget (max_enumeration=64 continuations, the product of the enumerated "
        "supports) is spent, so 'c10', 'c11', 'c12', 'c13', 'c14', 'c15', 'c16', 'c17', ... (34 in all) use "
        "the score function"
    )
    assert time.perf_counter() - start < 60  # 2**40 continuations would never finish
    explanation = est.explain(0.2, show=False)
    assert [isinstance(explanation[f"c{i}"].strategy, T.Enum) for i in range(8)] == [True] * 6 + [False] * 2
    assert "enumeration cost 128 > 64" in explanation["c6"].rule
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per estimator
        est.value_and_grad(jax.random.key(1), 0.2)
        est.check()


def test_auto_inside_a_plate_uses_leave_one_out_with_particles_and_warns_without() -> None:
    @ppl.gen
    def unit(logit):
        return ppl.sample("c", dist.Bernoulli(logits=logit))

    @T.expectation
    def objective(logits):
        return jnp.sum(ppl.sample("units", ppl.vmap(unit), logits))

    logits = jnp.zeros(3)
    with pytest.warns(T.StrategyWarning, match="'units/c' get a score-function gradient without a baseline"):
        objective.estimator().value_and_grad(jax.random.key(0), logits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explanation = objective.estimator(particles=4).explain(logits, show=False)
    decision = explanation["units/c"]
    assert decision.strategy == T.reinforce(T.leave_one_out())
    assert "leave-one-out across particles=4" in decision.rule
