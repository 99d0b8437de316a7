"""Second-order MAML meta-gradients against central finite differences (float64).

Also shows the check has teeth: with Keras' own BatchNormalization (whose
moments stop a gradient) the same check fails, with tfmeta's BatchNorm it
passes.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmeta.core import maml, models

from tests.gradcheck import classification_batch, fd_errors, regression_batch


def _fd_errors(algo, batch, coords=24, seed=0):
    errors, n, _ = fd_errors(algo, batch, coords=coords, seed=seed)
    return errors, n


@pytest.mark.parametrize("steps", [1, 3])
def test_mlp_second_order_matches_finite_differences(float64, steps):
    model = models.sinusoid_mlp(hidden=(8, 8), seed=0)
    algo = maml.MAML(model, inner_lr=0.05, inner_steps=steps, loss="mse")
    errors, n = _fd_errors(algo, regression_batch(np.random.default_rng(1), tasks=2, k=5))
    assert n >= 20
    assert errors.max() < 1e-6, errors


def _keras_bn_conv4(ways, image, filters, seed):
    inputs = keras.Input((image, image, 1))
    x = inputs
    for i in range(4):
        x = keras.layers.Conv2D(
            filters,
            3,
            strides=2,
            padding="same",
            kernel_initializer=keras.initializers.GlorotUniform(seed + i),
        )(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(
        ways, kernel_initializer=keras.initializers.GlorotUniform(seed + 4)
    )(x)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("tasks_in_parallel", [1, "all"])
def test_conv4_batchnorm_second_order_matches_finite_differences(float64, steps,
                                                                  tasks_in_parallel):
    """One task at a time, and all three tasks in one task-batched pass."""
    model = models.omniglot_conv4(3, image_size=8, filters=4, seed=0)
    algo = maml.MAML(model, inner_lr=0.4, inner_steps=steps, tasks_in_parallel=tasks_in_parallel)
    batch = classification_batch(
        np.random.default_rng(2), tasks=3, shots=2, queries=4, ways=3, image=8
    )
    errors, n = _fd_errors(algo, batch)
    assert n >= 20
    assert errors.max() < 1e-6, errors


@pytest.mark.parametrize("bn_mode", ["support", "running"])
@pytest.mark.parametrize("steps", [1, 3])
def test_conv4_non_transductive_bn_modes_match_finite_differences(float64, bn_mode, steps):
    """Task-batched (groups of 2 over 3 tasks: an uneven last group) in every other BN mode."""
    model = models.omniglot_conv4(3, image_size=8, filters=4, seed=3)
    algo = maml.MAML(model, inner_lr=0.4, inner_steps=steps, bn_mode=bn_mode,
                     tasks_in_parallel=2)
    batch = classification_batch(
        np.random.default_rng(4), tasks=3, shots=2, queries=4, ways=3, image=8
    )
    errors, _ = _fd_errors(algo, batch, coords=8)
    assert errors.max() < 1e-6, errors


def test_keras_batchnorm_gives_wrong_second_order_gradient(float64):
    """The same check fails for Keras' BatchNormalization: it can detect errors."""
    batch = classification_batch(
        np.random.default_rng(2), tasks=2, shots=2, queries=4, ways=3, image=8
    )
    keras_algo = maml.MAML(_keras_bn_conv4(3, 8, 4, seed=0), inner_lr=0.4, inner_steps=1)
    tfmeta_algo = maml.MAML(
        models.omniglot_conv4(3, image_size=8, filters=4, seed=0), inner_lr=0.4, inner_steps=1
    )
    keras_errors, _ = _fd_errors(keras_algo, batch, coords=8)
    tfmeta_errors, _ = _fd_errors(tfmeta_algo, batch, coords=8)
    assert tfmeta_errors.max() < 1e-6
    assert keras_errors.max() > 1e-4, keras_errors


def _resnet12_objective(algo, batch, steps):
    """The query loss after ``steps`` inner steps, all tasks at once (public API, eager).

    Eager because tracing ResNet-12's adaptation in float64 takes far longer than the few
    evaluations the check needs; the analytic side differentiates through the inner loop.
    """
    t = {k: tf.constant(v) for k, v in batch.items()}

    def objective():
        out = algo.adapt_and_predict(t["support_x"], t["support_y"], t["query_x"], steps=steps)
        return tf.reduce_mean(algo.loss_fn(tf.reshape(t["query_y"], [-1]),
                                           tf.reshape(out, [-1, out.shape[-1]])))
    return objective


@pytest.mark.parametrize("steps, tasks_in_parallel, h, tol, coords", [
    pytest.param(1, "all", 1e-6, 1e-6, 6, id="1step-batched"),
    # Two inner steps cross more kinks of LeakyReLU and max pooling (the inner gradient jumps
    # there): a smaller step, whose round-off sets the tolerance.
    pytest.param(2, "all", 1e-7, 1e-5, 24, id="2steps-batched", marks=pytest.mark.slow),
    pytest.param(2, 1, 1e-7, 1e-5, 24, id="2steps-one-at-a-time", marks=pytest.mark.slow),
])
def test_resnet12_second_order_matches_finite_differences(float64, steps, tasks_in_parallel, h,
                                                          tol, coords):
    """Residual sums, 1x1 shortcuts, LeakyReLU, max and average pooling, 16 batch norms."""
    model = models.resnet12(3, image_size=16, channels=3, widths=(2, 3, 4, 4), seed=1)
    algo = maml.MAML(model, inner_lr=0.1, inner_steps=steps, tasks_in_parallel=tasks_in_parallel)
    batch = classification_batch(np.random.default_rng(1), tasks=2, shots=2, queries=4, ways=3,
                                 image=16, channels=3)
    errors, n, _ = fd_errors(algo, batch, objective=_resnet12_objective(algo, batch, steps),
                             coords=coords, h=h)
    assert n == coords
    assert errors.max() < tol, errors
