"""tfmeta.keras.MetaModel: Keras fit() gives tfmeta's numbers, with Keras' callbacks and strategies.

Tolerances: in float64 a fit step and the algorithm's meta_step run the same ops, eagerly or in a
graph, so parameters agree to round-off (rtol 1e-10); XLA and multi-step executions reorder
float sums, which the same bound covers. Distributed runs sum per-replica meta-gradients, which
changes only the summation order.

Runs in processes of their own (mirrored and multi-worker strategies, exports read without tfmeta,
the example script) are in tests/e2e/test_keras_runs.py.
"""

from __future__ import annotations

import csv
import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfmeta
from tests import keras_driver
from tests.helpers import REPO
from tfmeta.base import errors, signatures
from tfmeta.run import exporter
from tfmeta.core import functional
from tfmeta.keras import (AlgorithmTypeError, EpisodeError, MetaModel, MetaModelError,
                          export)

RTOL, ATOL = 1e-10, 1e-12
WAYS, SIZE = keras_driver.WAYS, keras_driver.SIZE


def _dataset(batches: int, *, seed: int = 0, dtype: str = "float32") -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(keras_driver.episodes(batches, seed=seed,
                                                                    dtype=dtype))


def _batches(batches: int, **kwargs) -> list[dict[str, tf.Tensor]]:
    return list(_dataset(batches, **kwargs))


def _conv4():
    return tfmeta.omniglot_conv4(WAYS, image_size=SIZE, filters=4, seed=0)


def _algorithm(name: str):
    model = _conv4()
    if name == "maml":
        return tfmeta.MAML(model, inner_lr=0.4, inner_steps=1, eval_inner_steps=2)
    if name == "mamlpp":  # learned per-layer per-step rates, per-step batch norm
        return tfmeta.MAMLpp(model, inner_lr=0.1, inner_steps=2, multi_step_loss=False,
                             bn_mode="support")
    if name == "mamlpp_msl":
        # And the multi-step loss, annealed over epochs of 2 iterations and off after 2.
        return tfmeta.MAMLpp(model, inner_lr=0.1, inner_steps=2, msl_epochs=1,
                             iterations_per_epoch=2, bn_mode="support")
    return tfmeta.Reptile(model, inner_lr=0.05, inner_steps=3, inner_optimizer="adam",
                          inner_batch_size=4, shuffle_per_task=True, carry_optimizer_state=True,
                          outer_step_size=0.5)


def _weights(meta: MetaModel) -> list[np.ndarray]:
    return [np.asarray(w.numpy()) for w in meta.weights]


def _assert_same(a: list[np.ndarray], b: list[np.ndarray], rtol=RTOL, atol=ATOL) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=f"weight {i}")


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text, text
    return text


# --------------------------------------------------------------------------- same numbers
@pytest.mark.parametrize("name", ["maml", "mamlpp", "reptile",
                                  pytest.param("mamlpp_msl", marks=pytest.mark.slow)])
def test_fit_equals_meta_step_in_float64(float64, name):
    """N fit steps == N meta_step calls + the optimizer + the state update, on the same batches.

    MAML: second order through batch norm. MAML++: learned rates and per-step batch norm are
    trained (``mamlpp_msl``: with the multi-step loss, switching off inside the run after 2
    iterations). Reptile: inner Adam with its state carried in state variables.
    """
    steps = 3
    meta = MetaModel(_algorithm(name))
    meta.compile(optimizer=keras.optimizers.SGD(0.1) if name != "reptile" else None)
    history = meta.fit(_dataset(steps, dtype="float64"), epochs=1, verbose=0)
    assert meta.meta_iteration == steps
    assert isinstance(meta.optimizer, keras.optimizers.SGD)

    algo = _algorithm(name)
    lr = 0.5 if name == "reptile" else 0.1  # Reptile's default: SGD with the meta step size
    optimizer = keras.optimizers.SGD(lr)
    optimizer.build(algo.meta_variables)
    losses = []
    for i, batch in enumerate(_batches(steps, dtype="float64")):
        phase = {}
        if name == "mamlpp_msl":  # as tfmeta.run.trainer.phase computes it
            phase = {"first_order": False, "multi_step_loss": i < 2, "iteration": i}
        step = algo.meta_step(batch, **phase)
        optimizer.apply_gradients(zip(step.grads, algo.meta_variables))
        functional.assign_floating(algo.state_variables, step.non_trainable)
        losses.append(float(step.metrics["loss"]))
    if name.startswith("mamlpp"):  # learned rates, per-step batch-norm weights: meta-parameters
        assert len(algo.meta_variables) > len(algo.model.trainable_variables)
    _assert_same(_weights(meta)[:-1], [np.asarray(v.numpy()) for v in
                                       [*algo.meta_variables, *algo.state_variables]])
    np.testing.assert_allclose(history.history["loss"], [np.mean(losses)], rtol=1e-6)


