"""The digits VAE (ppl.models.vae): data, every training objective, evaluation, bad input, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("sklearn")
from ppl.models import vae


@pytest.fixture(scope="module")
def data() -> tuple[jax.Array, jax.Array]:
    return vae.load_digits()


# A narrower network than the default (64 -> 32 -> 8, 4 -> 32 -> 64) compiles and
# runs faster; everything but the layer widths is the module's.
SMALL = vae.Size(pixels=64, latent=4, hidden=32)


@pytest.fixture(scope="module")
def init() -> dict:
    return vae.init_params(jax.random.key(0), SMALL)


def test_data_split_is_fixed_and_binary(data):
    train_x, test_x = data
    assert train_x.shape == (1500, 64) and test_x.shape == (297, 64)
    assert train_x.dtype == jnp.float32
    assert set(np.unique(np.asarray(train_x))) == {0.0, 1.0}
    again_train, again_test = vae.load_digits()
    np.testing.assert_array_equal(again_train, train_x)
    np.testing.assert_array_equal(again_test, test_x)
    big_train, big_test = vae.load_digits("table1")
    assert big_train.shape == (1500, 784) and big_test.shape == (297, 784)
    # Nearest-neighbour upsampling: source pixel i covers output rows/columns
    # ceil(3.5 i) .. ceil(3.5 (i + 1)) - 1, so sampling there gives back the 8×8
    # image (the split is the same), and every output pixel copies one source pixel.
    first = [int(np.ceil(3.5 * i)) for i in range(8)]
    big = np.asarray(big_test).reshape(-1, 28, 28)
    np.testing.assert_array_equal(big[:, first][:, :, first], np.asarray(test_x).reshape(-1, 8, 8))
    assert big.sum() > 9 * np.asarray(test_x).sum()  # blocks of 9 to 16 pixels each


@pytest.mark.parametrize("name", list(vae.OBJECTIVES))
def test_few_steps_of_each_objective(name, data, init):
    train_x, _ = data
    fit = vae.train(name, init, train_x, steps=3, key=jax.random.key(1), progress=False)
    assert jax.tree.structure(fit.params) == jax.tree.structure(init)
    for new, old in zip(jax.tree.leaves(fit.params), jax.tree.leaves(init)):
        assert new.shape == old.shape and bool(jnp.all(jnp.isfinite(new)))
    assert fit.bounds.shape == (3,) and np.all(np.isfinite(fit.bounds))
    # A plausible bound for 64 binary pixels: below 0, above 64 log(1/2) - 40.
    assert np.all(fit.bounds < 0) and np.all(fit.bounds > 64 * np.log(0.5) - 40)
    # Both networks moved (for rws5: the decoder by wake-p, the encoder by wake-q).
    for part in ("decoder", "encoder"):
        moved = max(
            float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(jax.tree.leaves(fit.params[part]), jax.tree.leaves(init[part]))
        )
        assert moved > 1e-4, f"{name}: the {part} did not move"
    if name == "rws5":  # retrace guard: its own jitted step compiled once for the three steps
        assert vae.make_rws_update(vae.LEARNING_RATE, vae.BATCH)[1]._cache_size() == 1


def test_elbo_training_improves_heldout_bound(data, init):
    train_x, test_x = data
    key = jax.random.key(7)
    before = vae.log_likelihood(init, test_x, key, particles=50)
    fit = vae.train("elbo", init, train_x, steps=300, key=jax.random.key(2), progress=False)
    after = vae.log_likelihood(fit.params, test_x, key, particles=50)
    # Untrained about -45 nats per image, after 300 steps about -24: ask for 10 nats.
    assert after > before + 10.0, f"held-out IWELBO(50) {before:.2f} -> {after:.2f}"
    assert np.mean(fit.bounds[-30:]) > np.mean(fit.bounds[:30]) + 10.0


def test_iwelbo_evaluation_nondecreasing_in_k(data, init):
    _, test_x = data
    key = jax.random.key(3)
    per_k = {k: np.asarray(vae.log_likelihood_per_image(init, test_x, key, k)) for k in (1, 50)}
    diff = per_k[50] - per_k[1]  # paired over the test images
    z = diff.mean() / (diff.std(ddof=1) / np.sqrt(diff.size))
    assert z > 4.0, f"IWELBO(50) - IWELBO(1) = {diff.mean():.3f} nats/image, z = {z:.2f}"
    # And a lower bound on log p(x) that is not absurdly loose or positive.
    assert np.all(per_k[50] < 0) and per_k[50].mean() > per_k[1].mean()


def test_reconstructions_and_samples_are_probabilities(data, init):
    _, test_x = data
    recon = vae.reconstruct(init, test_x[:5])
    samples = vae.sample_images(init, jax.random.key(0), 4)
    assert recon.shape == (5, 64) and samples.shape == (4, 64)
    for p in (recon, samples):
        assert bool(jnp.all((p >= 0) & (p <= 1)))


def test_bad_inputs_give_clear_errors(data, init):
    train_x, test_x = data
    images = test_x.reshape(-1, 8, 8)
    with pytest.raises(ValueError, match=r"images must have shape \(n, 64\) .* got \(297, 8, 8\)"):
        vae.log_likelihood(init, images, jax.random.key(0), particles=2)
    with pytest.raises(ValueError, match=r"training images must have shape \(n, 64\) .* got \(1500, 63\)"):
        vae.train("elbo", init, train_x[:, :63], steps=1, key=jax.random.key(0))
    table1 = vae.init_params(jax.random.key(0), "table1")
    with pytest.raises(ValueError, match=r"must have shape \(n, 784\).*got \(297, 64\)"):
        vae.reconstruct(table1, test_x)
    with pytest.raises(ValueError, match="must be binary"):
        vae.log_likelihood(init, test_x * 0.5, jax.random.key(0), particles=2)
    with pytest.raises(ValueError, match="unknown objective 'iwelbo7'; choose from elbo, iwelbo5"):
        vae.train("iwelbo7", init, train_x, steps=1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="batch_size 2000 exceeds the 1500 training images"):
        vae.train("elbo", init, train_x, steps=1, key=jax.random.key(0), batch_size=2000)
    with pytest.raises(ValueError, match="particles must be a positive int, got 0"):
        vae.log_likelihood(init, test_x, jax.random.key(0), particles=0)
    with pytest.raises(ValueError, match="size must be one of"):
        vae.load_digits("mnist")


def _no_training(*args, **kwargs):
    raise AssertionError("the CLI started training before rejecting its flags")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--objectives", "elbo,iwae"], "unknown objective(s) iwae; choose from elbo"),
        (["--objectives", ","], "(no empty entries)"),
        (["--objectives", ""], "(no empty entries)"),
        (["--objectives", "elbo,elbo"], "objective(s) named more than once: elbo"),
        (["--steps", "0"], "argument --steps: expected a positive integer, got '0'"),
        (["--steps", "1.5"], "argument --steps: expected a positive integer, got '1.5'"),
        (["--eval-particles", "-3"], "argument --eval-particles: expected a positive integer"),
        (["--seed", "-1"], "argument --seed: expected a non-negative integer"),
        (["--size", "mnist"], "argument --size: invalid choice"),
        (["--json", "/nonexistent-folder/vae.json"], "does not exist"),
    ],
)
def test_cli_misuse_exits_2_with_a_message_before_training(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(vae, "run", _no_training)
    with pytest.raises(SystemExit) as exit_:
        vae.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_json_path_that_is_a_folder_fails_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(vae, "run", _no_training)
    with pytest.raises(SystemExit) as exit_:
        vae.main(["--json", str(tmp_path)])
    assert exit_.value.code == 2 and "is a folder" in capsys.readouterr().err


def test_cli_writes_strict_json_and_fails_on_non_finite_results(tmp_path, capsys, monkeypatch):
    """The record goes through T.write_json (NaN -> null, listed), then the run exits 1."""
    record = {
        "size": "digits",
        "sizes": {},
        "steps": 1,
        "batch": 100,
        "n_train": 1500,
        "n_test": 297,
        "eval_particles": 2,
        "init_test_log_likelihood": -45.0,
        "machine": {"device": "cpu"},
        "results": {
            "elbo": {
                "test_log_likelihood": float("nan"),
                "test_log_likelihood_se": 0.1,
                "train_log_likelihood": -30.0,
                "test_elbo": -31.0,
                "train_bound": -32.0,
                "wall_s": 1.0,
                "compile_s": 1.0,
            }
        },
    }
    monkeypatch.setattr(vae, "run", lambda *a, **k: record)
    path = tmp_path / "vae.json"
    with pytest.raises(SystemExit) as exit_:
        vae.main(["--objectives", "elbo", "--json", str(path)])
    assert exit_.value.code != 0 and "non-finite results at elbo.test_log_likelihood" in str(exit_.value)
    text = path.read_text()
    assert "NaN" not in text
    saved = json.loads(text)
    assert saved["results"]["elbo"]["test_log_likelihood"] is None
    assert saved["nonfinite"] == ["results.elbo.test_log_likelihood"]


def test_cli_misuse_exit_status_from_the_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "ppl.models.vae", "--objectives", ","],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "--objectives" in done.stderr and "(no empty entries)" in done.stderr


@pytest.mark.slow
def test_cli_writes_table_and_json(tmp_path, capsys):
    path = tmp_path / "vae.json"
    record = vae.main(
        [
            "--steps",
            "20",
            "--objectives",
            "elbo,rws5",
            "--eval-particles",
            "20",
            "--no-progress",
            "--json",
            str(path),
        ]
    )
    out = capsys.readouterr().out
    assert "elbo" in out and "rws5" in out and "test log p(x)" in out
    saved = json.loads(path.read_text())
    assert saved["steps"] == 20 and set(saved["results"]) == {"elbo", "rws5"}
    for r in record["results"].values():
        assert r["test_log_likelihood"] >= r["test_elbo"] - 1.0
        assert len(r["curve"]["bound"]) == 20
