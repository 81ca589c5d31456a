"""ppl.models.unnormalized: normalization, the exact landscape, data, training, bad input, CLI."""

from __future__ import annotations

import functools
import itertools
import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from ppl.models.unnormalized import benchmark, data, energies, evaluate, landscape, train

from ppl import transforms as T

pytest.importorskip("sklearn")


# -- normalization ---------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.6, 1.0])
def test_grid_log_z_matches_closed_form_2d(sigma):
    centre = jnp.array([0.4, -0.3])
    log_p = lambda p, x: -0.5 * jnp.sum((x - p) ** 2) / sigma**2
    log_z = float(evaluate.grid_log_z(log_p, centre))
    assert abs(log_z - 2 * math.log(sigma * math.sqrt(2 * math.pi))) < 2e-4


def test_grid_log_z_1d_and_nll():
    log_p = lambda p, x: -0.5 * (x - p) ** 2 - 0.7  # a "c" of 0.7 cancels in the NLL
    assert (
        abs(float(evaluate.grid_log_z(log_p, 0.5, dim=1)) - (math.log(math.sqrt(2 * math.pi)) - 0.7)) < 1e-4
    )
    test = jnp.linspace(-1.0, 2.0, 7)
    exact = float(jnp.mean(-dist.Normal(0.5, 1.0).log_prob(test)))
    assert abs(evaluate.grid_nll(log_p, 0.5, test) - exact) < 1e-4


def test_importance_log_z_within_standard_errors():
    dim, sigma, c = 8, 0.8, 0.3
    log_p = lambda p, x: -0.5 * jnp.sum((x - p) ** 2) / sigma**2 - c
    proposal = dist.MultivariateNormal(jnp.zeros(dim), jnp.eye(dim))
    out = evaluate.importance_log_z(log_p, jnp.full(dim, 0.2), proposal, jax.random.key(0), 40_000, 8_000)
    truth = dim * math.log(sigma * math.sqrt(2 * math.pi)) - c
    assert out["samples"] == 40_000 and 0 < out["ess"] <= 40_000
    assert abs(out["log_z"] - truth) < 4 * out["se"] + 1e-4, (out, truth)


def test_importance_is_exact_when_model_equals_proposal():
    train_x, test_x = data.load_digits()
    mean, cov = data.fit_gaussian(train_x)
    model = energies.tilted_mlp(mean, cov, width=16)
    out = evaluate.importance_nll(
        model.log_density,
        model.init(jax.random.key(1)),
        test_x,
        data.gaussian(mean, cov),
        jax.random.key(0),
        5_000,
        2_500,
    )
    assert abs(out["log_z"]) < 1e-3 and out["ess"] > 4_990
    assert abs(out["nll"] - float(jnp.mean(-data.gaussian(mean, cov).log_prob(test_x)))) < 1e-2


# -- exact landscape ---------------------------------------------------------------
EXPECTED_MIN_EIG = {1.0: 0.21, 2.0: 0.057, 3.0: 0.012, 4.0: 0.0021, 5.0: 0.0003}


def test_landscape_curvatures():
    mins = []
    for r, expected in EXPECTED_MIN_EIG.items():
        nce = functools.partial(landscape.nce_loss, nodes=200)
        eig = landscape.hessian_eigenvalues(nce, (r, landscape.LOG_SQRT_2PI), r)
        assert abs(eig[0] - expected) < 0.1 * expected + 1e-5, (r, eig)
        mins.append(eig[0])
        mle = landscape.hessian_eigenvalues(landscape.mle_loss, (r, 0.0), r)
        np.testing.assert_allclose(mle, [0.0, 1.0], atol=1e-12)  # curvature 1 in θ; c does not enter
    assert all(a > b for a, b in itertools.pairwise(mins))


def test_landscape_optimum_is_stationary_and_gd_slows_with_r():
    with jax.enable_x64(True):
        g = np.asarray(jax.grad(landscape.nce_loss)(jnp.array([3.0, landscape.LOG_SQRT_2PI]), 3.0))
    assert np.max(np.abs(g)) < 1e-10
    rows = landscape.landscape((1.0, 2.0, 3.0), cap=10_000)
    assert [r["mle_steps"] for r in rows] == [1, 1, 1]
    steps = [r["nce_steps"] for r in rows]
    assert steps[0] < steps[1] < steps[2] < 10_000, steps
    assert landscape.gd_steps(landscape.nce_loss, 3.0, rows[2]["nce_eta"], cap=10) is None  # cap hit


