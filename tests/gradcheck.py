"""Meta-gradients against central finite differences (float64), shared by the gradient tests.

The numeric side is built only from the public ``adapt`` / ``predict`` API, one task at a time,
independently of ``meta_step`` (which groups tasks and may run them batched): agreement checks the
task-batched core too.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

H = 1e-6  # float64 central differences: truncation ~H^2, round-off ~1e-16/H


def classification_batch(rng, tasks, shots, queries, ways, image, channels=1):
    return {
        "support_x": rng.normal(size=(tasks, shots * ways, image, image, channels)),
        "support_y": np.tile(np.arange(ways), (tasks, shots)),
        "query_x": rng.normal(size=(tasks, queries, image, image, channels)),
        "query_y": rng.integers(0, ways, (tasks, queries)),
    }


def regression_batch(rng, tasks, k):
    return {
        "support_x": rng.uniform(-2, 2, size=(tasks, k, 1)),
        "support_y": rng.normal(size=(tasks, k, 1)),
        "query_x": rng.uniform(-2, 2, size=(tasks, k, 1)),
        "query_y": rng.normal(size=(tasks, k, 1)),
    }


def query_loss_after(algo, batch, steps: int) -> tf.Tensor:
    """Mean over tasks of the query loss after ``steps`` inner steps (public API only)."""
    total = tf.constant(0.0, tf.float64)
    tasks = batch["support_x"].shape[0]
    for i in range(tasks):
        sx = batch["support_x"][i]
        fast = algo.adapt(sx, batch["support_y"][i], steps=steps)
        out = algo.predict(fast, batch["query_x"][i], support_x=sx, steps=steps)
        total += tf.reduce_mean(algo.loss_fn(batch["query_y"][i], out))
    return total / tasks


def default_objective(algo, batch) -> Callable[[], tf.Tensor]:
    """MAML's meta-objective: the query loss after ``inner_steps`` steps."""
    return tf.function(lambda: query_loss_after(algo, batch, algo.inner_steps))


def fd_errors(algo, batch, *, objective=None, coords=24, seed=0, grads=None,
              variables=None, h=H):
    """Relative errors of (a random direction, individual coordinates) against finite differences.

    Args:
      algo: a meta-learner built in float64.
      batch: numpy task batch.
      objective: a no-argument function of the current variable values (default: MAML's).
      coords: how many individual coordinates to check besides the random direction.
      grads: analytic gradients aligned with ``variables`` (default: ``algo.meta_gradients``).
      variables: what to perturb (default: every meta-variable, learned inner ones included).
      h: the finite-difference step. With piecewise-linear activations the inner gradient jumps
        where a unit crosses its kink, so the MAML loss has small jumps; a smaller step crosses
        fewer of them (at the price of more round-off).

    Returns:
      ``(errors, number of coordinates checked, grads)``.
    """
    rng = np.random.default_rng(seed)
    tensors = {k: tf.constant(v) for k, v in batch.items()}
    variables = list(variables if variables is not None else algo.meta_variables)
    theta = [v.numpy() for v in variables]
    assert all(t.dtype == np.float64 for t in theta), "the check needs a float64 model"
    if grads is None:
        grads, _ = algo.meta_gradients(tensors)
    grads = [np.asarray(g) for g in grads]
    objective = objective or default_objective(algo, tensors)

    def loss_at(delta):
        for var, t, d in zip(variables, theta, delta):
            var.assign(t + d)
        return float(objective())

    def fd(delta):
        try:
            return (loss_at([h * d for d in delta]) - loss_at([-h * d for d in delta])) / (2 * h)
        finally:
            for var, t in zip(variables, theta):
                var.assign(t)

    direction = [rng.normal(size=t.shape) for t in theta]
    analytic = sum(float(np.sum(g * d)) for g, d in zip(grads, direction))
    numeric = fd(direction)
    # Relative to the size of the terms of the directional derivative, so that terms cancelling
    # each other do not turn finite-difference round-off into a large relative error.
    scale = max(abs(numeric), sum(float(np.sum(np.abs(g * d))) for g, d in zip(grads, direction)))
    errors = [abs(analytic - numeric) / scale]
    # Individual coordinates from every variable, weighted to those with a non-negligible
    # gradient so that the relative error is meaningful.
    flat = np.concatenate([g.ravel() for g in grads])
    offsets = np.cumsum([0] + [g.size for g in grads])
    candidates = np.flatnonzero(np.abs(flat) > 1e-3 * np.abs(flat).max())
    chosen = rng.choice(candidates, size=min(coords, candidates.size), replace=False)
    for c in chosen:
        var = int(np.searchsorted(offsets, c, side="right") - 1)
        delta = [np.zeros_like(t) for t in theta]
        delta[var].flat[c - offsets[var]] = 1.0
        errors.append(abs(flat[c] - fd(delta)) / abs(flat[c]))
    return np.array(errors), len(chosen), grads
