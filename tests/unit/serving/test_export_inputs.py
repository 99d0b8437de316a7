"""Inputs of the exported signatures: what the graph accepts, checks and returns at the edges."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf


@pytest.fixture(scope="module")
def loaded(random_export):
    return tf.saved_model.load(random_export["path"])


def _tasks(tasks, shots=5, queries=0, size=28, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        support_images=rng.uniform(size=(tasks, shots, size, size, 1)).astype(np.float32),
        support_labels=np.tile(np.arange(shots, dtype=np.int32) % 5, (tasks, 1)),
        query_images=rng.uniform(size=(tasks, queries, size, size, 1)).astype(np.float32))


@pytest.mark.parametrize("tasks,size", [(1, 28), (2, 28), (3, 105)])
def test_batch_signature_accepts_zero_queries(loaded, tasks, size):
    out = loaded.signatures["adapt_and_predict_batch"](**_tasks(tasks, size=size))
    assert out["logits"].shape == (tasks, 0, 5) and out["logits"].dtype == tf.float32
    assert out["probabilities"].shape == (tasks, 0, 5)
    assert out["predictions"].shape == (tasks, 0) and out["predictions"].dtype == tf.int32
    # As for the single signature, the support set is still checked when there is no query.
    bad = _tasks(tasks, size=size)
    bad["support_labels"][-1, 0] = 5
    with pytest.raises(tf.errors.InvalidArgumentError, match="found a label >= 5"):
        loaded.signatures["adapt_and_predict_batch"](**bad)


def test_batch_answers_do_not_change_with_the_zero_query_case(loaded):
    # The stand-in query used for Q = 0 must leave calls with queries exactly as they were.
    episode = _tasks(2, queries=3, seed=1)
    out = loaded.signatures["adapt_and_predict_batch"](**episode)["logits"].numpy()
    for i in range(2):
        single = loaded.signatures["adapt_and_predict"](
            **{k: v[i] for k, v in episode.items()})["logits"].numpy()
        np.testing.assert_allclose(out[i], single, atol=1e-4)


def test_signature_inputs_are_the_documented_contract(loaded):
    images = tf.TensorSpec([None, None, None, 1], tf.float32)
    tasks = tf.TensorSpec([None, None, None, None, 1], tf.float32)
    expected = {
        "adapt_and_predict": dict(support_images=images, query_images=images,
                                  support_labels=tf.TensorSpec([None], tf.int32)),
        "adapt_and_predict_steps": dict(support_images=images, query_images=images,
                                        support_labels=tf.TensorSpec([None], tf.int32),
                                        inner_steps=tf.TensorSpec([], tf.int32)),
        "adapt_and_predict_batch": dict(support_images=tasks, query_images=tasks,
                                        support_labels=tf.TensorSpec([None, None], tf.int32)),
    }
    for name, inputs in expected.items():
        args, kwargs = loaded.signatures[name].structured_input_signature
        assert args == ()
        assert {k: (v.shape.as_list(), v.dtype) for k, v in kwargs.items()} == {
            k: (v.shape.as_list(), v.dtype) for k, v in inputs.items()}, name
    outputs = loaded.signatures["adapt_and_predict_batch"].structured_outputs
    assert {k: (v.shape.as_list(), v.dtype) for k, v in outputs.items()} == {
        "logits": ([None, None, 5], tf.float32), "probabilities": ([None, None, 5], tf.float32),
        "predictions": ([None, None], tf.int32)}


@pytest.mark.parametrize("channels", [1, 3])
def test_zero_queries_give_empty_answers_for_grey_and_colour_models(tmp_path, channels):
    """Every adapting signature answers Q = 0 with [0, N] logits, for a model served one task
    at a time (``tasks_in_parallel=1``) as for any other."""
    from tfmeta.run import exporter
    from tfmeta.core import models
    from tfmeta.base.input_transform import InputTransform
    from tfmeta.core.maml import MAML

    model = models.conv4(3, image_size=12, channels=channels, filters=4, seed=0)
    algorithm = MAML(model, inner_lr=0.4, inner_steps=1, eval_inner_steps=2,
                     tasks_in_parallel=1)
    metadata = {"task": "images", "algorithm": "maml", "ways": 3, "image_size": 12,
                "inner_steps": 2, "inner_lr": 0.4, "bn_mode": "transductive",
                **InputTransform(12, channels, invert=False).to_dict()}
    loaded = tf.saved_model.load(exporter.export(model, algorithm, str(tmp_path / "model"),
                                                 metadata=metadata))
    rng = np.random.default_rng(0)
    task = dict(support_images=rng.uniform(size=(3, 16, 16, channels)).astype(np.float32),
                support_labels=np.arange(3, dtype=np.int32),
                query_images=np.zeros((0, 16, 16, channels), np.float32))
    for name, extra in (("adapt_and_predict", {}), ("adapt_and_predict_transductive", {}),
                        ("adapt_and_predict_steps", {"inner_steps": tf.constant(1)})):
        out = loaded.signatures[name](**task, **extra)
        assert out["logits"].shape == (0, 3) and out["predictions"].shape == (0,), name
    out = loaded.signatures["adapt_and_predict_batch"](
        **{k: np.stack([v, v]) for k, v in task.items()})
    assert out["logits"].shape == (2, 0, 3)
    out = loaded.signatures["predict"](query_images=task["query_images"])
    assert out["logits"].shape == (0, 3)