# -- data ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", data.TOY_SETS)
def test_toy_sets_deterministic_and_in_range(name):
    a, b = data.toy_2d(name, 1000, seed=3), data.toy_2d(name, 1000, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (1000, 2) and a.dtype == np.float32
    assert not np.array_equal(a, data.toy_2d(name, 1000, seed=4))
    assert np.all(np.abs(a) < 5.0) and np.all(np.abs(a.mean(0)) < 0.3)
    train_x, test_x = data.toy_2d_split(name, 800, 200, seed=3)
    assert train_x.shape == (800, 2) and test_x.shape == (200, 2)


def test_gaussian_1d_and_digits_split():
    x = data.gaussian_1d(2.0, 5000, seed=1)
    assert x.shape == (5000,) and abs(x.mean() - 2.0) < 0.05
    np.testing.assert_array_equal(x, data.gaussian_1d(2.0, 5000, seed=1))
    train_x, test_x = data.load_digits()
    assert train_x.shape == (1500, 64) and test_x.shape == (297, 64) and train_x.dtype == np.float32
    assert 0.0 <= train_x.min() and train_x.max() < 17 / 16
    np.testing.assert_array_equal(train_x, data.load_digits()[0])
    assert not np.array_equal(train_x, data.load_digits(seed=1)[0])


def test_noises_shapes_and_placement():
    train_x = data.toy_2d("moons", 4000)
    fitted, narrow, shifted = (data.noise(k, train_x) for k in data.NOISES)
    for d in (fitted, narrow, shifted):
        assert d.batch_shape == () and d.event_shape == (2,)
    np.testing.assert_allclose(
        np.asarray(narrow.covariance_matrix), np.asarray(fitted.covariance_matrix) / 4, rtol=1e-5
    )
    one = data.noise("shifted", data.gaussian_1d(1.0, 4000))
    assert one.event_shape == () and abs(float(one.loc) - 3.0) < 0.1
    with pytest.raises(ValueError, match="unknown noise 'wide'"):
        data.noise("wide", train_x)


def test_tilted_mlp_starts_at_its_base_and_has_c():
    mean, cov = np.array([0.5, -1.0]), np.array([[2.0, 0.3], [0.3, 1.0]])
    model = energies.tilted_mlp(mean, cov, width=8)
    params = model.init(jax.random.key(0))
    assert set(params) == {"net", "c"} and params["c"].shape == ()
    x = jnp.array([0.1, 0.2])
    expected = dist.MultivariateNormal(jnp.asarray(mean), jnp.asarray(cov)).log_prob(x)
    assert abs(float(model.log_density(params, x)) - float(expected)) < 1e-5
    grads = jax.grad(model.log_density)(params, x)
    assert all(jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    assert float(grads["c"]) == -1.0


# -- training ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", train.ESTIMATORS)
def test_1d_training_with_centred_noise_reaches_r(name):
    r = 2.0
    x = data.gaussian_1d(r, 4000, seed=0)
    res = train.train(
        train.OBJECTIVE_OF[name],
        name,
        energies.gaussian_mean(),
        x,
        dist.Normal(r, 1.0),
        steps=300,
        batch=64,
        lr=0.05,
        seed=[0, 1],
        track=lambda p: p["theta"],
    )
    assert res.values.shape == (2, 300) and res.tracked.shape == (2, 300)
    assert not res.diverged.any()
    err = np.abs(res.tracked[:, -50:].mean(1) - r)
    assert np.all(err < 0.25), err


@pytest.mark.parametrize("name", ["compositional", "bound"])
def test_far_noise_stays_finite_under_jit(name):
    r = 6.0
    x = data.gaussian_1d(r, 4000, seed=0)
    res = train.train(
        "mle",
        name,
        energies.gaussian_mean(),
        x,
        dist.Normal(0.0, 1.0),
        steps=400,
        batch=64,
        lr=0.05,
        seed=[0, 1, 2],
        track=lambda p: p["theta"],
    )
    assert not res.diverged.any()
    assert np.all(np.isfinite(res.values)) and np.all(np.isfinite(res.tracked))
    assert np.all(np.abs(res.tracked[:, -1]) < 3 * r)


def test_nan_is_recorded_as_divergence():
    base = energies.gaussian_mean()

    def log_density(params, x):  # NaN once θ passes 0.5
        return jnp.where(params["theta"] > 0.5, jnp.nan, base.log_density(params, x))

    model = energies.EnergyModel("nan_after_half", (), base.init, log_density)
    res = train.train(
        "mle",
        "naive",
        model,
        data.gaussian_1d(2.0, 1000),
        dist.Normal(2.0, 1.0),
        steps=200,
        batch=32,
        lr=0.05,
        seed=0,
        track=lambda p: p["theta"],
        chunk=50,
    )
    assert res.diverged.all() and 0 < res.diverged_at[0] < 200
    assert np.isnan(res.values[0, res.diverged_at[0] :]).all()
    last = res.tracked[0, res.diverged_at[0] - 1]  # the last finite parameters are kept
    assert last > 0.5 and float(res.seed_params(0)["theta"]) == last


def test_train_rejects_mismatched_names_and_shapes():
    model = energies.gaussian_mean()
    x = data.gaussian_1d(1.0, 100)
    with pytest.raises(ValueError, match="belongs to objective 'nce'"):
        train.train("mle", "nce", model, x, dist.Normal(0.0, 1.0), 10, 8, 0.1)
    with pytest.raises(ValueError, match="unknown estimator 'meco'"):
        train.train("mle", "meco", model, x, dist.Normal(0.0, 1.0), 10, 8, 0.1)
    with pytest.raises(ValueError, match="datum shape"):
        train.train("mle", "naive", model, np.zeros((100, 2)), dist.Normal(0.0, 1.0), 10, 8, 0.1)


def test_noise_of_wrong_dimension_is_a_clear_error():
    train_x = data.toy_2d("moons", 500)
    model = energies.tilted_mlp(*data.fit_gaussian(train_x), width=8)
    params, batch = model.init(jax.random.key(0)), jnp.asarray(train_x[:16])
    wrong = dist.MultivariateNormal(jnp.zeros(3), jnp.eye(3))
    est = T.unnormalized_nll(model.log_density, wrong, samples=16).estimator(
        strategies={"log_partition": T.compositional(0.1)}
    )
    with pytest.raises(ValueError, match=r"log_partition.*MultivariateNormal"):
        est.value_and_grad(jax.random.key(0), params, batch, state=est.init(params, batch))
    with pytest.raises(ValueError, match=r"'noise'.*MultivariateNormal"):
        T.nce(model.log_density, wrong).estimator().value_and_grad(jax.random.key(0), params, batch)


# -- benchmark -------------------------------------------------------------------------------
def test_cli_landscape_section(tmp_path, capsys):
    path = tmp_path / "out.json"
    record = benchmark.main(["--quick", "--sections", "landscape", "--no-progress", "--json", str(path)])
    assert "NCE λmin" in capsys.readouterr().out
    assert json.loads(path.read_text())["landscape"][0]["R"] == 1.0
    assert [r["R"] for r in record["landscape"]] == list(landscape.OFFSETS)


@pytest.mark.slow
def test_cli_quick_run(tmp_path):
    path = tmp_path / "quick.json"
    record = benchmark.main(["--quick", "--no-progress", "--json", str(path)])
    assert set(record) >= {"landscape", "oned", "toy", "digits", "toy_wins"}
    assert json.loads(path.read_text())["scale"] == "quick"


def _no_run(*args, **kwargs):
    raise AssertionError("the CLI started a section before rejecting its flags")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sections", ","], "(no empty entries)"),
        (["--sections", "landscape,toys"], "unknown section(s) toys; choose from landscape"),
        (["--noises", "fitted,wide"], "unknown noise(s) wide"),
        (["--digits-noises", ""], "(no empty entries)"),
        (["--sets", "moons,moons"], "set(s) named more than once: moons"),
        (["--seeds", "0"], "argument --seeds: expected a positive integer, got '0'"),
        (["--steps", "-5"], "argument --steps: expected a positive integer, got '-5'"),
        (["--scale", "huge"], "argument --scale: invalid choice"),
        (["--json", "/nonexistent-folder/out.json"], "does not exist"),
    ],
)
def test_cli_misuse_exits_2_with_a_message_before_any_section(argv, message, capsys, monkeypatch):
    for name in ("run_landscape", "run_oned", "run_toy", "run_digits"):
        monkeypatch.setattr(benchmark, name, _no_run)
    with pytest.raises(SystemExit) as exit_:
        benchmark.main(["--quick", "--no-progress", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_writes_strict_json_and_exits_1_on_non_finite_results(tmp_path, monkeypatch):
    rows = [{**row, "mle_curvature": float("inf")} for row in landscape.landscape((1.0,), cap=100)]
    monkeypatch.setattr(benchmark, "run_landscape", lambda scale: rows)
    path = tmp_path / "out.json"
    with pytest.raises(SystemExit) as exit_:
        benchmark.main(["--quick", "--sections", "landscape", "--no-progress", "--json", str(path)])
    assert exit_.value.code != 0 and "non-finite results at landscape[0].mle_curvature" in str(exit_.value)
    text = path.read_text()
    assert "Infinity" not in text
    saved = json.loads(text)
    assert saved["landscape"][0]["mle_curvature"] is None
    assert saved["nonfinite"] == ["landscape[0].mle_curvature"]


def test_cli_misuse_exit_status_from_the_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "ppl.models.unnormalized", "--sections", ","],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "(no empty entries)" in done.stderr
