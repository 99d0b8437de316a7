"""Reptile as the reference code runs it: per-task minibatch shuffles, Adam state carried across
tasks (checked against hand-written float64 references, through export and through a resume),
the flattening head and the reference's class protocol."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import REPO, regression_batch, subprocess_env
from tfmeta.core import functional as F
from tests import param_math as P
from tfmeta.core import inner_loop, models, reptile


# Ten support points per task, as the Reptile paper's minibatches of 10 need.
_regression = functools.partial(regression_batch, k=10)


def _grad(model, params, x, y):
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss = tf.reduce_mean(tf.square(model.stateless_call(params, [], x)[0] - y))
    return [g.numpy() for g in tape.gradient(loss, params)]


# ----------------------------------------------------------------------- per-task shuffles
def test_task_seeds_differ_between_tasks_and_agree_in_graphs_and_xla():
    batch = _regression(tasks=4)
    x, y = batch["support_x"], batch["support_y"]
    eager = inner_loop.task_seeds(x, y, 3).numpy()
    assert eager.shape == (4,) and len(set(eager.tolist())) == 4
    assert eager.min() >= 0 and eager.max() < 2**32
    # A task's seed depends on that task only, and on the seed.
    np.testing.assert_array_equal(inner_loop.task_seeds(x[2:3], y[2:3], 3), eager[2:3])
    assert not np.array_equal(inner_loop.task_seeds(x, y, 4), eager)
    graph = tf.function(lambda a, b: inner_loop.task_seeds(a, b, 3))
    xla = tf.function(lambda a, b: inner_loop.task_seeds(a, b, 3), jit_compile=True)
    np.testing.assert_array_equal(graph(x, y), eager)
    np.testing.assert_array_equal(xla(x, y), eager)
    # Per-task schedules: the same in graphs and under XLA, different between tasks.
    schedule = np.stack([reptile.minibatch_indices(10, 4, t, eager).numpy() for t in range(5)])
    assert schedule.shape == (5, 4, 4)
    xla_mb = tf.function(lambda t: reptile.minibatch_indices(tf.constant(10), 4, t, eager),
                         jit_compile=True)
    for t in range(5):
        np.testing.assert_array_equal(xla_mb(tf.constant(t)), schedule[t])
    for task in range(4):  # without replacement within a pass
        assert len(set(schedule[:2, task].ravel())) == 8
    assert len({schedule[:, task].tobytes() for task in range(4)}) == 4


def test_per_task_shuffles_drive_adaptation(float64):
    model = models.sinusoid_mlp(hidden=(8,), seed=0)
    algo = reptile.Reptile(model, inner_lr=0.05, inner_steps=5, inner_batch_size=4, loss="mse",
                           seed=7, shuffle_per_task=True, tasks_in_parallel=2)
    batch = _regression(tasks=3)
    seeds = inner_loop.task_seeds(batch["support_x"], batch["support_y"], 7)
    theta = F.values(model.trainable_variables)
    deltas = []
    for i in range(3):
        x, y = batch["support_x"][i], batch["support_y"][i]
        params = theta
        for t in range(5):
            idx = reptile.minibatch_indices(10, 4, t, seeds[i:i + 1])[0]
            params = P.sgd_step(params, _grad(model, params, tf.gather(x, idx),
                                              tf.gather(y, idx)), 0.05)
        for a, e in zip(algo.adapt(x, y), params):
            np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-14)
        deltas.append(P.sub(theta, params))
    grads, _ = algo.meta_gradients(batch)  # tasks in groups of 2: the same schedules
    for j, g in enumerate(grads):
        np.testing.assert_allclose(g, sum(d[j] for d in deltas) / 3, rtol=1e-10, atol=1e-14)
    shared = reptile.Reptile(model, inner_lr=0.05, inner_steps=5, inner_batch_size=4,
                             loss="mse", seed=7)
    x, y = batch["support_x"][0], batch["support_y"][0]
    assert not np.allclose(shared.adapt(x, y)[0], algo.adapt(x, y)[0])


# ----------------------------------------------------------------------- carried Adam state
def _hand_carried_adam(model, theta, carried, batch, *, lr, b1, b2, steps, eps):
    """The Reptile meta-update with Adam state carried across tasks (mean over the meta-batch)."""
    k = len(theta)
    ends, finals = [], []
    for i in range(batch["support_x"].shape[0]):
        x, y = batch["support_x"][i], batch["support_y"][i]
        params = [np.array(p) for p in theta]
        m, v = [np.array(a) for a in carried[:k]], [np.array(a) for a in carried[k:2 * k]]
        p1, p2 = carried[2 * k], carried[2 * k + 1]
        for _ in range(steps):
            g = _grad(model, [tf.constant(p) for p in params], x, y)
            m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
            v = [b2 * vi + (1 - b2) * gi ** 2 for vi, gi in zip(v, g)]
            p1, p2 = p1 * b1, p2 * b2
            params = [p - lr * (mi / (1 - p1)) / (np.sqrt(vi / (1 - p2)) + 1e-8)
                      for p, mi, vi in zip(params, m, v)]
        finals.append(params)
        ends.append([*m, *v, p1, p2])
    n = len(finals)
    theta = [t + eps * sum(f[j] - t for f in finals) / n for j, t in enumerate(theta)]
    carried = [sum(e[j] for e in ends) / n for j in range(len(carried))]
    return theta, carried


@pytest.mark.parametrize("tasks_in_parallel", [1, "all"])
def test_carried_adam_state_matches_hand_written_reference(float64, tasks_in_parallel):
    model = models.sinusoid_mlp(hidden=(8,), seed=1)
    lr, b1, b2, steps, eps = 0.01, 0.5, 0.9, 3, 0.7
    algo = reptile.Reptile(model, inner_lr=lr, inner_steps=steps, inner_optimizer="adam",
                           adam_beta1=b1, adam_beta2=b2, outer_step_size=eps, loss="mse",
                           carry_optimizer_state=True, tasks_in_parallel=tasks_in_parallel)
    carried_vars = algo.optimizer_state_variables
    k = len(model.trainable_variables)
    assert len(carried_vars) == 2 * k + 2
    # State variables: averaged and checkpointed like the batch-norm statistics.
    assert all(any(v is s for s in algo.state_variables) for v in carried_vars)
    assert any(v is s for v in carried_vars for s in algo.checkpointables["inner_loop"].variables)
    theta = [v.numpy() for v in model.trainable_variables]
    carried = [v.numpy() for v in carried_vars]
    for seed in (0, 1):
        batch = _regression(seed, tasks=3)
        theta, carried = _hand_carried_adam(model, theta, carried, batch, lr=lr, b1=b1, b2=b2,
                                            steps=steps, eps=eps)
        algo.meta_update(batch)
        for var, e in zip(model.trainable_variables, theta):
            np.testing.assert_allclose(var.numpy(), e, rtol=1e-10, atol=1e-13)
        for var, e in zip(carried_vars, carried):
            np.testing.assert_allclose(var.numpy(), e, rtol=1e-10, atol=1e-16)
    assert carried[-1] == pytest.approx(b2 ** (2 * steps))


def test_adaptation_starts_from_the_carried_state_and_leaves_it(float64):
    model = models.sinusoid_mlp(hidden=(8,), seed=1)
    kw = dict(inner_lr=0.01, inner_steps=3, inner_optimizer="adam", loss="mse")
    algo = reptile.Reptile(model, carry_optimizer_state=True, **kw)
    fresh = reptile.Reptile(model, **kw)
    batch = _regression(2, tasks=2)
    x, y = batch["support_x"][0], batch["support_y"][0]
    # Before any meta-update the carried state is Adam's initial state.
    for a, b in zip(algo.adapt(x, y), fresh.adapt(x, y)):
        np.testing.assert_allclose(a, b, rtol=1e-13)
    algo.meta_update(batch)
    state = [v.numpy() for v in algo.optimizer_state_variables]
    assert not np.allclose(algo.adapt(x, y)[0], fresh.adapt(x, y)[0])
    algo.evaluate(batch)
    algo.adapt_and_predict(batch["support_x"], batch["support_y"], batch["query_x"])
    for v, s in zip(algo.optimizer_state_variables, state):
        np.testing.assert_array_equal(v.numpy(), s)


def test_carried_state_needs_adam():
    model = models.sinusoid_mlp(hidden=(4,), seed=0)
    with pytest.raises(ValueError, match="carry_optimizer_state needs inner_optimizer='adam'"):
        reptile.Reptile(model, inner_lr=0.1, inner_steps=1, loss="mse",
                        carry_optimizer_state=True)


def _omniglot_batch(rng, tasks, shots, queries=1, ways=5):
    sy = np.tile(np.repeat(np.arange(ways), shots), (tasks, 1)).astype(np.int32)
    return {
        # Quantised pixels in the training representation (strokes bright).
        "support_x": np.round(rng.uniform(size=(tasks, ways * shots, 28, 28, 1)) * 255) / 255,
        "support_y": sy,
        "query_x": np.round(rng.uniform(size=(tasks, ways * queries, 28, 28, 1)) * 255) / 255,
        "query_y": np.tile(np.arange(ways), (tasks, queries)).astype(np.int32),
    }


def test_export_adapts_from_the_carried_state_with_the_same_schedule(tmp_path):
    from tfmeta.run import exporter

    model = models.omniglot_conv4(5, filters=4, seed=1)
    algorithm = reptile.Reptile(model, inner_lr=1e-2, inner_steps=3, eval_inner_steps=4,
                                inner_optimizer="adam", inner_batch_size=3, bn_mode="transductive",
                                shuffle_per_task=True, carry_optimizer_state=True)
    rng = np.random.default_rng(0)
    for _ in range(2):
        algorithm.meta_update({k: tf.constant(v, tf.float32 if k.endswith("x") else tf.int32)
                               for k, v in _omniglot_batch(rng, 2, 2).items()})
    assert float(algorithm.optimizer_state_variables[-1].numpy()) < 1.0
    meta = {"task": "omniglot", "ways": 5, "image_size": 28, "inner_steps": 4}
    loaded = tf.saved_model.load(exporter.export(model, algorithm, str(tmp_path / "m"),
                                               metadata=meta))
    # Export inputs are decode_png / 255 images (white background); the export inverts them.
    task = _omniglot_batch(rng, 2, 2, queries=2)
    images = {k: task[k].astype(np.float32) for k in ("support_x", "query_x")}
    sy = task["support_y"]
    sx, qx = 1 - images["support_x"], 1 - images["query_x"]

    def in_process(bn_mode):
        return algorithm.adapt_and_predict(sx, sy, qx, steps=4, bn_mode=bn_mode).numpy()

    single = lambda name, i: loaded.signatures[name](  # noqa: E731
        support_images=images["support_x"][i], support_labels=sy[i],
        query_images=images["query_x"][i])["logits"].numpy()
    expected = {mode: in_process(mode) for mode in ("support", "transductive")}
    for i in range(2):
        np.testing.assert_allclose(single("adapt_and_predict", i), expected["support"][i],
                                   atol=1e-5)
        np.testing.assert_allclose(single("adapt_and_predict_transductive", i),
                                   expected["transductive"][i], atol=1e-5)
    batch_out = loaded.signatures["adapt_and_predict_batch"](
        support_images=images["support_x"], support_labels=sy,
        query_images=images["query_x"])["logits"].numpy()
    np.testing.assert_allclose(batch_out, expected["support"], atol=1e-5)
    # The carried state is what made the difference: from a fresh Adam the answers change.
    saved = [v.numpy() for v in algorithm.optimizer_state_variables]
    for v in algorithm.optimizer_state_variables:
        v.assign(tf.ones_like(v) if v.shape.rank == 0 else tf.zeros_like(v))
    assert not np.allclose(in_process("support"), expected["support"], atol=1e-4)
    for v, s in zip(algorithm.optimizer_state_variables, saved):
        v.assign(s)


# ----------------------------------------------------------------------- resume
_SINE = os.path.join(REPO, "configs", "sinusoid_maml.py")
_REPTILE_SINE = [
    "--config.algorithm=reptile", "--config.inner.optimizer=adam", "--config.inner.lr=0.01",
    "--config.inner.steps=3", "--config.inner.batch_size=4", "--config.inner.shuffle_per_task=True",
    "--config.inner.carry_optimizer_state=True", "--config.outer.optimizer=sgd",
    "--config.outer.lr=0.5", "--config.train.steps_per_loop=10",
    "--config.train.checkpoint_every=10", "--config.train.eval_every=0",
    "--config.train.eval_episodes=0", "--config.train.meta_batch_size=4",
]


def _run(workdir, iterations):
    cmd = [sys.executable, "-m", "tfmeta.train", f"--config={_SINE}:smoke", f"--workdir={workdir}",
           "--deterministic", "--noexport", f"--config.train.iterations={iterations}",
           *_REPTILE_SINE]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=subprocess_env(),
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    reader = tf.train.load_checkpoint(latest)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith(("model", "inner_loop", "step"))}


def test_resume_continues_the_carried_state_bit_exactly(tmp_path):
    straight = _run(str(tmp_path / "straight"), 40)
    _run(str(tmp_path / "parts"), 20)
    resumed = _run(str(tmp_path / "parts"), 40)
    carried = [k for k in straight if k.startswith("inner_loop") and k.endswith("VARIABLE_VALUE")]
    assert len(carried) >= 4, sorted(straight)  # the moments and powers are in the checkpoint
    assert sorted(straight) == sorted(resumed)
    for key in straight:
        np.testing.assert_array_equal(straight[key], resumed[key], err_msg=key)
    power = [k for k in carried if np.ndim(straight[k]) == 0]
    assert power and any(0 < straight[k] < 1 for k in power)


# ----------------------------------------------------------------------- head and protocol
def test_flatten_head_sees_the_whole_last_feature_map():
    flat = models.omniglot_conv4(5, filters=8, seed=0, head="flatten")
    mean = models.omniglot_conv4(5, filters=8, seed=0)
    assert flat.get_layer("logits").kernel.shape == (2 * 2 * 8, 5)
    assert mean.get_layer("logits").kernel.shape == (8, 5)
    with pytest.raises(ValueError, match="head must be one of.*'max'"):
        models.omniglot_conv4(5, head="max")


def _fake_omniglot(num_characters: int):
    from tfmeta.data import omniglot

    images = np.arange(num_characters * 2 * 3 * 3, dtype=np.uint8).reshape(
        num_characters, 2, 3, 3)
    names = [f"a/character{i}" for i in range(num_characters)]
    return omniglot.OmniglotData(images=images, alphabets=["a"] * num_characters,
                                 characters=names, background=np.ones(num_characters, bool),
                                 archives=["images_background"] * num_characters)


def test_reptile_split_is_1200_train_423_test_without_validation():
    from tfmeta.data import omniglot

    data = _fake_omniglot(1623)
    parts = {s: omniglot.split_indices(data, "reptile", s) for s in omniglot.SPLITS}
    assert {s: len(v) for s, v in parts.items()} == {"train": 1200, "validation": 0, "test": 423}
    assert not set(parts["train"]) & set(parts["test"])


def test_rotation_classes_are_the_four_rotations_of_each_character():
    from tfmeta.data import omniglot

    images = _fake_omniglot(3).images
    rotated = omniglot.with_rotations(images)
    assert rotated.shape == (12, 2, 3, 3)
    for c in range(3):
        for k in range(4):
            np.testing.assert_array_equal(rotated[4 * c + k], np.rot90(images[c], k, axes=(1, 2)))


def test_reptile_scheme_refuses_validation_runs():
    from tfmeta.run import config as config_lib

    c = config_lib.sibling_config(os.path.join(REPO, "configs", "x.py"),
                                  "omniglot_reptile.py").get_config("5way1shot")
    c.data.split_scheme = "reptile"
    c.train.eval_episodes = 10
    with pytest.raises(config_lib.ConfigError, match="'train.eval_episodes' is 10.*no validation"):
        config_lib.validate(c)
    c.train.eval_episodes, c.eval.split = 0, "validation"
    with pytest.raises(config_lib.ConfigError, match="'eval.split' is 'validation'"):
        config_lib.validate(c)


def test_mirrored_replicas_carry_the_same_state_as_one_device(tmp_path):
    """Under MirroredStrategy the carried state is the mean over every replica's tasks."""
    import json

    overrides = {"train.iterations": 6, "train.steps_per_loop": 3, "train.meta_batch_size": 4,
                 "train.eval_every": 0, "train.eval_episodes": 0, "train.log_every": 3,
                 "train.checkpoint_every": 6, "algorithm": "reptile", "inner.optimizer": "adam",
                 "inner.lr": 0.01, "inner.steps": 3, "inner.batch_size": 4,
                 "inner.shuffle_per_task": True, "inner.carry_optimizer_state": True,
                 "outer.optimizer": "sgd", "outer.lr": 1.0, "outer.schedule": "linear"}
    values = {}
    for strategy in ("default", "mirrored"):
        spec = {"config": f"{_SINE}:smoke", "overrides": overrides, "strategy": strategy,
                "logical_cpus": 2, "workdir": str(tmp_path / strategy)}
        proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "distributed_driver.py"),
                               json.dumps(spec)], capture_output=True, text=True, timeout=600,
                              env=subprocess_env(), cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1])["replicas"] == (
            1 if strategy == "default" else 2)
        reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(
            str(tmp_path / strategy / "checkpoints")))
        values[strategy] = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
                            if k.startswith(("model", "inner_loop"))
                            and k.endswith("VARIABLE_VALUE")}
    carried = [k for k in values["default"] if k.startswith("inner_loop")]
    assert len(carried) >= 4 and any(np.any(values["default"][k] != 0) for k in carried)
    assert sorted(values["default"]) == sorted(values["mirrored"])
    for key, value in values["default"].items():
        np.testing.assert_allclose(values["mirrored"][key], value, rtol=1e-5, atol=1e-7,
                                   err_msg=key)


def test_export_metadata_records_the_inner_schedule_and_carried_state():
    from tests.distributed_driver import load_config
    from tfmeta.run import exporter

    config = load_config(os.path.join(REPO, "configs", "omniglot_reptile.py") + ":5way1shot")
    meta = exporter.metadata_from_config(config, step=3, classification=True)
    assert meta["inner_shuffle_per_task"] is True and meta["inner_carry_optimizer_state"] is True
    assert meta["inner_optimizer"] == "adam" and meta["inner_batch_size"] == 10