def test_fit_equals_meta_step_with_a_smaller_last_batch(float64):
    """Without drop_remainder the task count is known only at run time: still the same numbers."""
    data = keras_driver.episodes(1, dtype="float64")
    flat = {k: v[0] for k, v in data.items()}  # 4 tasks
    flat = {k: np.concatenate([v, v[:1]]) for k, v in flat.items()}  # 5 tasks: batches 2, 2, 1
    dataset = tf.data.Dataset.from_tensor_slices(flat).batch(2)
    assert dataset.element_spec["support_x"].shape[0] is None
    meta = MetaModel(_algorithm("maml"))
    meta.compile(optimizer=keras.optimizers.SGD(0.1))
    meta.fit(dataset, verbose=0)
    algo = _algorithm("maml")
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(algo.meta_variables)
    for batch in dataset:
        step = algo.meta_step(batch)
        optimizer.apply_gradients(zip(step.grads, algo.meta_variables))
        functional.assign_floating(algo.state_variables, step.non_trainable)
    assert meta.meta_iteration == 3
    _assert_same(_weights(meta)[:-1], [np.asarray(v.numpy()) for v in
                                       [*algo.meta_variables, *algo.state_variables]])


def _sine_maml():
    return tfmeta.MAML(tfmeta.sinusoid_mlp(hidden=(8,), seed=0), inner_lr=0.01, inner_steps=1,
                       loss="mse")


def _sine_stream(batch: int = 4) -> tf.data.Dataset:
    return tfmeta.sinusoid.task_dataset(k_support=5, k_query=5, seed=0, batch_size=batch)


@pytest.mark.parametrize("model", ["mlp", pytest.param("conv4_bn", marks=pytest.mark.slow)])
def test_jit_compile_and_steps_per_execution_equal_the_default(float64, model):
    """What TPUStrategy needs: the train step compiles with XLA (static shapes, no host round
    trips inside it), and several steps run in one execution; the derivative-order switch
    (first order for 2 iterations) happens inside the first execution."""
    build = _sine_maml if model == "mlp" else lambda: _algorithm("maml")
    data = (_sine_stream().take(4).map(lambda b: {k: tf.cast(v, tf.float64)
                                                   for k, v in b.items()})
            if model == "mlp" else _dataset(4, dtype="float64"))
    results = {}
    for jit, k in ((False, 1), (True, 4)):
        meta = MetaModel(build(), first_order_iterations=2)
        meta.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=jit, steps_per_execution=k)
        assert meta.jit_compile is jit
        history = meta.fit(data, epochs=1, verbose=0)
        assert meta.meta_iteration == 4
        results[(jit, k)] = (_weights(meta), history.history)
    default, jit = results[(False, 1)], results[(True, 4)]
    _assert_same(jit[0], default[0])
    for name, values in default[1].items():
        np.testing.assert_allclose(jit[1][name], values, rtol=1e-6, err_msg=name)
    # The first-order phase is real: the same run in second order all along differs.
    second = MetaModel(build())
    second.compile(optimizer=keras.optimizers.SGD(0.1))
    second.fit(data, epochs=1, verbose=0)
    assert not np.allclose(_weights(second)[0], default[0][0], rtol=1e-8)


