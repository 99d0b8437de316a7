"""MAML++, Meta-SGD and ANIL: exact meta-gradients, their definitions, schedules and bad input.

Finite differences perturb every meta-variable, learned learning rates and per-step batch-norm
weights included; the numeric side uses only the public adapt / predict API, one task at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.gradcheck import classification_batch, fd_errors, query_loss_after
from tests.helpers import REPO
from tfmeta.run import config as config_lib
from tfmeta.core import maml, models
from tfmeta.run import trainer

DRIVER = os.path.join(REPO, "tests", "distributed_driver.py")
SINE = os.path.join(REPO, "configs", "sinusoid_maml.py")


def _conv4(seed=0):
    return models.omniglot_conv4(3, image_size=8, filters=4, seed=seed)


def _batch(seed=0, tasks=2):
    return classification_batch(np.random.default_rng(seed), tasks=tasks, shots=2, queries=4,
                                ways=3, image=8)


def _tensors(batch):
    return {k: tf.constant(v) for k, v in batch.items()}


# ------------------------------------------------------------------------- finite differences
@pytest.mark.parametrize("bn_mode", ["transductive", "support"])
def test_mamlpp_meta_gradient_with_learned_rates_and_per_step_bn(float64, bn_mode):
    """Multi-step loss at epoch 3 of 10: every step's query loss counts, with MAML++'s weights."""
    steps, epoch = 3, 3
    algo = maml.MAMLpp(_conv4(), inner_lr=0.3, inner_steps=steps, bn_mode=bn_mode,
                       iterations_per_epoch=10, tasks_in_parallel="all")
    # Make the learned quantities differ per layer and step, so indexing mistakes would show.
    rng = np.random.default_rng(9)
    for var in algo.inner.variables.trainable:
        var.assign(var.numpy() * rng.uniform(0.5, 1.5, var.shape))
    batch = _batch(1)
    weights = maml.multi_step_loss_weights(steps, epoch, algo.msl_epochs).numpy()
    objective = tf.function(lambda: sum(
        float(w) * query_loss_after(algo, _tensors(batch), t + 1) for t, w in enumerate(weights)))
    grads = algo.meta_step(_tensors(batch), iteration=epoch * 10 + 4).grads
    errors, n, grads = fd_errors(algo, batch, objective=objective, grads=grads)
    assert n >= 20 and errors.max() < 1e-6, errors
    extra = algo.inner.variables.trainable
    assert len(extra) == len(algo.meta_variables) - len(algo.model.trainable_variables)
    # Learned rates (one per adapted tensor and step) and per-step BN weights get gradients,
    # except the rates of conv biases that batch norm cancels: their inner gradient is zero in
    # exact arithmetic, so the rate multiplies zero and its meta-gradient is exactly zero.
    extra_grads = grads[len(algo.model.trainable_variables):]
    from tfmeta.core import layers

    cancelled = layers.biases_cancelled_by_batch_norm(algo.model)
    params = algo.model.trainable_variables
    zero = {j for i, j in algo.inner.variables.lr_index.items() if id(params[i]) in cancelled}
    assert zero, "the conv4 has biases before batch norm"
    for j, g in enumerate(extra_grads):
        assert (np.abs(g).max() == 0) == (j in zero), (j, g)
    # ... and the finite-difference check covered them: check a few of them alone.
    errors, _, _ = fd_errors(algo, batch, objective=objective, grads=extra_grads,
                             variables=extra, coords=12, seed=1)
    assert errors.max() < 1e-6, errors


def test_mamlpp_without_multi_step_loss_is_the_last_step_loss(float64):
    algo = maml.MAMLpp(_conv4(1), inner_lr=0.3, inner_steps=2, multi_step_loss=False)
    errors, _, _ = fd_errors(algo, _batch(2), coords=16)
    assert errors.max() < 1e-6, errors


def test_metasgd_meta_gradient_includes_the_learned_rates(float64):
    algo = maml.MetaSGD(_conv4(2), inner_lr=0.3, inner_steps=2, bn_mode="support")
    errors, n, grads = fd_errors(algo, _batch(3), coords=24)
    assert n >= 20 and errors.max() < 1e-6, errors
    rates = algo.inner.variables.trainable
    assert [r.shape for r in rates] == [v.shape for v in algo.model.trainable_variables]
    errors, _, _ = fd_errors(algo, _batch(3), grads=grads[len(rates):], variables=rates,
                             coords=12, seed=2)
    assert errors.max() < 1e-6, errors


def test_anil_meta_gradient(float64):
    errors, n, _ = fd_errors(maml.ANIL(_conv4(3), inner_lr=0.4, inner_steps=3), _batch(4))
    assert n >= 20 and errors.max() < 1e-6, errors


# ------------------------------------------------------------------------------- definitions
def test_anil_is_maml_with_the_bodys_inner_updates_removed(float64):
    """Written out by hand: only the head's gradient step, the body fixed, second order."""
    model = _conv4(4)
    batch = _tensors(_batch(5, tasks=3))
    lr, steps = 0.4, 2
    variables = model.trainable_variables
    head = {id(v) for v in model.get_layer("logits").trainable_weights}
    is_head = [id(v) in head for v in variables]
    theta = [tf.convert_to_tensor(v) for v in variables]
    nt = [tf.convert_to_tensor(v) for v in model.non_trainable_variables]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    total = [tf.zeros_like(t) for t in theta]
    for i in range(3):
        with tf.GradientTape() as outer:
            outer.watch(theta)
            fast = list(theta)
            for _ in range(steps):
                with tf.GradientTape() as inner:
                    inner.watch(fast)
                    out, _ = model.stateless_call(fast, nt, batch["support_x"][i], training=True)
                    support_loss = loss(batch["support_y"][i], out)
                g = inner.gradient(support_loss, fast)
                fast = [p - lr * gi if h else p for p, gi, h in zip(fast, g, is_head)]
            out, _ = model.stateless_call(fast, nt, batch["query_x"][i], training=True)
            query_loss = loss(batch["query_y"][i], out)
        total = [t + g for t, g in zip(total, outer.gradient(query_loss, theta))]
    expected = [t / 3 for t in total]
    for k in (1, "all"):
        anil = maml.ANIL(model, inner_lr=lr, inner_steps=steps, tasks_in_parallel=k)
        for got, want in zip(anil.meta_gradients(batch)[0], expected):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert not np.allclose(
        maml.MAML(model, inner_lr=lr, inner_steps=steps).meta_gradients(batch)[0][0],
        expected[0])


