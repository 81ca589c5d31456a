"""``fit``: a training loop for an estimator and an Optax optimizer, with checks and checkpoints.

One compiled step (the estimator's value and gradient, the optimizer's update) per iteration;
keys are ``fold_in(key, step)``, so a run is a function of its key and resumes bit-identically
from a checkpoint. Failures (a bad number in the step, a non-finite parameter after the update)
are carried out of the compiled step and raised one step late, as :class:`FitError` with the
step, the message and the last finite parameters: no host synchronization beyond the one that
keeps the loop one step ahead.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ppl.transforms._checkpoint import load_checkpoint, save_checkpoint
from ppl.transforms._estimator import Estimator, positive_count
from ppl.transforms._files import check_output_path
from ppl.transforms._guards import confirmed
from tqdm.auto import tqdm


class FitError(RuntimeError):
    """A training step failed: ``step`` (0-based), ``params`` (the parameters that step started
    from, all finite), ``values`` (the objective's values before it)."""

    def __init__(self, step: int, message: str, params: Any, values: np.ndarray):
        super().__init__(f"fit: step {step}: {message}")
        self.step, self.params, self.values = step, params, values


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        params: the trained parameters.
        opt_state: the optimizer's state.
        state: the estimator's state (``{}`` when nothing keeps state).
        values: the objective's value at every step (NumPy, one per step).
        evaluations: ``(step, result)`` of each ``evaluate`` call.
    """

    params: Any
    opt_state: Any
    state: dict[str, Any]
    values: np.ndarray
    evaluations: list[tuple[int, Any]]


def fit(
    estimator: Estimator,
    params: Any,
    optimizer: optax.GradientTransformation,
    *,
    steps: int,
    key: jax.Array,
    data: tuple | Callable[[int], tuple] = (),
    maximize: bool = True,
    evaluate: Callable[[int, Any], Any] | None = None,
    evaluate_every: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    config: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> FitResult:
    """Train ``params`` for ``steps`` steps of ``optimizer`` on ``estimator``'s gradient.

    Args:
        estimator: the objective's estimator; called as ``value_and_grad(key_t, params, *data_t)``.
        params: the initial parameters (a pytree of floating arrays).
        optimizer: an Optax optimizer; it receives ``-grad`` when ``maximize`` (the objective
            library's bounds are "higher is better"), ``grad`` otherwise (losses).
        steps: the number of steps (the total, when resuming).
        key: the run's key; step ``t`` uses ``fold_in(key, t)``.
        data: the data arguments, or a function of the step returning them (minibatches).
        evaluate: ``evaluate(step, params)`` every ``evaluate_every`` steps and after the last;
            its results are returned in ``evaluations`` and saved with checkpoints when JSON-able.
        checkpoint: a file to save the run to every ``checkpoint_every`` steps and at the end;
            if it exists, the run resumes from it after checking it belongs to this run
            (``config``, the key, the step count and the state's structure) and its checksum.
        config: what identifies the run (JSON-able: hyperparameters, data names); stored and
            checked on resume.
        progress: a progress bar (tqdm) with the running value; default: when stderr is a terminal.

    Raises:
        FitError: a step failed (a bad number caught by the estimator's checks, or a
            non-finite parameter after the update), with the step and the last finite parameters.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, optax, ppl
        >>> from ppl import transforms as T
        >>> @T.expectation
        ... def objective(theta):
        ...     x = ppl.sample("x", dist.Normal(theta, 1.0))
        ...     return -((x - 3.0) ** 2)
        >>> result = T.fit(objective.estimator(), 0.0, optax.adam(0.1), steps=200, key=jax.random.key(0))
        >>> bool(abs(result.params - 3.0) < 0.5)
        True
    """
    steps = positive_count(steps, "fit: steps")
    evaluate_every = (
        steps if evaluate_every is None else positive_count(evaluate_every, "fit: evaluate_every")
    )
    checkpoint_every = (
        steps if checkpoint_every is None else positive_count(checkpoint_every, "fit: checkpoint_every")
    )
    if not isinstance(estimator, Estimator):
        raise TypeError(f"fit: estimator must be an Estimator (objective.estimator(...)), got {estimator!r}")
    if checkpoint is not None:
        checkpoint = check_output_path(checkpoint, "fit: checkpoint")
    batch = data if callable(data) else (lambda step: data)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    state = estimator.init(params, *batch(0))
    opt_state = optimizer.init(params)
    values = np.zeros(steps, np.float32)
    evaluations: list[tuple[int, Any]] = []
    start = 0
    identity = {"config": config or {}, "key": np.asarray(jax.random.key_data(key)).tolist(), "steps": steps}
    if checkpoint is not None and os.path.exists(checkpoint):
        like = (params, opt_state, state, values, jnp.zeros((), jnp.int32))
        params, opt_state, state, stored_values, done = load_checkpoint(checkpoint, like, identity)
        values, start = np.asarray(stored_values).copy(), int(done)
    sign = -1.0 if maximize else 1.0
    checked = estimator._mode() != "off"
    step_fn = _compiled_step(estimator, optimizer, sign, checked)
    show = progress if progress is not None else sys.stderr.isatty()
    bar = tqdm(total=steps, initial=start, disable=not show, desc="fit", dynamic_ncols=True)
    pending: tuple[int, Any, Any, Any, Any, Any] | None = None

    def settle() -> None:
        """Block on the step in flight; raise its failure, record its value."""
        nonlocal pending
        if pending is None:
            return
        step, flags, finite, value, started_from, inputs = pending
        pending = None
        if flags is not None and not bool(np.all(np.asarray(flags))):
            # The step returns no gradient: the estimator's eager re-run names the site or leaf.
            message = "the step's value or gradient was not finite (its eager re-run was finite)"
            try:
                estimator._diagnose("value_and_grad", *inputs, None, None)
            except ValueError as e:
                message = str(e)
            raise FitError(step, message, started_from, values[:step].copy())
        if not bool(np.all(np.asarray(finite))):
            message = "the update made a parameter non-finite (a diverging learning rate?)"
            raise FitError(step, message, started_from, values[:step].copy())
        values[step] = float(value)

    try:
        for step in range(start, steps):
            started_from, started_state = params, state
            k = jax.random.fold_in(key, step)
            args = batch(step)
            flags, value, params, opt_state, state, finite = step_fn(k, params, opt_state, state, *args)
            settle()  # the previous step, while this one runs
            pending = (step, flags, finite, value, started_from, (k, (started_from, *args), started_state))
            bar.update(1)
            if step > start:
                bar.set_postfix(value=f"{values[step - 1]:.4g}", refresh=False)
            done = step + 1
            if done % evaluate_every == 0 or done == steps or (checkpoint and done % checkpoint_every == 0):
                settle()  # never evaluate or save an unchecked step
            if evaluate is not None and (done % evaluate_every == 0 or done == steps):
                evaluations.append((done, evaluate(done, params)))
            if checkpoint is not None and (done % checkpoint_every == 0 or done == steps):
                save_checkpoint(
                    checkpoint, (params, opt_state, state, values, jnp.asarray(done, jnp.int32)), identity
                )
        settle()
    finally:
        bar.close()
    return FitResult(params, opt_state, state, values, evaluations)


def _compiled_step(
    estimator: Estimator, optimizer: optax.GradientTransformation, sign: float, checked: bool
) -> Any:
    """One jitted step: the estimator's (checked) value and gradient, then the update (cached on the
    estimator, so repeated fits with the same optimizer compile once)."""
    cache = estimator.__dict__.setdefault("_fit_steps", {})
    cached = cache.get((id(optimizer), sign, checked))
    if cached is not None and cached[0] is optimizer:
        return cached[1]
    value_and_grad = estimator._compiled_fn("value_and_grad", checked)

    @jax.jit
    def step(key: jax.Array, params: Any, opt_state: Any, state: Any, *data: Any) -> tuple:
        out = value_and_grad(key, (params, *data), state)
        flags, estimate = out if checked else (None, out)
        if checked:  # a down gradient screen is decided entry by entry (overflowed sums pass)
            flags = confirmed("value_and_grad", flags, estimate)
        value, grad, new_state = estimate
        value = value[0] if estimator.has_aux else value
        updates, opt_state = optimizer.update(
            jax.tree_util.tree_map(lambda g: sign * g, grad), opt_state, params
        )
        params = optax.apply_updates(params, updates)
        finite = jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(params)])
        return flags, value, params, opt_state, new_state, finite

    cache[(id(optimizer), sign, checked)] = (optimizer, step)
    return step