@pytest.mark.parametrize("algorithm", ["maml", "mamlpp"])
def test_trainer_and_fit_reach_the_same_parameters(tmp_path, algorithm):
    """The trainer and fit on the trainer's own stream: the same model after 4 iterations.

    ``mamlpp``: derivative-order annealing (first order for 1 iteration) and the multi-step loss
    (annealed over epochs of 1 iteration, off after 3), so both switch inside the run, and inside
    one compiled call of each (steps_per_loop 2, steps_per_execution 2).
    """
    from tests.distributed_driver import load_config, synthetic_omniglot
    from tfmeta.run import experiment, trainer

    config = load_config(os.path.join(REPO, "configs", "omniglot_maml.py") + ":smoke")
    config.update_from_flattened_dict({
        "data.image_size": 12, "model.filters": 4, "data.queries": 2, "train.iterations": 4,
        "train.steps_per_loop": 2, "train.eval_every": 0, "train.eval_episodes": 0,
        "train.checkpoint_every": 4, "train.meta_batch_size": 4, "outer.optimizer": "sgd",
        "outer.lr": 0.1, "inner.bn_mode": "transductive"})
    if algorithm == "mamlpp":
        config.algorithm = "mamlpp"
        config.inner.steps = 2
        config.update_from_flattened_dict({
            "mamlpp.first_order_iterations": 1, "mamlpp.msl_epochs": 3,
            "mamlpp.iterations_per_epoch": 1})
        assert trainer.phase(config, 0)[1] == 1 and trainer.phase(config, 1)[1] == 3
    data = synthetic_omniglot(12)
    strategy = tf.distribute.get_strategy()
    exp = experiment.build_experiment(config, strategy, data=data)
    trainer.run(exp, str(tmp_path / "run"), final_evaluation=False)
    ours = experiment.build_experiment(config, strategy, data=data)
    initial = _weights(MetaModel(ours.algorithm))
    meta = MetaModel(ours.algorithm,
                     first_order_iterations=config.mamlpp.first_order_iterations)
    meta.compile(optimizer=ours.optimizer, steps_per_execution=2)
    stream = ours.source.make_dataset("train", 0, config.train.meta_batch_size, config.seed, 0)
    meta.fit(stream, epochs=2, steps_per_epoch=2, verbose=0)
    theirs = [*exp.algorithm.meta_variables, *exp.algorithm.state_variables]
    _assert_same(_weights(meta)[:-1], [np.asarray(v.numpy()) for v in theirs],
                 rtol=1e-5, atol=1e-6)
    assert not np.allclose(_weights(meta)[0], initial[0])


# --------------------------------------------------------------------------- strategies


def test_built_outside_the_strategy_scope_is_a_clear_error():
    model = _conv4()
    algo = tfmeta.MAML(model, inner_lr=0.4, inner_steps=1)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope(), pytest.raises(MetaModelError, match="inside the same strategy"):
        MetaModel(algo)


