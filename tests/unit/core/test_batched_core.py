"""Tasks computed together (``tasks_in_parallel``) give what one task at a time gives.

Float64 throughout for exactness (the task-batched convolution then runs as im2col, because
TensorFlow has no float64 grouped-convolution gradient on CPU); float32 for the grouped
convolution that GPUs, TPUs and float32 CPUs use.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmeta.core import batched, layers, maml, models, reptile

from tests.helpers import subprocess_env

TASKS = 5  # groups of 2 and 3 leave an uneven last group


def _batch(rng, dtype="float64", tasks=TASKS, ways=3, shots=2, queries=4, image=8):
    return {
        "support_x": tf.constant(rng.normal(size=(tasks, ways * shots, image, image, 1)), dtype),
        "support_y": tf.constant(np.tile(np.arange(ways), (tasks, shots)), tf.int32),
        "query_x": tf.constant(rng.normal(size=(tasks, queries, image, image, 1)), dtype),
        "query_y": tf.constant(rng.integers(0, ways, (tasks, queries)), tf.int32),
    }


ALGORITHMS = {
    "maml": lambda m, k: maml.MAML(m, inner_lr=0.4, inner_steps=2, tasks_in_parallel=k),
    "maml_support": lambda m, k: maml.MAML(m, inner_lr=0.4, inner_steps=2, bn_mode="support",
                                           tasks_in_parallel=k),
    "maml_running_clip": lambda m, k: maml.MAML(m, inner_lr=0.4, inner_steps=2,
                                                bn_mode="running", inner_grad_clip=0.5,
                                                tasks_in_parallel=k),
    "fomaml": lambda m, k: maml.MAML(m, inner_lr=0.4, inner_steps=2, first_order=True,
                                     tasks_in_parallel=k),
    "reptile_sgd": lambda m, k: reptile.Reptile(m, inner_lr=0.1, inner_steps=3,
                                                inner_batch_size=4, tasks_in_parallel=k),
    "reptile_adam": lambda m, k: reptile.Reptile(m, inner_lr=0.01, inner_steps=3,
                                                 inner_optimizer="adam", inner_batch_size=4,
                                                 tasks_in_parallel=k),
}


def _assert_step_equal(got, want, rtol):
    # Absolute slack relative to the largest gradient: the conv biases before batch norm have a
    # true gradient of 0, so theirs is round-off whose relative error means nothing.
    scale = max(float(np.max(np.abs(g))) for g in want.grads)
    for a, b in zip(got.grads, want.grads):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)
    for k in want.metrics:  # float32 by contract
        np.testing.assert_allclose(got.metrics[k], want.metrics[k], rtol=max(rtol, 1e-6))
    for a, b in zip(got.non_trainable, want.non_trainable):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * 1e-3)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_grouping_equals_one_task_at_a_time(float64, name):
    model = models.omniglot_conv4(3, image_size=8, filters=4, seed=0)
    batch = _batch(np.random.default_rng(0))
    reference = ALGORITHMS[name](model, 1).meta_step(batch)
    # Adam divides by sqrt(v) + 1e-8: on the conv biases (true gradient 0) it multiplies
    # gradient round-off (~1e-17) by lr / 1e-8, so its agreement is limited to ~1e-9.
    rtol = 1e-8 if name == "reptile_adam" else 1e-10
    for k in (2, 3, "all"):
        _assert_step_equal(ALGORITHMS[name](model, k).meta_step(batch), reference, rtol=rtol)


@pytest.mark.parametrize("mode", ["function", "xla"])
def test_grouped_under_tf_function_and_xla_equals_eager_loop(float64, mode):
    model = models.omniglot_conv4(3, image_size=8, filters=4, seed=1)
    batch = _batch(np.random.default_rng(1))
    reference = ALGORITHMS["maml"](model, 1).meta_step(batch)
    algo = ALGORITHMS["maml"](model, 3)
    step = tf.function(algo.meta_step, jit_compile=(mode == "xla"))
    _assert_step_equal(step(batch), reference, rtol=1e-9)


def test_grouped_convolution_float32_equals_one_task_at_a_time():
    """The accelerator formulation (grouped convolution) in float32, against the loop."""
    model = models.omniglot_conv4(5, image_size=12, filters=8, seed=2)
    expected = "grouped" if batched.cpu_grouped_conv_gradients() else "patches"
    assert batched.conv_implementation(tf.float32) == expected
    batch = _batch(np.random.default_rng(2), dtype="float32", ways=5, shots=1, image=12)
    for name in ("maml", "fomaml", "reptile_sgd"):
        reference = ALGORITHMS[name](model, 1).meta_step(batch)
        got = tf.function(ALGORITHMS[name](model, "all").meta_step)(batch)
        scale = max(float(np.max(np.abs(g))) for g in reference.grads)
        for a, b in zip(got.grads, reference.grads):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale, err_msg=name)


def test_evaluate_and_adapt_and_predict_equal_single_tasks(float64):
    model = models.omniglot_conv4(3, image_size=8, filters=4, seed=3)
    batch = _batch(np.random.default_rng(3))
    one, grouped = (ALGORITHMS["maml_support"](model, k) for k in (1, 3))
    for key, value in one.evaluate(batch, steps=4).items():  # float32 metrics
        np.testing.assert_allclose(grouped.evaluate(batch, steps=4)[key], value, rtol=1e-6)
    out = grouped.adapt_and_predict(batch["support_x"], batch["support_y"], batch["query_x"])
    for i in range(TASKS):
        fast = one.adapt(batch["support_x"][i], batch["support_y"][i], steps=one.eval_inner_steps)
        single = one.predict(fast, batch["query_x"][i], support_x=batch["support_x"][i])
        np.testing.assert_allclose(out[i], single, rtol=1e-10, atol=1e-12)


def _zoo():
    """Functional (with branches and merges), Sequential and nested models of batchable layers."""
    inp = keras.Input((12, 12, 2))
    x = keras.layers.Conv2D(4, 3, padding="valid", dilation_rate=2, activation="relu")(inp)
    y = keras.layers.Conv2D(4, 1, padding="same", use_bias=False)(inp)
    y = keras.layers.MaxPooling2D(2)(y)
    x = keras.layers.ZeroPadding2D(((1, 1), (0, 0)))(x)
    x = keras.layers.Cropping2D(((0, 0), (1, 1)))(x)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(x)
    x = layers.BatchNorm()(x)
    x = keras.layers.LeakyReLU()(x)
    x = keras.layers.Concatenate()([x, keras.layers.Add()([x, keras.layers.ReLU()(x)])])
    y = keras.layers.GlobalAveragePooling2D()(keras.layers.AveragePooling2D(2, padding="same")(y))
    x = keras.layers.Concatenate()([keras.layers.Flatten()(x), y])
    functional = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))
    sequential = keras.Sequential([
        keras.Input((12, 12, 2)), keras.layers.Conv2D(3, 3, strides=2, activation="elu"),
        layers.BatchNorm(), keras.layers.Activation("relu"), keras.layers.Flatten(),
        keras.layers.Dense(6, activation="tanh"), keras.layers.Reshape((3, 2)),
        keras.layers.Flatten(), keras.layers.Dense(3)])
    nested = keras.Sequential([keras.Input((12, 12, 2)), functional])
    return {"functional": functional, "sequential": sequential, "nested": nested}


@pytest.mark.parametrize("name", ["functional", "sequential", "nested"])
@pytest.mark.parametrize("conv", ["grouped", "patches"])
@pytest.mark.parametrize("training", [True, False])
def test_batched_forward_equals_per_task_stateless_calls(name, conv, training):
    model = _zoo()[name]
    assert batched.unsupported_layers(model) == []
    rng = np.random.default_rng(4)
    tasks = 3
    params = [tf.constant(v.numpy() + 0.1 * rng.normal(size=(tasks, *v.shape)), v.dtype)
              for v in model.trainable_variables]
    nt = [tf.constant(np.stack([v.numpy()] * tasks)) for v in model.non_trainable_variables]
    x = tf.constant(rng.normal(size=(tasks, 4, 12, 12, 2)).astype("float32"))
    out, nt_after = batched.BatchedModel(model, conv=conv)(params, nt, x, training=training)
    for t in range(tasks):
        want, want_nt = model.stateless_call([p[t] for p in params], [v[t] for v in nt], x[t],
                                             training=training)
        np.testing.assert_allclose(out[t], want, rtol=2e-5, atol=2e-6)
        for a, b in zip(nt_after, want_nt):
            np.testing.assert_allclose(a[t], b, rtol=2e-5, atol=2e-6)


def _colour_models():
    """The networks for colour images, at a test size (the layers of the full-size ones)."""
    return {
        "conv4": models.conv4(3, image_size=16, channels=3, filters=4, downsample="maxpool",
                              head="flatten", seed=5),
        "resnet12": models.resnet12(3, image_size=16, widths=(3, 4, 5, 6), seed=5),
    }


# "auto": grouped convolutions where this CPU can differentiate them (oneDNN), else im2col.
@pytest.mark.parametrize("name, dtype, conv, rtol", [
    ("resnet12", "float32", "auto", 2e-5),
    ("resnet12", "float64", "patches", 1e-10),
    ("conv4", "float32", "auto", 2e-5),
    pytest.param("conv4", "float64", "patches", 1e-10, marks=pytest.mark.slow),
])
def test_colour_networks_batched_forward_and_gradients_equal_per_task_calls(
        float64, name, dtype, conv, rtol):
    """Outputs, batch statistics and parameter gradients of T tasks at once, against the loop."""
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    model = _colour_models()[name]
    assert batched.unsupported_layers(model) == []
    used = {type(layer).__name__ for layer in model.layers}
    if name == "resnet12":
        assert {"Conv2D", "Add", "LeakyReLU", "MaxPooling2D", "GlobalAveragePooling2D"} <= used
        assert {layer.kernel_size for layer in model.layers
                if isinstance(layer, keras.layers.Conv2D)} == {(1, 1), (3, 3)}
    rng = np.random.default_rng(6)
    tasks = 3
    params = [tf.constant(v.numpy() + 0.1 * rng.normal(size=(tasks, *v.shape)), dtype)
              for v in model.trainable_variables]
    nt = [tf.constant(np.stack([v.numpy()] * tasks)) for v in model.non_trainable_variables]
    x = tf.constant(rng.normal(size=(tasks, 5, 16, 16, 3)), dtype)
    weights = tf.constant(rng.normal(size=(tasks, 5, 3)), dtype)  # a loss-like scalar per task
    with tf.GradientTape() as tape:
        tape.watch(params)
        out, nt_after = batched.BatchedModel(model, conv=conv)(params, nt, x, training=True)
        total = tf.reduce_sum(out * weights)
    grads = tape.gradient(total, params)
    for t in range(tasks):
        task_params = [p[t] for p in params]
        with tf.GradientTape() as tape:
            tape.watch(task_params)
            want, want_nt = model.stateless_call(task_params, [v[t] for v in nt], x[t],
                                                 training=True)
            task_total = tf.reduce_sum(want * weights[t])
        want_grads = tape.gradient(task_total, task_params)
        np.testing.assert_allclose(out[t], want, rtol=rtol, atol=rtol)
        for a, b in zip(nt_after, want_nt):
            np.testing.assert_allclose(a[t], b, rtol=rtol, atol=rtol)
        # Relative to the largest gradient: conv4's biases before batch norm have a true
        # gradient of 0, so theirs is round-off.
        scale = max(float(np.max(np.abs(g))) for g in want_grads)
        for a, b in zip(grads, want_grads):
            np.testing.assert_allclose(a[t], b, rtol=rtol, atol=rtol * scale)
    # Inference mode (moving statistics) too.
    out, _ = batched.BatchedModel(model, conv=conv)(params, nt, x, training=False)
    for t in range(tasks):
        want, _ = model.stateless_call([p[t] for p in params], [v[t] for v in nt], x[t],
                                       training=False)
        np.testing.assert_allclose(out[t], want, rtol=rtol, atol=rtol)


def test_unbatchable_layer_falls_back_to_one_task_at_a_time_and_says_which(caplog):
    inp = keras.Input((6,))
    x = keras.layers.Dense(8)(inp)
    x = keras.layers.BatchNormalization(name="keras_bn")(x)
    model = keras.Model(inp, keras.layers.Dense(2)(x))
    with caplog.at_level(logging.WARNING):
        algo = maml.MAML(model, inner_lr=0.1, inner_steps=1, tasks_in_parallel="all")
    assert "keras_bn" in caplog.text and "one at a time" in caplog.text
    assert algo.group_size(8) == 1
    rng = np.random.default_rng(5)
    batch = {"support_x": rng.normal(size=(3, 4, 6)).astype("float32"),
             "support_y": rng.integers(0, 2, (3, 4)), "query_x": rng.normal(size=(3, 4, 6)),
             "query_y": rng.integers(0, 2, (3, 4))}
    batch["query_x"] = batch["query_x"].astype("float32")
    grads, _ = algo.meta_gradients(batch)
    want, _ = maml.MAML(model, inner_lr=0.1, inner_steps=1, tasks_in_parallel=1).meta_gradients(
        batch)
    for a, b in zip(grads, want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert "Dropout" not in batched.SUPPORTED_LAYERS


def test_subclassed_model_is_reported():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    model = Sub()
    model.build((None, 3))
    assert "subclassed" in batched.unsupported_layers(model)[0]


_MIRRORED = r"""
import numpy as np, tensorflow as tf, keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
keras.config.set_floatx("float64"); keras.config.set_dtype_policy("float64")
from tfmeta.core import maml, models
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = models.omniglot_conv4(3, image_size=8, filters=4, seed=0)
rng = np.random.default_rng(0)
batch = {"support_x": rng.normal(size=(6, 6, 8, 8, 1)), "support_y": np.tile(np.arange(3), (6, 2)),
         "query_x": rng.normal(size=(6, 4, 8, 8, 1)), "query_y": rng.integers(0, 3, (6, 4))}
