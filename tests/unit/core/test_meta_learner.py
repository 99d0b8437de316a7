"""MetaLearner's public API: adapt / predict / evaluate, and input checks that name the value."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import image_batch as _batch
from tests.helpers import mlp_with_batch_norm as _mlp_bn
from tests.helpers import tiny_conv4 as _conv4
from tests.helpers import vector_batch as _vec_batch
from tfmeta.core import functional as F
from tfmeta.core import maml, reptile


def _sequential():
    return keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)]
    )


def _mlp():
    return _sequential()


def _task_batch(support=6, labels=6, query=4):
    rng = np.random.default_rng(0)
    return {
        "support_x": rng.normal(size=(2, support, 5)).astype("float32"),
        "support_y": rng.integers(0, 3, (2, labels)),
        "query_x": rng.normal(size=(2, query, 5)).astype("float32"),
        "query_y": rng.integers(0, 3, (2, query)),
    }


def test_mismatched_support_and_label_counts():
    algo = maml.MAML(_mlp(), inner_lr=0.1, inner_steps=1)
    with pytest.raises(ValueError, match="support_x has 6 examples but support_y has 5"):
        algo.meta_gradients(_task_batch(labels=5))
    with pytest.raises(ValueError, match="support_x has 4 examples but support_y has 3"):
        algo.adapt(np.zeros((4, 5), "float32"), np.zeros(3, "int32"))
    bad = _task_batch()
    bad["query_y"] = bad["query_y"][:, :3]
    with pytest.raises(ValueError, match="query_x has 4 examples but query_y has 3"):
        algo.evaluate(bad)
    with pytest.raises(ValueError, match="missing keys.*query_y"):
        algo.meta_gradients({k: v for k, v in _task_batch().items() if k != "query_y"})


def test_labels_out_of_range_eager_and_graph():
    algo = maml.MAML(_mlp(), inner_lr=0.1, inner_steps=1)
    batch = _task_batch()
    batch["support_y"][0, 0] = 3
    with pytest.raises(
        ValueError, match=r"support labels must be integers in \[0, 3\); got labels in \[0, 3\]"
    ):
        algo.meta_gradients(batch)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"support labels must be integers in \[0, 3\)"
    ):
        tf.function(algo.meta_gradients)(batch)
    batch = _task_batch()
    batch["query_y"][1, 2] = -1
    with pytest.raises(
        ValueError, match=r"query labels must be integers in \[0, 3\); got labels in \[-1"
    ):
        algo.evaluate(batch)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(inner_lr=0.0, inner_steps=1), "inner_lr must be a positive finite number, got 0.0"),
        (dict(inner_lr=-0.1, inner_steps=1), "inner_lr must be a positive finite number, got -0.1"),
        (dict(inner_lr=0.1, inner_steps=0), "inner_steps must be a positive integer, got 0"),
        (
            dict(inner_lr=0.1, inner_steps=1, eval_inner_steps=-2),
            "eval_inner_steps must be a positive integer, got -2",
        ),
        (
            dict(inner_lr=0.1, inner_steps=1, inner_grad_clip=0),
            "inner_grad_clip must be a positive finite number, got 0",
        ),
        (
            dict(inner_lr=0.1, inner_steps=1, bn_mode="batch"),
            r"unknown bn_mode 'batch'; allowed: \['transductive', 'support', 'running'\]",
        ),
        (dict(inner_lr=0.1, inner_steps=1, loss="hinge"), "unknown loss 'hinge'"),
        (dict(inner_lr=float("inf"), inner_steps=1), "inner_lr must be a positive finite number"),
        (dict(inner_lr=0.1, inner_steps=1, tasks_in_parallel=0),
         "tasks_in_parallel must be a positive integer, 'all' or 'auto', got 0"),
        (dict(inner_lr=0.1, inner_steps=1, tasks_in_parallel=-3), "tasks_in_parallel .* got -3"),
        (dict(inner_lr=0.1, inner_steps=1, tasks_in_parallel="some"),
         "tasks_in_parallel .* got 'some'"),
        (dict(inner_lr=0.1, inner_steps=1, tasks_in_parallel=2.5), "tasks_in_parallel .* got 2.5"),
    ],
)
def test_bad_hyper_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        maml.MAML(_mlp(), **kwargs)
    with pytest.raises(ValueError, match=message):
        reptile.Reptile(_mlp(), **kwargs)


def test_bad_steps_argument():
    algo = maml.MAML(_mlp(), inner_lr=0.1, inner_steps=1)
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        algo.adapt(np.zeros((3, 5), "float32"), np.zeros(3, "int32"), steps=0)


def test_unbuilt_model():
    model = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(
        ValueError, match=r"not built.*model\.build\(input_shape\).*call the model on an input"
    ):
        maml.MAML(model, inner_lr=0.1, inner_steps=1)
    with pytest.raises(ValueError, match="not built"):
        reptile.Reptile(model, inner_lr=0.1, inner_steps=1)


def test_adapt_does_not_modify_variables_and_predict_uses_params():
    model = _conv4()
    before = [v.numpy().copy() for v in model.variables]
    algo = maml.MAML(model, inner_lr=0.4, inner_steps=3)
    batch = _batch()
    fast = algo.adapt(batch["support_x"][0], batch["support_y"][0])
    algo.meta_gradients(batch)
    algo.evaluate(batch)
    for b, v in zip(before, model.variables):
        np.testing.assert_array_equal(b, v.numpy())
    assert [f.shape for f in fast] == [v.shape for v in model.trainable_variables]
    assert any(not np.allclose(f, b) for f, b in zip(fast, before))
    # Transductive prediction with the original params equals a training-mode call.
    theta = F.values(model.trainable_variables)
    np.testing.assert_allclose(
        algo.predict(theta, batch["query_x"][0]),
        model(batch["query_x"][0], training=True),
        rtol=1e-5,
        atol=1e-6,
    )


def test_evaluate_returns_per_task_metrics():
    algo = maml.MAML(_mlp_bn(), inner_lr=0.4, inner_steps=1, eval_inner_steps=3)
    metrics = algo.evaluate(_vec_batch(tasks=3))
    assert set(metrics) == {"loss", "loss_pre", "accuracy_pre", "accuracy_post"}
    for v in metrics.values():
        assert v.shape == (3,)
    xla = tf.function(algo.evaluate, jit_compile=True)(_vec_batch(tasks=3))
    for k in metrics:
        np.testing.assert_allclose(xla[k], metrics[k], rtol=1e-4, atol=1e-6)
