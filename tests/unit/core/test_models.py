"""Models, BatchNorm layer, losses, functional helpers and input validation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmeta.core import functional as F
from tfmeta.core import layers, losses, maml, models, reptile
from tfmeta.core.layers import BatchNorm


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


def _trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def _conv_params(kernel, c_in, c_out, bias):
    return kernel * kernel * c_in * c_out + (c_out if bias else 0)


@pytest.mark.parametrize("size, side", [(84, 5), (32, 2)])
def test_conv4_for_colour_images_is_the_maml_mini_imagenet_network(size, side):
    model = models.conv4(5, image_size=size, channels=3, filters=32, downsample="maxpool",
                         head="flatten", seed=0)
    assert model.name == "conv4" and model.input_shape == (None, size, size, 3)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.strides for c in convs] == [(1, 1)] * 4
    assert all(c.filters == 32 and c.kernel_size == (3, 3) for c in convs)
    # 84 -> 42 -> 21 -> 10 -> 5 (32 -> 16 -> 8 -> 4 -> 2), flattened: 800 (128) features.
    assert model.get_layer("pool3").output.shape == (None, side, side, 32)
    assert model.get_layer("flatten").output.shape == (None, side * side * 32)
    expected = (_conv_params(3, 3, 32, True) + 3 * _conv_params(3, 32, 32, True) + 4 * 2 * 32
                + side * side * 32 * 5 + 5)
    assert _trainable_count(model) == expected
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype("float32")
    assert model(x, training=True).shape == (2, 5)


def _resnet12_params(channels, widths, classes):
    """Trainable parameters of ResNet-12 as described: convolutions without bias, BN, head."""
    total, c_in = 0, channels
    for w in widths:
        total += _conv_params(3, c_in, w, False) + 2 * _conv_params(3, w, w, False)
        total += _conv_params(1, c_in, w, False)  # shortcut
        total += 4 * 2 * w  # gamma and beta of the four batch norms
        c_in = w
    return total + c_in * classes + classes


def test_resnet12_architecture_and_parameter_count():
    model = models.resnet12(5, seed=0)  # 84x84x3, widths (64, 160, 320, 640)
    assert model.name == "resnet12" and model.input_shape == (None, 84, 84, 3)
    expected = _resnet12_params(3, (64, 160, 320, 640), 5)
    assert _trainable_count(model) == expected
    assert 12.3e6 < expected < 12.5e6  # the ~12.4M of the MetaOptNet backbone
    assert len(model.non_trainable_variables) == 16 * 4  # moving and recorded batch statistics
    for b, (width, side) in enumerate(zip((64, 160, 320, 640), (42, 21, 10, 5))):
        convs = [model.get_layer(f"block{b}_conv{j}") for j in range(3)]
        shortcut = model.get_layer(f"block{b}_shortcut")
        assert all(c.kernel_size == (3, 3) and c.filters == width and not c.use_bias
                   for c in convs)
        assert shortcut.kernel_size == (1, 1) and shortcut.filters == width
        assert not shortcut.use_bias
        # No activation after the third batch norm: the sum adds two batch-norm outputs.
        add = model.get_layer(f"block{b}_add")
        assert [t._keras_history.operation.name for t in add.input] == [
            f"block{b}_bn2", f"block{b}_shortcut_bn"]
        relus = [model.get_layer(f"block{b}_relu{j}") for j in range(2)]
        relus.append(model.get_layer(f"block{b}_relu"))
        assert all(isinstance(r, keras.layers.LeakyReLU) and r.negative_slope == pytest.approx(0.1)
                   for r in relus)
        assert model.get_layer(f"block{b}_pool").output.shape == (None, side, side, width)
    assert sum(isinstance(layer, BatchNorm) for layer in model.layers) == 16
    assert model.get_layer("spatial_mean").output.shape == (None, 640)
    assert model.layers[-1].name == "logits"
    x = np.random.default_rng(0).normal(size=(1, 84, 84, 3)).astype("float32")
    assert model(x, training=False).shape == (1, 5)


def test_resnet12_on_cifar_sized_images_seeds_and_dtype_policy():
    small = models.resnet12(5, image_size=32, widths=(4, 6, 8, 10), seed=3)
    assert [small.get_layer(f"block{b}_pool").output.shape[1] for b in range(4)] == [16, 8, 4, 2]
    assert _trainable_count(small) == _resnet12_params(3, (4, 6, 8, 10), 5)
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    assert small(x, training=True).shape == (4, 5)
    same = models.resnet12(5, image_size=32, widths=(4, 6, 8, 10), seed=3)
    other = models.resnet12(5, image_size=32, widths=(4, 6, 8, 10), seed=4)
    for a, b in zip(small.trainable_weights, same.trainable_weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert any(not np.array_equal(a.numpy(), c.numpy())
               for a, c in zip(small.trainable_weights, other.trainable_weights))
    gray = models.resnet12(5, image_size=16, channels=1, widths=(2, 2, 2, 2))
    assert gray.input_shape == (None, 16, 16, 1)
    mixed = models.resnet12(5, image_size=16, widths=(2, 2, 2, 2), dtype="mixed_bfloat16")
    assert mixed.get_layer("block0_conv0").compute_dtype == "bfloat16"
    assert mixed.get_layer("block3_shortcut_bn").compute_dtype == "bfloat16"
    assert mixed.get_layer("logits").compute_dtype == "float32"
    assert all(v.dtype == "float32" for v in mixed.variables)


def test_network_arguments_are_checked():
    with pytest.raises(ValueError, match="four positive integers"):
        models.resnet12(5, widths=(64, 160, 320))
    with pytest.raises(ValueError, match="four positive integers"):
        models.resnet12(5, widths=(64, 0, 320, 640))
    with pytest.raises(ValueError, match=">= 16, got 15"):
        models.resnet12(5, image_size=15)
    with pytest.raises(ValueError, match=">= 16, got 8"):
        models.conv4(5, image_size=8, downsample="maxpool")
    models.conv4(5, image_size=8, filters=2)  # strided: any size


def test_omniglot_conv4_is_conv4_under_its_earlier_name(tmp_path):
    old = models.omniglot_conv4(3, image_size=8, filters=4, seed=0)
    new = models.conv4(3, image_size=8, filters=4, seed=0)
    assert old.name == "omniglot_conv4" and new.name == "conv4"
    assert [v.path for v in old.weights] == [v.path for v in new.weights]
    for a, b in zip(old.weights, new.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # A checkpoint written under the earlier name restores into the renamed network.
    path = tf.train.Checkpoint(model=old).write(str(tmp_path / "ckpt"))
    other = models.conv4(3, image_size=8, filters=4, seed=1)
    tf.train.Checkpoint(model=other).read(path).assert_existing_objects_matched()
    for a, b in zip(old.weights, other.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# ------------------------------------------- colour networks under every algorithm
COLOUR_MODELS = {
    "conv4": lambda: models.conv4(3, image_size=16, channels=3, filters=4, downsample="maxpool",
                                  head="flatten", seed=0),
    "resnet12": lambda: models.resnet12(3, image_size=16, widths=(4, 4, 8, 8), seed=0),
}
COLOUR_ALGORITHMS = {
    "maml": lambda m, k: maml.MAML(m, inner_lr=0.1, inner_steps=1, tasks_in_parallel=k),
    "fomaml": lambda m, k: maml.MAML(m, inner_lr=0.1, inner_steps=1, first_order=True,
                                     tasks_in_parallel=k),
    "mamlpp": lambda m, k: maml.MAMLpp(m, inner_lr=0.1, inner_steps=2, tasks_in_parallel=k),
    "metasgd": lambda m, k: maml.MetaSGD(m, inner_lr=0.1, inner_steps=1, tasks_in_parallel=k),
    "anil": lambda m, k: maml.ANIL(m, inner_lr=0.1, inner_steps=1, tasks_in_parallel=k),
    "reptile": lambda m, k: reptile.Reptile(m, inner_lr=0.1, inner_steps=2, outer_step_size=0.5,
                                            tasks_in_parallel=k),
}
# Every algorithm with each network, tasks computed together ("all") and one at a time (1). The
# default suite runs one combination per algorithm, covering both networks and both paths, and
# MAML++'s per-step batch norm and ANIL's head on ResNet-12; the rest is marked slow.
DEFAULT_COLOUR_CASES = {("maml", "resnet12", "all"), ("mamlpp", "resnet12", "all"),
                        ("anil", "resnet12", "all"), ("reptile", "resnet12", 1),
                        ("fomaml", "conv4", 1), ("metasgd", "conv4", "all")}
COLOUR_CASES = [
    pytest.param(algorithm, name, k, id=f"{algorithm}-{name}-{k}",
                 marks=[] if (algorithm, name, k) in DEFAULT_COLOUR_CASES else [pytest.mark.slow])
    for algorithm in COLOUR_ALGORITHMS for name in COLOUR_MODELS for k in ("all", 1)]


def colour_episodes(seed=0, tasks=2, ways=3, shots=1, queries=2, image=16):
    """Noisy copies of one fixed colour image per class (labels shared by every task)."""
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(100).normal(size=(ways, image, image, 3))
    support_y = np.tile(np.arange(ways), (tasks, shots))
    query_y = np.tile(np.arange(ways), (tasks, queries))

    def images(labels):
        return (prototypes[labels] + rng.normal(size=(*labels.shape, image, image, 3))).astype(
            "float32")

    return {"support_x": tf.constant(images(support_y)), "support_y": tf.constant(support_y),
            "query_x": tf.constant(images(query_y)), "query_y": tf.constant(query_y)}


@pytest.mark.parametrize("algorithm, name, tasks_in_parallel", COLOUR_CASES)
def test_colour_networks_meta_train_under_every_algorithm(algorithm, name, tasks_in_parallel):
    model = COLOUR_MODELS[name]()
    algo = COLOUR_ALGORITHMS[algorithm](model, tasks_in_parallel)
    assert algo.group_size(2) == (2 if tasks_in_parallel == "all" else 1)
    assert (algo.inner.batched is not None) == (tasks_in_parallel == "all")
    batch = colour_episodes()
    before = [v.numpy().copy() for v in algo.meta_variables]
    if algorithm == "reptile":
        # theta <- theta + eps * mean_i(phi_i - theta), phi_i adapted one task at a time through
        # the public API (the meta-step may have computed the tasks together).
        adapted = [algo.adapt(batch["support_x"][i], batch["support_y"][i]) for i in range(2)]
        loss_pre = [float(algo.meta_update(batch)["loss_pre"])]
        for theta, var, phi_0, phi_1 in zip(before, algo.meta_variables, *adapted):
            want = theta + 0.5 * ((phi_0.numpy() + phi_1.numpy()) / 2 - theta)
            np.testing.assert_allclose(var.numpy(), want, rtol=1e-5, atol=1e-6)
        algo.meta_update(batch)
        out = algo.adapt_and_predict(batch["support_x"], batch["support_y"], batch["query_x"],
                                     steps=0)
        after = float(tf.reduce_mean(algo.loss_fn(tf.reshape(batch["query_y"], [-1]),
                                                  tf.reshape(out, [-1, 3]))))
        # The initialisation moves towards weights that fit these tasks' support sets.
        assert after < 0.9 * loss_pre[0], (loss_pre, after)
    else:
        optimizer = keras.optimizers.Adam(0.01)
        losses = []
        for _ in range(2):
            step = algo.meta_step(batch)
            optimizer.apply_gradients(zip(step.grads, algo.meta_variables))
            F.assign_floating(algo.state_variables, step.non_trainable)
            losses.append(float(step.metrics["loss"]))
        after = float(np.mean(algo.evaluate(batch, steps=algo.inner_steps)["loss"]))
        assert after < 0.9 * losses[0], (losses, after)
    params = model.trainable_variables
    inner = algo.inner.variables
    # Exactly zero meta-gradients by construction: conv biases that batch norm cancels (conv4) and
    # their learned rates, and the model's batch-norm weights where MAML++ uses per-step copies.
    cancelled = layers.biases_cancelled_by_batch_norm(model)
    fixed = {i for i, p in enumerate(params) if id(p) in cancelled or i in inner.step_params}
    fixed |= {len(params) + j for i, j in inner.lr_index.items() if id(params[i]) in cancelled}
    for i, (var, old) in enumerate(zip(algo.meta_variables, before)):
        assert np.all(np.isfinite(var.numpy())), var.name
        if i not in fixed:
            assert not np.array_equal(var.numpy(), old), f"{var.name} did not change"
    if algorithm == "anil":  # only the head adapts; the body is learned in the outer loop
        assert [v.path for v, ok in zip(params, algo.inner.adapted) if ok] == [
            "logits/kernel", "logits/bias"]
    if algorithm == "mamlpp":  # per-step weights and statistics for every batch norm
        norms = layers.batch_norm_layers(model)
        assert len(norms) == {"conv4": 4, "resnet12": 16}[name]
        assert len(inner.step_params) == len(inner.step_stats) == 2 * len(norms)
        for var in inner.trainable[len(inner.lr_index):] + inner.non_trainable:
            assert var.shape[0] == 2
            assert not np.allclose(var[0].numpy(), var[1].numpy()), var.name
    if algorithm == "metasgd":  # a learned rate per parameter
        assert [tuple(inner.trainable[inner.lr_index[i]].shape) for i in range(len(params))] == [
            tuple(p.shape) for p in params]


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