mode = "BN_MODE"
expected = maml.MAML(model, inner_lr=0.4, inner_steps=2, tasks_in_parallel=1,
                     bn_mode=mode).meta_step(batch)
algo = maml.MAML(model, inner_lr=0.4, inner_steps=2, tasks_in_parallel="all", bn_mode=mode,
                 remat="REMAT")
local = strategy.experimental_distribute_values_from_function(
    lambda ctx: {k: v[3 * ctx.replica_id_in_sync_group:3 * ctx.replica_id_in_sync_group + 3]
                 for k, v in batch.items()})

@tf.function
def step(b):
    out = strategy.run(lambda x: algo.meta_step(x, global_batch_size=6), args=(b,))
    return strategy.reduce("SUM", out, axis=None)

got = step(local)
# Relative to the largest gradient (conv biases before batch norm have a true gradient of 0).
scale = max(float(np.max(np.abs(b))) for b in expected.grads)
err = max(float(np.max(np.abs(a - b))) for a, b in zip(got.grads, expected.grads)) / scale
rel = lambda a, b: float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
err_m = max(abs(float(got.metrics[k] - expected.metrics[k])) for k in expected.metrics)
err_nt = max(rel(a, b) for a, b in zip(got.non_trainable, expected.non_trainable))
print("REPLICAS", strategy.num_replicas_in_sync, "ERR", err, err_m, err_nt)
"""


@pytest.mark.parametrize("bn_mode,remat", [("transductive", "none"), ("support", "none"),
                                           ("transductive", "steps"), ("running", "blocks")])
def test_mirrored_two_devices_batched_equals_one_device_loop(bn_mode, remat):
    """Also the rematerialised meta-gradients (remat="steps", "blocks") under the strategy."""
    script = _MIRRORED.replace("BN_MODE", bn_mode).replace("REMAT", remat)
    result = subprocess.run([sys.executable, "-c", script],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [s for s in result.stdout.splitlines() if s.startswith("REPLICAS")][0]
    _, replicas, _, err, err_m, err_nt = line.split()
    assert int(replicas) == 2
    assert float(err) < 1e-10 and float(err_nt) < 1e-10, line
    assert float(err_m) < 1e-6, line  # metrics are float32 by contract


_ONEDNN = r"""
import numpy as np, tensorflow as tf
from tfmeta.core import batched, maml, models
model = models.conv4(5, 12, 1, 8, seed=0)
rng = np.random.default_rng(0)
batch = {"support_x": tf.constant(rng.random((2, 5, 12, 12, 1)), tf.float32),
         "support_y": tf.constant(np.tile(np.arange(5), (2, 1))),
         "query_x": tf.constant(rng.random((2, 15, 12, 12, 1)), tf.float32),
         "query_y": tf.constant(np.tile(np.arange(5), (2, 3)))}