def test_multi_step_loss_weights_follow_the_reference_schedule():
    """HowToTrainYourMAMLPytorch's get_per_step_loss_importance_vector, written out."""
    def reference(n, epoch, epochs):
        w = np.ones(n) / n
        decay = 1.0 / n / epochs
        floor = 0.03 / n
        w[:-1] = np.maximum(w[:-1] - epoch * decay, floor)
        w[-1] = min(w[-1] + epoch * (n - 1) * decay, 1.0 - (n - 1) * floor)
        return w

    for epoch in (0, 1, 4, 9, 10, 30):
        np.testing.assert_allclose(maml.multi_step_loss_weights(5, epoch, 10),
                                   reference(5, epoch, 10), rtol=1e-6)
    assert abs(float(tf.reduce_sum(maml.multi_step_loss_weights(5, 0, 10))) - 1) < 1e-6


def test_learned_rates_and_per_step_statistics_are_checkpointed():
    model = models.omniglot_conv4(3, image_size=8, filters=4, seed=0)
    algo = maml.MAMLpp(model, inner_lr=0.1, inner_steps=2)
    names = sorted(v.name for v in algo.inner.variables.variables)
    assert any(n.startswith("lr_") for n in names) and any("step_" in n for n in names)
    ckpt = tf.train.Checkpoint(**algo.checkpointables)
    path = ckpt.write(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ckpt-{os.getpid()}"))
    keys = [k for k, _ in tf.train.list_variables(path)]
    assert sum("inner_loop" in k for k in keys) == len(algo.inner.variables.variables)


# -------------------------------------------------------------------------------- schedules
def _mamlpp_sine(**overrides):
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from distributed_driver import load_config

    config = load_config(f"{SINE}:smoke")
    config.algorithm = "mamlpp"
    config.mamlpp.per_step_bn = False  # the sinusoid MLP has no batch norm
    config.inner.steps = 2
    config.update_from_flattened_dict(overrides)
    return config


def test_derivative_order_and_multi_step_loss_switch_at_their_iterations():
    config = _mamlpp_sine(**{"mamlpp.first_order_iterations": 4,
                             "mamlpp.iterations_per_epoch": 3, "mamlpp.msl_epochs": 2,
                             "train.iterations": 10})
    expected = {0: (True, True, 4), 3: (True, True, 4), 4: (False, True, 6),
                5: (False, True, 6), 6: (False, False, 10), 9: (False, False, 10)}
    for step, (first_order, msl, switch) in expected.items():
        kwargs, next_switch = trainer.phase(config, step)
        assert kwargs == {"first_order": first_order, "multi_step_loss": msl}, step
        assert next_switch == switch, step
    fomaml = _mamlpp_sine()
    fomaml.algorithm, fomaml.mamlpp = "fomaml", config_lib.base_config().mamlpp
    assert trainer.phase(fomaml, 7)[0] == {"first_order": True}


def _drive(spec):
    proc = subprocess.run([sys.executable, DRIVER, json.dumps(spec)], capture_output=True,
                          text=True, timeout=600, cwd=REPO,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def test_resume_across_the_derivative_order_switch_is_exact(tmp_path):
    """Stopped before the switch and resumed after it == uninterrupted, bit for bit."""
    overrides = {"algorithm": "mamlpp", "mamlpp.per_step_bn": False, "inner.steps": 2,
                 "mamlpp.first_order_iterations": 4, "mamlpp.iterations_per_epoch": 2,
                 "mamlpp.msl_epochs": 3, "train.iterations": 9, "train.steps_per_loop": 3,
                 "train.meta_batch_size": 4, "train.eval_every": 0, "train.eval_episodes": 0,
                 "train.log_every": 3, "train.checkpoint_every": 3}
    base = {"config": f"{SINE}:smoke", "deterministic": True}
    log = _drive(dict(base, overrides=overrides, workdir=str(tmp_path / "whole"),
                      dump=str(tmp_path / "whole.npz")))
    assert "From iteration 4: first_order=False" in log
    assert "From iteration 6: first_order=False, multi_step_loss=False" in log
    _drive(dict(base, overrides=dict(overrides, **{"train.iterations": 3}),
                workdir=str(tmp_path / "parts")))
    log = _drive(dict(base, overrides=overrides, workdir=str(tmp_path / "parts"),
                      dump=str(tmp_path / "parts.npz")))
    assert "Resumed from" in log and "From iteration 4" in log
    whole, parts = np.load(tmp_path / "whole.npz"), np.load(tmp_path / "parts.npz")
    assert sorted(whole.files) == sorted(parts.files)
    for key in whole.files:
        np.testing.assert_array_equal(whole[key], parts[key], err_msg=key)


# -------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("overrides,fields", [
    ({"algorithm": "maml", "mamlpp.per_step_bn": False}, ["mamlpp.per_step_bn", "algorithm"]),
    ({"algorithm": "reptile", "mamlpp.learned_lr": False}, ["mamlpp.learned_lr", "algorithm"]),
    ({"mamlpp.per_step_bn": True}, ["mamlpp.per_step_bn", "model.name"]),
    ({"inner.steps": 1}, ["mamlpp.multi_step_loss", "inner.steps"]),
    ({"outer.schedule": "cosine", "outer.min_lr": 0.1}, ["outer.min_lr"]),
])
def test_switches_that_cannot_combine_fail_naming_the_fields(overrides, fields):
    config = _mamlpp_sine()
    config.update_from_flattened_dict(overrides)
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.validate(config)
    for field in fields:
        assert field in str(info.value)


def test_per_step_bn_needs_tfmeta_batch_norm():
    inp = keras.Input((6,))
    x = keras.layers.BatchNormalization(name="keras_bn")(keras.layers.Dense(4)(inp))
    model = keras.Model(inp, keras.layers.Dense(2)(x))
    with pytest.raises(ValueError, match="per-step batch norm needs tfmeta.core.layers.BatchNorm.*"
                                         "keras_bn"):
        maml.MAMLpp(model, inner_lr=0.1, inner_steps=2)
    with pytest.raises(ValueError, match="has none"):
        maml.MAMLpp(models.sinusoid_mlp(seed=0), inner_lr=0.1, inner_steps=2, loss="mse")
    with pytest.raises(ValueError, match="unknown learned_lr"):
        maml.MAML(models.sinusoid_mlp(seed=0), inner_lr=0.1, inner_steps=1, learned_lr="all")
