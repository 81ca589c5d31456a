"""Shared test helpers: the z-test for unbiasedness and the ``--runslow`` switch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

Z_LIMIT = 4.0
_Z_RECORD: list[tuple[str, float]] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    deselected = [item for item in items if "slow" in item.keywords]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if "slow" not in item.keywords]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _Z_RECORD:
        return
    zs = np.array([abs(z) for _, z in _Z_RECORD])
    worst = max(_Z_RECORD, key=lambda t: abs(t[1]))
    terminalreporter.write_line(
        f"unbiasedness z-tests: {len(zs)} components, |z| min {zs.min():.3f}, "
        f"max {zs.max():.3f} ({worst[0]}), mean {zs.mean():.3f}"
    )


def assert_unbiased(estimates, truth, label: str, exact_tol: float = 1e-4) -> float:
    """z-test: the mean of the estimates is within ``Z_LIMIT`` standard errors of ``truth``.

    ``estimates`` is a pytree whose leaves have a leading sample axis; ``truth``
    the matching pytree. Components whose estimates have no variance (exact
    estimators) must equal the truth to ``exact_tol``. Returns the largest |z|.
    """
    est_leaves, treedef = jax.tree_util.tree_flatten(estimates)
    truth_leaves = treedef.flatten_up_to(truth)
    worst = 0.0
    for i, (est, tru) in enumerate(zip(est_leaves, truth_leaves)):
        est = np.asarray(est, dtype=np.float64).reshape(est.shape[0], -1)
        tru = np.asarray(tru, dtype=np.float64).reshape(-1)
        n = est.shape[0]
        mean = est.mean(0)
        se = est.std(0, ddof=1) / np.sqrt(n)
        assert np.all(np.isfinite(mean)), f"{label}: non-finite estimates {mean}"
        for j in range(mean.shape[0]):
            name = f"{label}[{i}.{j}]"
            if se[j] < 1e-7 * max(1.0, abs(tru[j])):
                assert abs(mean[j] - tru[j]) < exact_tol * max(1.0, abs(tru[j])), (
                    f"{name}: exact estimator gives {mean[j]:.6g}, truth {tru[j]:.6g}"
                )
                continue
            z = (mean[j] - tru[j]) / se[j]
            _Z_RECORD.append((name, float(z)))
            assert abs(z) < Z_LIMIT, (
                f"{name}: z = {z:.2f} (mean {mean[j]:.5g}, truth {tru[j]:.5g}, se {se[j]:.3g}, n {n})"
            )
            worst = max(worst, abs(z))
    return worst


def vmapped(fn, n: int, seed: int = 0):
    """``fn(key)`` for ``n`` independent keys, vmapped."""
    keys = jax.random.split(jax.random.key(seed), n)
    return jax.vmap(fn)(keys)


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)


__all__ = ["assert_unbiased", "jnp", "vmapped"]