# --------------------------------------------------------------------------- callbacks
def test_callbacks_fire_with_the_documented_metric_names(tmp_path):
    names = {"loss", "loss_pre", "accuracy", "accuracy_pre"}
    seen = {"batch": [], "epoch": [], "test_batch": []}

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen["batch"].append(set(logs))

        def on_test_batch_end(self, batch, logs=None):
            seen["test_batch"].append(set(logs))

        def on_epoch_end(self, epoch, logs=None):
            seen["epoch"].append(dict(logs))

    meta = MetaModel(_algorithm("maml"))
    meta.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=2)
    best = str(tmp_path / "best.weights.h5")
    callbacks = [
        keras.callbacks.CSVLogger(str(tmp_path / "log.csv")),
        keras.callbacks.TensorBoard(str(tmp_path / "tb")),
        keras.callbacks.ModelCheckpoint(best, monitor="val_accuracy", mode="max",
                                        save_best_only=True, save_weights_only=True),
        # min_delta larger than any change: stops after the second epoch, restoring the first.
        keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=0,
                                      min_delta=2.0, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=0,
                                          min_delta=1e9),
        Record(),
    ]
    history = meta.fit(_dataset(4).repeat(), epochs=5, steps_per_epoch=2,
                       validation_data=_dataset(2, seed=1), validation_steps=2,
                       callbacks=callbacks, verbose=0)
    expected = names | {f"val_{n}" for n in names}
    assert expected <= set(history.history) <= expected | {"learning_rate"}
    assert len(history.history["loss"]) == 2  # EarlyStopping
    assert meta.meta_iteration == 2, "restore_best_weights restores the first epoch's model"
    assert seen["batch"] and all(keys == names for keys in seen["batch"])
    assert seen["test_batch"] and all(keys == names for keys in seen["test_batch"])
    for logs in seen["epoch"]:
        assert expected <= set(logs)
        assert 0 <= logs["accuracy"] <= 1 and logs["loss"] > 0
    # ReduceLROnPlateau halved the learning rate after the second epoch.
    np.testing.assert_allclose(float(meta.optimizer.learning_rate.numpy()), 1e-3 / 2, rtol=1e-6)
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and expected <= set(rows[0])
    events = glob.glob(str(tmp_path / "tb" / "*" / "events.out.tfevents.*"))
    tags = set()
    for path in events:
        for event in tf.compat.v1.train.summary_iterator(path):
            tags |= {v.tag for v in event.summary.value}
    assert {"epoch_loss", "epoch_accuracy", "epoch_accuracy_pre"} <= tags
    # The best checkpoint loads into a MetaModel built the same way.
    other = MetaModel(_algorithm("maml"))
    other.compile()
    other.load_weights(best)
    assert other.meta_iteration == 2


def test_regression_logs_loss_and_loss_pre_only():
    model = tfmeta.sinusoid_mlp(hidden=(8,), seed=0)
    meta = MetaModel(tfmeta.MAML(model, inner_lr=0.01, inner_steps=1, loss="mse"))
    meta.compile()
    stream = tfmeta.sinusoid.task_dataset(k_support=5, k_query=5, seed=0, batch_size=4)
    history = meta.fit(stream, epochs=1, steps_per_epoch=2, validation_data=stream,
                       validation_steps=1, verbose=0)
    assert set(history.history) == {"loss", "loss_pre", "val_loss", "val_loss_pre"}


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("save_freq", [2, "epoch"])
def test_backup_and_restore_mid_epoch_resumes_to_the_same_weights(tmp_path, save_freq):
    """Interrupted in the middle of epoch 2 and restarted with the same fit call, the run ends
    with exactly the weights of an uninterrupted run (same batches, same number of steps)."""
    stream = tfmeta.sinusoid.task_dataset(k_support=5, k_query=5, seed=0, batch_size=4)

    def build():
        model = tfmeta.sinusoid_mlp(hidden=(8,), seed=0)
        meta = MetaModel(tfmeta.MAML(model, inner_lr=0.01, inner_steps=1, loss="mse"))
        meta.compile(optimizer=keras.optimizers.Adam(1e-2), steps_per_execution=2)
        return meta

    def fit(meta, *callbacks):
        backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), save_freq=save_freq)
        return meta.fit(stream, epochs=3, steps_per_epoch=6, verbose=0,
                        callbacks=[backup, *callbacks])

    class InterruptMidEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 3:
                raise _Interrupt

    uninterrupted = build()
    fit(uninterrupted)
    assert uninterrupted.meta_iteration == 18
    with pytest.raises(_Interrupt):
        fit(build(), InterruptMidEpoch())
    resumed = build()
    history = fit(resumed)
    assert resumed.meta_iteration == 18
    assert len(history.history["loss"]) == 2  # epochs 2 and 3
    _assert_same(_weights(resumed), _weights(uninterrupted), rtol=0, atol=0)
    assert int(resumed.optimizer.iterations.numpy()) == 18


