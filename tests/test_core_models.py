"""Models, BatchNorm layer, losses, functional helpers and input validation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmeta import functional as F
from tfmeta import losses, maml, models, reptile
from tfmeta.layers import BatchNorm


# ------------------------------------------------------------------ models
def test_omniglot_conv4_architecture():
    model = models.omniglot_conv4(5)
    assert model.built
    assert model.output_shape == (None, 5)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.strides for c in convs] == [(2, 2)] * 4
    assert all(c.filters == 64 and c.kernel_size == (3, 3) and c.padding == "same" for c in convs)
    assert sum(isinstance(layer, BatchNorm) for layer in model.layers) == 4
    # 28 -> 14 -> 7 -> 4 -> 2 spatially, then a mean over space.
    assert model.get_layer("relu3").output.shape == (None, 2, 2, 64)
    conv_params = (9 * 1 * 64 + 64) + 3 * (9 * 64 * 64 + 64)
    bn_params = 4 * 2 * 64  # gamma, beta
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert trainable == conv_params + bn_params + 64 * 5 + 5
    # moving mean/variance and the recorded batch mean/variance
    assert len(model.non_trainable_variables) == 4 * 4


def test_sinusoid_mlp_and_logistic_regression_shapes():
    mlp = models.sinusoid_mlp()
    assert [w.shape for w in mlp.trainable_variables] == [
        (1, 40),
        (40,),
        (40, 40),
        (40,),
        (40, 1),
        (1,),
    ]
    lr = models.logistic_regression(7)
    assert [w.shape for w in lr.trainable_variables] == [(7, 1), (1,)]


@pytest.mark.parametrize("label_shape", ["flat", "column"])
def test_logistic_regression_gradients_match_closed_form(float64, label_shape):
    rng = np.random.default_rng(0)
    model = models.logistic_regression(4, seed=0)
    x = tf.constant(rng.normal(size=(16, 4)))
    y = rng.integers(0, 2, 16).astype("float64")
    y_in = tf.constant(y if label_shape == "flat" else y[:, None])
    w, b = model.trainable_variables
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(losses.binary_crossentropy(y_in, model(x)))
    gw, gb = tape.gradient(loss, [w, b])
    sigma = 1.0 / (1.0 + np.exp(-(x.numpy() @ w.numpy() + b.numpy())[:, 0]))
    np.testing.assert_allclose(
        gw.numpy()[:, 0], ((sigma - y)[:, None] * x.numpy()).mean(0), rtol=1e-12
    )
    np.testing.assert_allclose(gb.numpy()[0], (sigma - y).mean(), rtol=1e-12)
    # One MAML inner step is exactly that closed-form gradient step.
    algo = maml.MAML(model, inner_lr=0.5, inner_steps=1, loss="binary_crossentropy")
    w1, b1 = algo.adapt(x, y_in)
    np.testing.assert_allclose(
        w1.numpy()[:, 0],
        w.numpy()[:, 0] - 0.5 * ((sigma - y)[:, None] * x.numpy()).mean(0),
        rtol=1e-12,
    )
    np.testing.assert_allclose(b1.numpy()[0], b.numpy()[0] - 0.5 * (sigma - y).mean(), rtol=1e-12)


# ----------------------------------------------- any Keras model style works
class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(8, activation="tanh")
        self.norm = BatchNorm()
        self.out = keras.layers.Dense(3)

    def call(self, x, training=None):
        return self.out(self.norm(self.hidden(x), training=training))


def _functional():
    inputs = keras.Input((5,))
    return keras.Model(
        inputs, keras.layers.Dense(3)(keras.layers.Dense(8, activation="tanh")(inputs))
    )


def _sequential():
    return keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)]
    )


def _subclassed():
    model = _Subclassed()
    model(tf.zeros((1, 5)))
    return model


@pytest.mark.parametrize(
    "make", [_functional, _sequential, _subclassed], ids=["functional", "sequential", "subclassed"]
)
def test_every_model_style_adapts_without_modifying_variables(make):
    model = make()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5)).astype("float32")
    y = np.arange(6) % 3
    before = [v.numpy().copy() for v in model.variables]
    for algo in (
        maml.MAML(model, inner_lr=0.5, inner_steps=2),
        reptile.Reptile(model, inner_lr=0.5, inner_steps=2),
    ):
        fast = algo.adapt(x, y)
        loss_before = tf.reduce_mean(
            algo.loss_fn(y, algo.predict(F.values(model.trainable_variables), x))
        )
        loss_after = tf.reduce_mean(algo.loss_fn(y, algo.predict(fast, x)))
        assert float(loss_after) < float(loss_before)
        batch = {"support_x": x[None], "support_y": y[None], "query_x": x[None], "query_y": y[None]}
        grads, _ = algo.meta_gradients(batch)
        assert len(grads) == len(model.trainable_variables)
    for b, v in zip(before, model.variables):
        np.testing.assert_array_equal(b, v.numpy())


# --------------------------------------------------------------- BatchNorm
def test_batchnorm_forward_matches_keras_and_updates_statistics():
    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, size=(16, 4, 4, 3)), tf.float32)
    ours, theirs = BatchNorm(momentum=0.9), keras.layers.BatchNormalization(momentum=0.9)
    ours.build(x.shape)
    theirs.build(x.shape)
    np.testing.assert_allclose(
        ours(x, training=True), theirs(x, training=True), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(ours.moving_mean, theirs.moving_mean, rtol=1e-5)
    np.testing.assert_allclose(ours.moving_variance, theirs.moving_variance, rtol=1e-5)
    np.testing.assert_allclose(ours.batch_mean, tf.reduce_mean(x, [0, 1, 2]), rtol=1e-5)
    np.testing.assert_allclose(
        ours(x, training=False), theirs(x, training=False), rtol=1e-4, atol=1e-5
    )
    assert len(ours.trainable_weights) == 2 and len(ours.non_trainable_weights) == 4


def test_batchnorm_has_exact_second_derivative(float64):
    """d2/dx2 of a BN output vs finite differences of the first derivative."""
    rng = np.random.default_rng(0)
    layer = BatchNorm()
    x0 = tf.constant(rng.normal(size=(5, 2)))
    layer.build(x0.shape)
    w = tf.constant(rng.normal(size=(5, 2)))
    v = tf.constant(rng.normal(size=(5, 2)))

    def grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = tf.reduce_sum(tf.sin(layer(x, training=True)) * w)
        return tape.gradient(out, x)

    with tf.GradientTape() as tape:
        tape.watch(x0)
        g = tf.reduce_sum(grad(x0) * v)
    hvp = tape.gradient(g, x0)
    h = 1e-6
    fd = (grad(x0 + h * v) - grad(x0 - h * v)) / (2 * h)
    np.testing.assert_allclose(hvp, fd, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------- losses and helpers
def test_losses_per_example_and_registry():
    logits = tf.constant([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    y = tf.constant([0, 2])
    np.testing.assert_allclose(
        losses.get("sparse_categorical_crossentropy")(y, logits),
        keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True),
        rtol=1e-6,
    )
    np.testing.assert_allclose(losses.get("mse")(tf.ones((2, 3)), tf.zeros((2, 3))), [1.0, 1.0])
    custom = lambda a, b: tf.reduce_sum(tf.abs(a - b), -1)  # noqa: E731
    assert losses.get(custom) is custom
    with pytest.raises(ValueError, match=r"'hinge'.*binary_crossentropy.*mse.*sparse_categorical"):
        losses.get("hinge")
    # An out-of-range label poisons the loss instead of silently giving 0.
    assert np.isnan(losses.sparse_categorical_crossentropy(tf.constant([3]), logits[:1]).numpy()[0])


def test_loss_is_float32_for_bfloat16_predictions():
    out = losses.mse(tf.ones((2, 1)), tf.zeros((2, 1), tf.bfloat16))
    assert out.dtype == tf.float32


def test_functional_helpers():
    a = [tf.constant([3.0, 4.0]), tf.constant([0.0])]
    np.testing.assert_allclose(F.global_norm(a), 5.0)
    clipped = F.clip_by_global_norm(a, 1.0)
    np.testing.assert_allclose(F.global_norm(clipped), 1.0, rtol=1e-6)
    assert F.clip_by_global_norm(a, 10.0)[0].numpy().tolist() == [3.0, 4.0]
    np.testing.assert_allclose(F.sgd_step(a, a, 0.5)[0], [1.5, 2.0])
    np.testing.assert_allclose(F.sub(F.add(a, a), a)[0], a[0])
    # Clipping stays twice differentiable at a zero gradient (no NaN).
    z = [tf.zeros(3)]
    with tf.GradientTape() as t2:
        t2.watch(z)
        with tf.GradientTape() as t1:
            t1.watch(z)
            n = F.global_norm(F.clip_by_global_norm(z, 1.0))
        g = t1.gradient(n, z)[0]
        s = tf.reduce_sum(g)
    assert np.all(np.isfinite(t2.gradient(s, z)[0]))
    v = [tf.Variable([1.0]), tf.Variable([1], dtype=tf.int32)]
    F.assign_floating(v, [tf.constant([2.0]), tf.constant([5])])
    assert v[0].numpy()[0] == 2.0 and v[1].numpy()[0] == 1


# -------------------------------------------------------- input validation
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


def test_models_accept_a_mixed_precision_policy():
    # 28x28 as in use: with 8x8 inputs the last convolution sees 1x1 maps, where
    # TensorFlow's oneDNN bfloat16 convolution gradient returns non-finite values
    # nondeterministically (not with TF_ENABLE_ONEDNN_OPTS=0).
    model = models.omniglot_conv4(3, image_size=28, filters=4, seed=0, dtype="mixed_bfloat16")
    assert model.get_layer("conv0").compute_dtype == "bfloat16"
    assert model.get_layer("bn0").compute_dtype == "bfloat16"
    assert model.get_layer("logits").compute_dtype == "float32"
    assert all(v.dtype == "float32" for v in model.variables)
    rng = np.random.default_rng(0)
    batch = {
        "support_x": rng.normal(size=(1, 6, 28, 28, 1)).astype("float32"),
        "support_y": np.tile(np.arange(3), (1, 2)),
        "query_x": rng.normal(size=(1, 3, 28, 28, 1)).astype("float32"),
        "query_y": rng.integers(0, 3, (1, 3)),
    }
    grads, metrics = maml.MAML(model, inner_lr=0.4, inner_steps=1).meta_gradients(batch)
    assert all(g.dtype == tf.float32 for g in grads)
    bad = [
        (v.path, g.numpy())
        for v, g in zip(model.trainable_variables, grads)
        if not np.all(np.isfinite(g))
    ]
    assert not bad, bad
    assert np.isfinite(metrics["loss"])
    mlp = models.sinusoid_mlp(dtype="mixed_bfloat16")
    assert mlp.get_layer("dense0").compute_dtype == "bfloat16"
    assert mlp.get_layer("output").compute_dtype == "float32"