loop = maml.MAML(model, inner_lr=0.4, inner_steps=2, tasks_in_parallel=1).meta_step(batch)
together = maml.MAML(model, inner_lr=0.4, inner_steps=2, tasks_in_parallel="all")
got = tf.function(together.meta_step)(batch)
scale = max(float(np.max(np.abs(g))) for g in loop.grads)
err = max(float(np.max(np.abs(a - b))) for a, b in zip(got.grads, loop.grads)) / scale
auto = maml.MAML(model, inner_lr=0.4, inner_steps=2).group_size(4, 10)
print("PROBE", batched.cpu_grouped_conv_gradients(), batched.conv_implementation(tf.float32),
      auto, err)
"""


@pytest.mark.parametrize("onednn", ["0", "1"])
def test_tasks_together_with_and_without_onednn(onednn):
    """TensorFlow's own CPU kernels have no grouped-convolution gradients, oneDNN's have.

    Which one a machine gets depends on its CPU (TensorFlow enables oneDNN by default only on
    some x86 CPUs): without it, tasks computed together fall back to im2col and "auto" computes
    them one at a time; with it, grouped convolutions. Either way the meta-gradient is the loop's.
    """
    env = subprocess_env(TF_ENABLE_ONEDNN_OPTS=onednn)
    result = subprocess.run([sys.executable, "-c", _ONEDNN], capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [s for s in result.stdout.splitlines() if s.startswith("PROBE")][0]
    _, probe, implementation, auto, err = line.split()
    if onednn == "0":
        assert (probe, implementation, auto) == ("False", "patches", "1"), line
    elif probe == "True":  # oneDNN is x86-only: elsewhere the flag changes nothing
        assert (implementation, auto) == ("grouped", "4"), line
    assert float(err) < 1e-4, line