# --------------------------------------------------------------------------- steps, saving
def test_evaluate_and_predict_are_the_algorithms():
    algo = _algorithm("maml")
    meta = MetaModel(algo)
    meta.compile()
    dataset = _dataset(1)
    logs = meta.evaluate(dataset, return_dict=True, verbose=0)
    per_task = {k: np.concatenate([algo.evaluate(b)[k].numpy() for b in dataset])
                for k in algo.metric_names}
    for key, name in (("accuracy_post", "accuracy"), ("accuracy_pre", "accuracy_pre"),
                      ("loss", "loss"), ("loss_pre", "loss_pre")):
        np.testing.assert_allclose(logs[name], per_task[key].mean(), rtol=1e-5)
    outputs = meta.predict(dataset.map(lambda b: {k: b[k] for k in
                                                  ("support_x", "support_y", "query_x")}),
                           verbose=0)
    expected = np.concatenate([algo.adapt_and_predict(b["support_x"], b["support_y"],
                                                      b["query_x"]).numpy() for b in dataset])
    assert outputs.shape == (4, WAYS * keras_driver.QUERIES, WAYS)
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(meta(next(iter(dataset))), expected, rtol=1e-5, atol=1e-6)


def test_weights_hold_learned_rates_per_step_bn_and_the_counter(tmp_path):
    meta = MetaModel(_algorithm("mamlpp"))
    meta.compile(optimizer=keras.optimizers.Adam(1e-2))
    algo = meta.algorithm
    assert meta.trainable_weights == algo.meta_variables
    assert meta.non_trainable_weights[:-1] == algo.state_variables
    meta.fit(_dataset(2), epochs=1, verbose=0)
    path = str(tmp_path / "m.weights.h5")
    meta.save_weights(path)
    other = MetaModel(_algorithm("mamlpp"))
    other.compile(optimizer=keras.optimizers.Adam(1e-2))
    other.load_weights(path)
    _assert_same(_weights(other), _weights(meta), rtol=0, atol=0)
    assert other.meta_iteration == 2
    # The optimizer's state travels too (BackupAndRestore relies on it).
    _assert_same([np.asarray(v) for v in other.optimizer.variables],
                 [np.asarray(v) for v in meta.optimizer.variables], rtol=0, atol=0)
    fresh = MetaModel(_algorithm("mamlpp"))
    fresh.set_weights(meta.get_weights())
    _assert_same(_weights(fresh), _weights(meta), rtol=0, atol=0)
    with pytest.raises(MetaModelError, match=r"\.keras format") as e:
        meta.save(str(tmp_path / "m.keras"))
    _one_line(e.value)
    with pytest.raises(MetaModelError, match="another algorithm") as e:
        reptile = MetaModel(_algorithm("reptile"))
        reptile.compile()
        reptile.load_weights(path)


# --------------------------------------------------------------------------- bad input
def _bad(kind: str):
    data = keras_driver.episodes(1)
    if kind == "missing":
        del data["query_y"]
    elif kind == "counts":
        data["support_y"] = data["support_y"][..., :-1]
    elif kind == "labels":
        data["query_y"][0, 0, 1] = 7
    elif kind == "float_labels":
        data["support_y"] = data["support_y"].astype(np.float32)
    return tf.data.Dataset.from_tensor_slices(data)


@pytest.mark.parametrize("kind, pattern", [
    ("missing", r"missing \['query_y'\]"),
    ("counts", r"support_x has 6 examples per task but support_y has 5"),
    ("labels", r"query_y holds labels outside \[0, 3\).*from 0 to 7"),
    ("float_labels", r"support_y has dtype float32"),
])
def test_bad_episodes_are_one_line_user_errors(kind, pattern):
    meta = MetaModel(_algorithm("maml"))
    meta.compile()
    with pytest.raises(EpisodeError, match=pattern) as e:
        meta.fit(_bad(kind), verbose=0)
    assert isinstance(e.value, errors.UserError) and isinstance(e.value, ValueError)
    _one_line(e.value)
    if kind == "labels":
        with pytest.raises(EpisodeError, match=r"evaluate: query_y holds labels"):
            meta.evaluate(_bad(kind), verbose=0)


