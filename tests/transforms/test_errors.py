"""Bad input fails at trace time with a message naming the address and the distribution."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import pytest

import ppl
from ppl import transforms as T


def one_site(make):
    @T.expectation
    def objective(theta):
        return jnp.sum(ppl.sample("c", make(theta)))

    return objective


def test_reparam_on_a_discrete_site() -> None:
    est = one_site(lambda t: dist.Bernoulli(logits=t)).estimator(strategies={"c": T.reparam()})
    with pytest.raises(ValueError, match=re.escape("reparam at address 'c': BernoulliLogits is discrete")):
        est.grad(jax.random.key(0), 0.1)


def test_enum_on_an_infinite_support() -> None:
    est = one_site(lambda t: dist.Poisson(t)).estimator(strategies={"c": T.enum()})
    with pytest.raises(ValueError, match=re.escape("address 'c' (Poisson): enum needs a finite support")):
        est.grad(jax.random.key(0), 1.0)


def test_mvd_on_an_unsupported_distribution() -> None:
    est = one_site(lambda t: dist.Gamma(t, 1.0)).estimator(strategies={"c": T.mvd()})
    with pytest.raises(ValueError, match=re.escape("mvd at address 'c': no weak derivative for Gamma")):
        est.grad(jax.random.key(0), 1.0)


def test_reinforce_on_a_support_that_moves_with_theta() -> None:
    est = one_site(lambda t: dist.Uniform(0.0, t)).estimator(strategies={"c": T.reinforce()})
    with pytest.raises(ValueError, match=re.escape("reinforce at address 'c': the support of Uniform")):
        est.grad(jax.random.key(0), 1.0)


def test_continuation_strategy_inside_scan() -> None:
    @T.expectation
    def objective(theta):
        def step(carry, _):
            return carry + ppl.sample("c", dist.Bernoulli(logits=theta)), None

        return ppl.scan(step, 0.0, None, length=3)[0]

    est = objective.estimator(strategies={"c": T.enum()})
    with pytest.raises(ValueError, match=re.escape("enum at address 'c' (BernoulliLogits): continuation")):
        est.grad(jax.random.key(0), 0.1)


def test_same_address_twice() -> None:
    @T.expectation
    def objective(theta):
        return ppl.sample("z", dist.Normal(theta, 1.0)) + ppl.sample("z", dist.Normal(theta, 1.0))

    with pytest.raises(ValueError, match=re.escape("address 'z' (Normal) is sampled twice")):
        objective.value_and_grad(jax.random.key(0), 0.1)


def test_strategy_for_an_unknown_address() -> None:
    est = one_site(lambda t: dist.Normal(t, 1.0)).estimator(strategies={"zz": T.reparam()})
    with pytest.raises(
        ValueError,
        match=re.escape(
            "strategies: no sample site or log_expectation at address 'zz' in <expectation 'objective'>; "
            "its addresses are 'c'"
        ),
    ):
        est.grad(jax.random.key(0), 0.1)


def test_leave_one_out_without_particles() -> None:
    est = one_site(lambda t: dist.Poisson(t)).estimator(strategies={"c": T.reinforce(T.leave_one_out())})
    with pytest.raises(
        ValueError,
        match=re.escape("leave_one_out baseline at address 'c' (Poisson) needs particles >= 2"),
    ):
        est.grad(jax.random.key(0), 1.0)


def test_stateful_baseline_without_state() -> None:
    est = one_site(lambda t: dist.Poisson(t)).estimator(strategies={"c": T.reinforce(T.running_average())})
    with pytest.raises(ValueError, match=re.escape("address 'c' has a stateful baseline")):
        est.grad(jax.random.key(0), 1.0)


def test_non_scalar_objective() -> None:
    @T.expectation
    def objective(theta):
        return ppl.sample("z", dist.Normal(theta, 1.0).expand([3]))

    with pytest.raises(
        ValueError, match=re.escape("the objective's return value must be a scalar, got shape (3,)")
    ):
        objective.value_and_grad(jax.random.key(0), jnp.zeros(()))


@ppl.gen
def model(theta):
    z = ppl.sample("z", dist.Normal(theta, 1.0))
    ppl.sample("x", dist.Gamma(jnp.exp(z), 1.0))


def objective_with_density(choices):
    @T.expectation
    def objective(theta):
        return T.density(model, choices, theta)

    return objective


def test_density_with_a_missing_address() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "assess: <generative function 'model'> samples address 'x' (Gamma), but the choice map has no "
            "value for it (every sample site needs one); the choice map has 'z'"
        ),
    ):
        objective_with_density({"z": 0.1}).estimate(jax.random.key(0), 0.0)


def test_density_with_an_extra_address() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "assess: the choice map has address 'w', which <generative function 'model'> never samples; "
            "it samples 'x', 'z'"
        ),
    ):
        objective_with_density({"z": 0.1, "x": 1.0, "w": 2.0}).estimate(jax.random.key(0), 0.0)


def test_constraint_outside_the_support() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "address 'x' (Gamma): the value given to assess is -1.0, outside the support ((0, inf))"
        ),
    ):
        objective_with_density({"z": 0.1, "x": -1.0}).estimate(jax.random.key(0), 0.0)


def test_constraint_outside_the_support_under_jit() -> None:
    @jax.jit
    def run(x):
        return model.assess({"z": 0.1, "x": x}, 0.0)[0]

    with pytest.raises(
        Exception,
        match=re.escape(
            "address 'x' (Gamma): the value given to assess is -1.0, outside the support ((0, inf))"
        ),
    ):
        jax.block_until_ready(run(-1.0))


def test_shapes_that_do_not_match() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape("address 'z' (Normal): the value given to assess has shape (3,)"),
    ):
        objective_with_density({"z": jnp.zeros(3), "x": 1.0}).estimate(jax.random.key(0), 0.0)


def test_sample_outside_a_program() -> None:
    with pytest.raises(RuntimeError, match=re.escape("ppl.sample('z', ...) was called outside a program")):
        ppl.sample("z", dist.Normal(0.0, 1.0))


def test_sim_outside_an_objective() -> None:
    with pytest.raises(RuntimeError, match="sim is only available inside an @expectation"):
        T.sim(model, 0.0)
