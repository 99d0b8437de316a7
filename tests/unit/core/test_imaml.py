"""Implicit MAML: the implicit meta-gradient against its closed form, CG, and the algorithm's wiring."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmeta.run import config as config_lib
from tfmeta.run import experiment
from tfmeta.core import imaml, models

from tests.helpers import mlp_with_batch_norm, vector_batch

FEATURES, SUPPORT, QUERY, LAM = 3, 8, 6, 1.5


def _linear_model():
    return keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(1, kernel_initializer=keras.initializers.RandomNormal(seed=1),
                           bias_initializer="ones")])


def _ridge_tasks(seed=0, tasks=2):
    rng = np.random.default_rng(seed)
    return {"support_x": rng.normal(size=(tasks, SUPPORT, FEATURES)),
            "support_y": rng.normal(size=(tasks, SUPPORT, 1)),
            "query_x": rng.normal(size=(tasks, QUERY, FEATURES)),
            "query_y": rng.normal(size=(tasks, QUERY, 1))}


def _closed_form(batch, theta):
    """The implicit meta-gradient of linear regression with squared error, solved exactly.

    The proximal inner problem ``mean((A phi - y)^2) + lam / 2 ||phi - theta||^2`` has the
    solution ``(H + lam I) phi = 2 A^T y / n + lam theta`` with ``H = 2 A^T A / n``, and
    ``d phi / d theta = (I + H / lam)^-1``; the meta-gradient is its product with the query
    loss gradient at ``phi``, averaged over the tasks.
    """
    total = 0.0
    tasks = batch["support_x"].shape[0]
    for t in range(tasks):
        a = np.hstack([batch["support_x"][t], np.ones((SUPPORT, 1))])
        h = 2 * a.T @ a / SUPPORT
        phi = np.linalg.solve(h + LAM * np.eye(FEATURES + 1),
                              2 * a.T @ batch["support_y"][t, :, 0] / SUPPORT + LAM * theta)
        aq = np.hstack([batch["query_x"][t], np.ones((QUERY, 1))])
        g = 2 * aq.T @ (aq @ phi - batch["query_y"][t, :, 0]) / QUERY
        total = total + np.linalg.solve(np.eye(FEATURES + 1) + h / LAM, g)
    return total / tasks


def _implicit_gradient(cg_steps, tasks_in_parallel="all"):
    model = _linear_model()
    algo = imaml.IMAML(model, inner_lr=0.1, inner_steps=300, lam=LAM, cg_steps=cg_steps,
                       loss="mse", tasks_in_parallel=tasks_in_parallel)
    batch = _ridge_tasks()
    step = algo.meta_step({k: tf.constant(v) for k, v in batch.items()})
    got = np.concatenate([np.ravel(g) for g in step.grads])
    theta = np.concatenate([np.ravel(v.numpy()) for v in model.trainable_variables])
    return got, _closed_form(batch, theta)


def test_implicit_gradient_equals_the_closed_form(float64):
    """The inner problem solved to convergence and CG run to the dimension (4): exact."""
    got, want = _implicit_gradient(cg_steps=4)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_more_cg_iterations_converge_to_it(float64):
    errors = []
    for cg_steps in (1, 2, 3, 4):
        got, want = _implicit_gradient(cg_steps, tasks_in_parallel=1)
        errors.append(float(np.max(np.abs(got - want)) / np.max(np.abs(want))))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > 1e-3 and errors[-1] < 1e-9, errors


def test_conjugate_gradient_solves_per_task_systems(float64):
    rng = np.random.default_rng(3)
    mats = [m @ m.T + np.eye(5) for m in rng.normal(size=(3, 5, 5))]
    b = rng.normal(size=(3, 5))
    b[2] = 0.0  # a task whose right-hand side is 0 stays at 0 (no NaN)
    matvec = lambda v: [tf.constant(np.stack([m @ x for m, x in zip(mats, v[0].numpy())]))]
    x = imaml.conjugate_gradient(matvec, [tf.constant(b)], iterations=5)[0].numpy()
    want = np.stack([np.linalg.solve(m, r) for m, r in zip(mats, b)])
    np.testing.assert_allclose(x, want, rtol=1e-8, atol=1e-10)


def test_proximal_term_keeps_the_adapted_weights_near_the_start(float64):
    batch = _ridge_tasks()
    far = {}
    for lam in (0.01, 100.0):
        model = _linear_model()
        algo = imaml.IMAML(model, inner_lr=0.005, inner_steps=50, lam=lam, loss="mse")
        fast = algo.adapt(batch["support_x"][0], batch["support_y"][0])
        far[lam] = sum(float(np.sum((f - v.numpy()) ** 2))
                       for f, v in zip(fast, model.trainable_variables))
    assert far[100.0] < 0.05 * far[0.01], far


def test_groupings_agree_with_batch_norm(float64):
    """Task-batched Hessian-vector products equal one task at a time (batch norm, 3 tasks)."""
    batch = vector_batch(seed=4, dtype="float64")
    steps = [imaml.IMAML(mlp_with_batch_norm(seed=0), inner_lr=0.1, inner_steps=3, lam=1.0,
                         cg_steps=3, tasks_in_parallel=k).meta_step(batch) for k in (1, 2, "all")]
    for other in steps[1:]:
        for a, b in zip(steps[0].grads, other.grads):
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)


def test_config_builds_it_and_refuses_its_fields_elsewhere():
    config = config_lib.base_config()
    config.algorithm = "imaml"
    config.imaml.lam = 0.5
    config_lib.validate(config)
    algo = experiment.build_algorithm(config, models.omniglot_conv4(5, filters=4, seed=0),
                                      classification=True)
    assert isinstance(algo, imaml.IMAML) and algo.lam == 0.5 and algo.cg_steps == 5
    config.algorithm = "maml"
    with pytest.raises(config_lib.ConfigError, match="imaml.lam"):
        config_lib.validate(config)
    config = config_lib.base_config()
    config.algorithm = "imaml"
    config.imaml.lam = 0.0
    with pytest.raises(config_lib.ConfigError, match="'imaml.lam' is 0.0"):
        config_lib.validate(config)


@pytest.mark.parametrize("variant", ["5way1shot", "20way1shot", "smoke"])
def test_omniglot_config_variants_validate(variant):
    from tests.helpers import REPO
    import os

    config = config_lib.load_file(os.path.join(REPO, "configs", "omniglot_imaml.py") + f":{variant}")
    config_lib.validate(config)
    assert config.algorithm == "imaml" and config.imaml.lam == 2.0 and config.imaml.cg_steps == 5
