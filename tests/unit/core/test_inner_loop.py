"""The inner loop's update rules: gradients that are zero in exact arithmetic, loop lengths."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmeta.core import inner_loop, layers, models


def _names(model, ids):
    return sorted(v.path for v in model.trainable_variables if id(v) in ids)


def test_biases_cancelled_by_batch_norm_are_found_by_connectivity():
    conv4 = models.omniglot_conv4(5, filters=4, seed=0)
    assert _names(conv4, layers.biases_cancelled_by_batch_norm(conv4)) == [
        f"conv{i}/bias" for i in range(4)]  # not the head's bias, which no norm follows
    seq = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a"),
                            keras.layers.BatchNormalization(), keras.layers.Dense(2, name="b")])
    found = _names(seq, layers.biases_cancelled_by_batch_norm(seq))
    assert [n.split("/", 1)[1] for n in found] == ["a/bias"]  # the model's name comes first
    # A bias that reaches the output another way, or passes a non-linearity first, matters.
    x = keras.Input((4,))
    h = keras.layers.Dense(3, name="shared")(x)
    out = keras.layers.Concatenate()([layers.BatchNorm()(h), h])
    branched = keras.Model(x, out)
    assert layers.biases_cancelled_by_batch_norm(branched) == set()
    relu_first = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"),
                                   keras.layers.BatchNormalization()])
    assert layers.biases_cancelled_by_batch_norm(relu_first) == set()


@pytest.mark.parametrize("bn_mode", ["running", "support"])
def test_adam_never_moves_a_bias_that_batch_norm_cancels(bn_mode):
    """With Adam, round-off in a zero gradient used to become a full-size step."""
    from tfmeta.core.reptile import Reptile

    model = models.omniglot_conv4(5, filters=8, seed=2)
    learner = Reptile(model, inner_lr=1e-3, inner_steps=5, inner_optimizer="adam",
                      inner_batch_size=10, bn_mode=bn_mode)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(25, 28, 28, 1)).astype("float32")
    y = np.repeat(np.arange(5), 5).astype("int32")
    fast = learner.adapt(x, y, steps=5)
    by_name = {v.path: (v.numpy(), f.numpy()) for v, f in zip(model.trainable_variables, fast)}
    for i in range(4):
        start, end = by_name[f"conv{i}/bias"]
        np.testing.assert_array_equal(end, start)
        kernel_start, kernel_end = by_name[f"conv{i}/kernel"]
        assert np.abs(kernel_end - kernel_start).max() > 1e-4  # the rest does adapt
    start, end = by_name["logits/bias"]
    assert np.abs(end - start).max() > 1e-4


def test_cancelled_bias_mask_is_exact_for_second_order_maml(float64):
    """Zeroing a gradient that is zero in exact arithmetic leaves the meta-gradient unchanged."""
    from tfmeta.core.maml import MAML

    model = models.omniglot_conv4(3, image_size=8, filters=3, seed=1)
    learner = MAML(model, inner_lr=0.1, inner_steps=2, bn_mode="running", tasks_in_parallel=1)
    rng = np.random.default_rng(1)
    batch = {"support_x": rng.normal(size=(2, 6, 8, 8, 1)),
             "support_y": np.tile(np.arange(3), (2, 2)).astype("int32"),
             "query_x": rng.normal(size=(2, 6, 8, 8, 1)),
             "query_y": np.tile(np.arange(3), (2, 2)).astype("int32")}
    masked = [g.numpy() for g in learner.meta_gradients(batch)[0]]
    learner.inner._cancelled = [False] * len(learner.inner._cancelled)
    unmasked = [g.numpy() for g in learner.meta_gradients(batch)[0]]
    for a, b in zip(masked, unmasked):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_long_adaptations_run_as_a_while_loop():
    assert inner_loop.loop_steps(inner_loop.UNROLL_MAX_STEPS) == inner_loop.UNROLL_MAX_STEPS
    long = inner_loop.loop_steps(inner_loop.UNROLL_MAX_STEPS + 1)
    assert isinstance(long, tf.Tensor) and int(long) == inner_loop.UNROLL_MAX_STEPS + 1
    tensor = tf.constant(3)
    assert inner_loop.loop_steps(tensor) is tensor


def test_evaluation_with_many_steps_traces_a_graph_that_does_not_grow():
    """A 500-step evaluation costs no more graph than a 20-step one."""
    from tfmeta.core.maml import MAML

    model = models.omniglot_conv4(3, image_size=8, filters=2, seed=0)
    learner = MAML(model, inner_lr=0.1, inner_steps=1)
    rng = np.random.default_rng(0)
    batch = {"support_x": rng.normal(size=(1, 3, 8, 8, 1)).astype("float32"),
             "support_y": np.arange(3, dtype="int32")[None],
             "query_x": rng.normal(size=(1, 3, 8, 8, 1)).astype("float32"),
             "query_y": np.arange(3, dtype="int32")[None]}
    sizes = {}
    for steps in (20, 500):
        fn = tf.function(lambda b, s=steps: learner.evaluate(b, steps=s))
        sizes[steps] = len(fn.get_concrete_function(batch).graph.as_graph_def().node)
    assert sizes[500] == sizes[20]


def test_reptile_training_with_many_inner_steps_equals_the_unrolled_loop(float64):
    """Above the unroll limit Reptile's inner loop runs as a while loop, with the same result."""
    from tfmeta.core import inner_loop as il
    from tfmeta.core.reptile import Reptile

    steps = il.UNROLL_MAX_STEPS + 2
    rng = np.random.default_rng(3)
    batch = {"support_x": rng.normal(size=(2, 6, 8, 8, 1)),
             "support_y": np.tile(np.arange(3), (2, 2)).astype("int32"),
             "query_x": rng.normal(size=(2, 3, 8, 8, 1)),
             "query_y": np.tile(np.arange(3), (2, 1)).astype("int32")}
    results = []
    for unroll_limit in (il.UNROLL_MAX_STEPS, steps):  # while loop, then fully unrolled
        old = il.UNROLL_MAX_STEPS
        il.UNROLL_MAX_STEPS = unroll_limit
        try:
            model = models.omniglot_conv4(3, image_size=8, filters=2, seed=0)
            learner = Reptile(model, inner_lr=1e-2, inner_steps=steps, inner_optimizer="adam",
                              inner_batch_size=4)
            results.append([g.numpy() for g in learner.meta_step(batch).grads])
        finally:
            il.UNROLL_MAX_STEPS = old
    for a, b in zip(*results):  # float64: the two loops differ by round-off only
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