def test_misuse_is_a_one_line_user_error():
    model = _conv4()
    with pytest.raises(AlgorithmTypeError, match="got the Keras model") as e:
        MetaModel(model)
    assert isinstance(e.value, TypeError) and isinstance(e.value, errors.UserError)
    _one_line(e.value)
    with pytest.raises(AlgorithmTypeError, match="got str 'maml'"):
        MetaModel("maml")
    with pytest.raises(MetaModelError, match="Reptile here has no second order"):
        MetaModel(_algorithm("reptile"), first_order_iterations=10)
    meta = MetaModel(_algorithm("maml"))
    with pytest.raises(MetaModelError, match="loss='mse'") as e:
        meta.compile(loss="mse")
    _one_line(e.value)
    meta.compile()
    with pytest.raises(EpisodeError, match="y must be None"):
        meta.fit(_dataset(1), y=np.zeros(4))
    with pytest.raises(EpisodeError, match="must be a dict"):
        meta.fit(tf.data.Dataset.from_tensor_slices(np.zeros((2, 4, 3))))


# --------------------------------------------------------------------------- export


def _trained_experiment():
    """A tiny experiment of the smoke config (synthetic images), trained 2 steps with fit."""
    from tests.distributed_driver import load_config, synthetic_omniglot
    from tfmeta.run import experiment

    config = load_config(os.path.join(REPO, "configs", "omniglot_maml.py") + ":smoke")
    config.update_from_flattened_dict({"data.image_size": SIZE, "model.filters": 4,
                                       "train.meta_batch_size": 4})
    exp = experiment.build_experiment(config, tf.distribute.get_strategy(),
                                   data=synthetic_omniglot(SIZE))
    meta = MetaModel(exp.algorithm)
    meta.compile(optimizer=exp.optimizer)
    meta.fit(exp.source.make_dataset("train", 0, 4, config.seed, 0), epochs=1,
             steps_per_epoch=2, verbose=0)
    exp.step.assign(meta.meta_iteration)
    return exp, meta


def _export_like_the_trainer(meta: MetaModel, config, path: str) -> str:
    return meta.export(path, input_transform="omniglot", shots=config.data.shots,
                       queries=config.data.queries, split_scheme=config.data.split_scheme,
                       subset=config.data.subset)


def _episode_images(ways: int = 5, queries: int = 4):
    rng = np.random.default_rng(5)
    sx = np.round(rng.uniform(size=(ways, SIZE, SIZE, 1)) * 255).astype(np.float32) / 255
    qx = np.round(rng.uniform(size=(queries, SIZE, SIZE, 1)) * 255).astype(np.float32) / 255
    return sx, np.arange(ways, dtype=np.int32), qx


@pytest.mark.slow
def test_fit_trained_model_answers_like_the_trainers_export(tmp_path):
    """The trainer's export and ours of the same parameters: same signatures, same answers."""
    exp, meta = _trained_experiment()
    theirs = exporter.export_experiment(exp, str(tmp_path / "trainer"))
    ours = _export_like_the_trainer(meta, exp.config, str(tmp_path / "keras"))
    a, b = tf.saved_model.load(theirs), tf.saved_model.load(ours)
    assert set(a.signatures) == set(b.signatures)
    sx, sy, qx = _episode_images()
    inputs = dict(support_images=sx, support_labels=sy, query_images=qx)
    for name in (signatures.ADAPT, signatures.TRANSDUCTIVE, signatures.PREDICT):
        args = {"query_images": qx} if name == signatures.PREDICT else inputs
        np.testing.assert_array_equal(a.signatures[name](**args)["logits"],
                                      b.signatures[name](**args)["logits"])


# --------------------------------------------------------------------------- the example
