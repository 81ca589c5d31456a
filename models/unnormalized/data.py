r"""Data sets and noise distributions for the unnormalized-model benchmarks.

Every generator is seeded and deterministic (``numpy.random.default_rng(seed)``), returns
``float32`` arrays, and one datum is one row (1D data are a flat vector).

* :func:`gaussian_1d`: ``N(R, 1)``.
* :func:`toy_2d`: the 2D sets of the flow/EBM literature, written here, within about ``[−4, 4]²``:
  ``8gaussians`` (eight isotropic Gaussians, std 0.35, centred on the circle of radius 2√2),
  ``moons`` (two interleaved half circles, radius 2, noise std 0.2, centred at the origin),
  ``checkerboard`` (uniform on the 8 dark cells of a 4×4 board of 2×2 squares on ``[−4, 4]²``),
  ``rings`` (four concentric circles of radii 0.75, 1.5, 2.25, 3, equal mass, noise std 0.08).
* :func:`load_digits`: scikit-learn's 8×8 digits (1797 images, bundled), dequantized once with
  seeded uniform noise in ``[0, 1)`` added to the integer pixels 0..16, then divided by 16 (values
  in ``[0, 17/16)``), split 1500/297 by ``train_test_split(random_state=seed)``. Densities of these
  scaled images differ from those of the 0..17 integers-plus-noise by ``64 log 16 ≈ 177.4`` nats.

Noise distributions (:func:`noise`) are NumPyro distributions with ``batch_shape == ()`` and the datum
shape as ``event_shape`` (``Normal`` in 1D, ``MultivariateNormal`` otherwise), built from the training
data's mean ``m`` and covariance ``S``:

* ``fitted``: ``N(m, S)``;
* ``narrow``: ``N(m, S / 4)`` (standard deviations halved: the data's tails sit where the noise has
  almost no mass, so the importance weights ``p̃/q`` are heavy tailed and NCE's classifier has little
  noise to contrast there);
* ``shifted``: ``N(m + 2 s u, S)`` with ``u = (1, …, 1)/√D`` and ``s² = uᵀ S u`` (the mean moved by
  two standard deviations along a fixed diagonal).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

TOY_SETS = ("8gaussians", "moons", "checkerboard", "rings")
NOISES = ("fitted", "narrow", "shifted")


def gaussian_1d(offset: float, n: int, seed: int = 0) -> np.ndarray:
    """``n`` draws of ``N(offset, 1)``, shape ``(n,)``."""
    return (offset + np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def _8gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    angles = 2 * np.pi * rng.integers(0, 8, n) / 8
    centres = 2 * math.sqrt(2) * np.stack([np.cos(angles), np.sin(angles)], 1)
    return centres + 0.35 * rng.standard_normal((n, 2))


def _moons(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.pi * rng.random(n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(t), 1 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    points = 2 * np.stack([x - 0.5, y - 0.25], 1)
    return points + 0.2 * rng.standard_normal((n, 2))


def _checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.uniform(-4, 4, n)
    column = np.floor(x / 2).astype(int)  # -2..1
    row = 2 * rng.integers(0, 2, n) + (column % 2)  # the row of a dark cell in this column: 0..3
    y = -4 + 2 * row + 2 * rng.random(n)
    return np.stack([x, y], 1)


def _rings(rng: np.random.Generator, n: int) -> np.ndarray:
    radius = 0.75 * (1 + rng.integers(0, 4, n))
    angle = 2 * np.pi * rng.random(n)
    points = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
    return points + 0.08 * rng.standard_normal((n, 2))


_GENERATORS = {"8gaussians": _8gaussians, "moons": _moons, "checkerboard": _checkerboard, "rings": _rings}


def toy_2d(name: str, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points of the 2D set ``name`` (one of :data:`TOY_SETS`), shape ``(n, 2)``."""
    if name not in _GENERATORS:
        raise ValueError(f"unknown 2D data set {name!r}; choose from {', '.join(TOY_SETS)}")
    return _GENERATORS[name](np.random.default_rng(seed), n).astype(np.float32)


def toy_2d_split(name: str, n_train: int, n_test: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Train and test sets of ``name`` drawn from one seeded stream (disjoint draws)."""
    points = toy_2d(name, n_train + n_test, seed)
    return points[:n_train], points[n_train:]


def load_digits(seed: int = 0, test_size: int = 297) -> tuple[np.ndarray, np.ndarray]:
    """Dequantized, scaled digits: ``(train (1797 − test_size, 64), test (test_size, 64))``."""
    from sklearn.datasets import load_digits as sk_load
    from sklearn.model_selection import train_test_split

    images = sk_load().data.astype(np.float64)
    noisy = (images + np.random.default_rng(seed).random(images.shape)) / 16.0
    train, test = train_test_split(noisy, test_size=test_size, random_state=seed)
    return train.astype(np.float32), test.astype(np.float32)


def fit_gaussian(train: np.ndarray, jitter: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the training data (a scalar variance for 1D data), float64."""
    x = np.asarray(train, np.float64)
    if x.ndim == 1:
        return np.asarray(x.mean()), np.asarray(x.var())
    cov = np.cov(x, rowvar=False) + jitter * np.eye(x.shape[1])
    return x.mean(0), cov


def gaussian(mean: np.ndarray, cov: np.ndarray) -> dist.Distribution:
    """``Normal`` for a scalar ``mean``/variance ``cov``, ``MultivariateNormal`` otherwise."""
    mean, cov = np.asarray(mean, np.float64), np.asarray(cov, np.float64)
    if mean.ndim == 0:
        return dist.Normal(jnp.asarray(mean, jnp.float32), jnp.asarray(math.sqrt(cov), jnp.float32))
    return dist.MultivariateNormal(jnp.asarray(mean, jnp.float32), jnp.asarray(cov, jnp.float32))


def noise(kind: str, train: np.ndarray) -> dist.Distribution:
    """The noise distribution ``kind`` (one of :data:`NOISES`) for ``train``; see the module docstring."""
    mean, cov = fit_gaussian(train)
    if kind == "fitted":
        return gaussian(mean, cov)
    if kind == "narrow":
        return gaussian(mean, cov / 4.0)
    if kind == "shifted":
        if mean.ndim == 0:
            return gaussian(mean + 2.0 * math.sqrt(cov), cov)
        u = np.ones(mean.shape[0]) / math.sqrt(mean.shape[0])
        return gaussian(mean + 2.0 * math.sqrt(u @ cov @ u) * u, cov)
    raise ValueError(f"unknown noise {kind!r}; choose from {', '.join(NOISES)}")
