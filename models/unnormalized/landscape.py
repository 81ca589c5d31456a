r"""The exact population landscape of the 1D Gaussian-mean model: MLE vs NCE, no sampling.

Setting: data ``x ~ N(R, 1)``, noise ``q = N(0, 1)``, model ``p̃(x; θ) = exp(−(x − θ)²/2)``
with NCE's learned log-normalizer ``c`` (optimum ``c* = log Z = log √(2π)``).

* MLE: ``F(θ) = E_data[−log p̃(x; θ)] + log Z(θ) = (θ − R)²/2 + const``; its curvature is 1
  everywhere and ``c`` does not enter (it cancels).
* NCE: ``J(θ, c) = E_{x~N(R,1)}[softplus(−G(x))] + ν E_{y~N(0,1)}[softplus(G(y))]`` with
  ``G = log p̃(x; θ) − c − log q(x) − log ν``. Both expectations are computed by
  Gauss–Hermite quadrature (``numpy.polynomial.hermite_e.hermegauss``, 200 nodes by
  default) in float64; derivatives come from ``jax.hessian``/``jax.grad`` of that sum.

Reported per ``R``: the Hessian eigenvalues of ``J`` in ``(θ, c)`` at the exact optimum
``(R, log √(2π))``, and the number of fixed-step gradient-descent steps from ``(θ, c) = (0, 0)``
until ``|θ − R| < tol`` (0.01). The step size is stated per row: ``η = 1/λ`` with ``λ`` the
larger of the Hessian's largest eigenvalue at the optimum and at the start (the curvature is
largest at the start for large ``R``, and ``1/λ_max(optimum)`` alone diverges from (0, 0) for
``R ≥ 5``). MLE uses ``η = 1/1`` and needs one step. The loop is a ``jax.lax.while_loop``
capped at ``cap`` steps (``None`` steps means the cap was hit).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.polynomial.hermite_e import hermegauss

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
OFFSETS = (1.0, 2.0, 3.0, 4.0, 6.0)


def _quadrature(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights with ``Σ w f(x) ≈ E_{N(0,1)}[f]``."""
    x, w = hermegauss(nodes)
    return x, w / math.sqrt(2.0 * math.pi)


def nce_loss(
    theta_c: jax.Array, offset: float, noise_ratio: float = 1.0, nodes: int = 200, noise_mean: float = 0.0
) -> jax.Array:
    """NCE's population loss ``J(θ, c)`` for data ``N(R, 1)`` and noise ``N(noise_mean, 1)``."""
    x, w = _quadrature(nodes)
    theta, c = theta_c[0], theta_c[1]
    log_nu = math.log(noise_ratio)

    def g(t: jax.Array) -> jax.Array:
        log_q = -0.5 * (t - noise_mean) ** 2 - LOG_SQRT_2PI
        return -0.5 * (t - theta) ** 2 - c - log_q - log_nu

    data_term = jnp.sum(w * jax.nn.softplus(-g(offset + x)))
    noise_term = jnp.sum(w * jax.nn.softplus(g(noise_mean + x)))
    return data_term + noise_ratio * noise_term


def mle_loss(theta_c: jax.Array, offset: float) -> jax.Array:
    """The exact MLE objective ``(θ − R)²/2`` (without its constant); ``c`` cancels."""
    return 0.5 * (theta_c[0] - offset) ** 2


@functools.partial(jax.jit, static_argnames=("loss", "cap"))
def _descend(loss: Any, start: jax.Array, eta: jax.Array, offset: jax.Array, tol: float, cap: int) -> Any:
    grad = jax.grad(loss)

    def cond(carry: tuple[jax.Array, jax.Array]) -> jax.Array:
        p, n = carry
        return (jnp.abs(p[0] - offset) >= tol) & (n < cap) & jnp.all(jnp.isfinite(p))

    def body(carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        p, n = carry
        return p - eta * grad(p, offset), n + 1

    return jax.lax.while_loop(cond, body, (start, jnp.asarray(0)))


def gd_steps(
    loss: Any,
    offset: float,
    eta: float,
    start: tuple[float, float] = (0.0, 0.0),
    tol: float = 0.01,
    cap: int = 10**6,
) -> int | None:
    """Fixed-step gradient-descent steps until ``|θ − R| < tol``; ``None`` if capped or diverged."""
    with jax.enable_x64(True):
        p, n = _descend(
            loss, jnp.asarray(start, jnp.float64), jnp.asarray(eta), jnp.asarray(offset), tol, cap
        )
        converged = bool(jnp.abs(p[0] - offset) < tol)
    return int(n) if converged else None


def hessian_eigenvalues(loss: Any, point: tuple[float, float], offset: float) -> np.ndarray:
    """Ascending eigenvalues of ``loss``'s Hessian in ``(θ, c)`` at ``point`` (float64)."""
    with jax.enable_x64(True):
        h = jax.hessian(loss)(jnp.asarray(point, jnp.float64), offset)
        return np.linalg.eigvalsh(np.asarray(h))


def landscape(
    offsets: tuple[float, ...] = OFFSETS,
    noise_ratio: float = 1.0,
    nodes: int = 200,
    tol: float = 0.01,
    cap: int = 10**6,
    start: tuple[float, float] = (0.0, 0.0),
) -> list[dict[str, Any]]:
    """One row per ``R``: curvature at the optimum and GD steps to ``tol`` for MLE and NCE."""
    rows = []
    for r in offsets:
        nce = functools.partial(nce_loss, noise_ratio=noise_ratio, nodes=nodes)
        optimum = (r, LOG_SQRT_2PI)  # c* = log Z for every ν
        eig_opt = hessian_eigenvalues(nce, optimum, r)
        eig_start = hessian_eigenvalues(nce, start, r)
        eta = 1.0 / max(eig_opt[-1], eig_start[-1])
        rows.append(
            {
                "R": r,
                "mle_curvature": 1.0,
                "mle_eta": 1.0,
                "mle_steps": gd_steps(mle_loss, r, 1.0, start, tol, cap),
                "nce_eigenvalues_at_optimum": [float(e) for e in eig_opt],
                "nce_largest_eigenvalue_at_start": float(eig_start[-1]),
                "nce_eta": float(eta),
                "nce_steps": gd_steps(nce, r, eta, start, tol, cap),
                "cap": cap,
            }
        )
    return rows
