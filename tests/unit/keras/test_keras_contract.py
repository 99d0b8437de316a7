"""tfmeta.keras's contract with its users: what is refused (one line, nothing run or written), how
an export gets its input transform, and backups that survive a process killed while writing.

The models are tiny (conv4 with 4 filters on 12x12 images, first-order MAML so that no grouped
convolution gradient is needed on CPU) and train for two steps: the tests check plumbing, not
learning.
"""

from __future__ import annotations

import json
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfmeta
from tests import keras_driver
from tfmeta.run import config as config_lib
from tfmeta.base import errors
from tfmeta.run import exporter
from tfmeta.base.input_transform import InputTransform
from tfmeta.keras import (EpisodeError, MetaModel, MetaModelError, WeightsFileError, export,
                          export_metadata, write_file_atomically)

TASKS, WAYS, SHOTS, QUERIES, SIZE = (keras_driver.TASKS, keras_driver.WAYS, keras_driver.SHOTS,
                                     keras_driver.QUERIES, keras_driver.SIZE)
COLOUR = InputTransform(SIZE, 3, mean=(0.5, 0.45, 0.4), std=(0.25, 0.2, 0.3))


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text, text
    assert isinstance(error, errors.UserError)
    return text


def _pixels(rng: np.random.Generator, count: int, channels: int) -> np.ndarray:
    """What a client sends: decode_png / 255, at the model's size (so resizing is the identity)."""
    levels = rng.integers(0, 256, (count, SIZE, SIZE, channels))
    return (levels / 255).astype(np.float32)


def _episodes(transform: InputTransform, batches: int = 2, seed: int = 0) -> tf.data.Dataset:
    """Episode batches made as a data pipeline makes them: pixels, then the input transform."""
    rng = np.random.default_rng(seed)

    def part(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        x = _pixels(rng, batches * TASKS * WAYS * per_class, transform.channels)
        x = transform.apply(x).reshape(batches, TASKS, WAYS * per_class, SIZE, SIZE, -1)
        y = np.broadcast_to(np.repeat(np.arange(WAYS, dtype=np.int32), per_class),
                            (batches, TASKS, WAYS * per_class)).copy()
        return x.astype(np.float32), y

    (sx, sy), (qx, qy) = part(SHOTS), part(QUERIES)
    return tf.data.Dataset.from_tensor_slices(
        {"support_x": sx, "support_y": sy, "query_x": qx, "query_y": qy})


def _meta(channels: int = 1) -> MetaModel:
    model = tfmeta.conv4(WAYS, image_size=SIZE, channels=channels, filters=4, seed=0)
    meta = MetaModel(tfmeta.MAML(model, inner_lr=0.4, inner_steps=1, eval_inner_steps=2,
                                 first_order=True))
    meta.compile(optimizer=keras.optimizers.Adam(1e-2))
    return meta


@pytest.fixture(scope="module")
def trained():
    """A grayscale and a colour MetaModel, each trained two steps with fit."""
    grey, colour = _meta(1), _meta(3)
    grey.fit(_episodes(InputTransform(SIZE, 1)), epochs=1, verbose=0)
    colour.fit(_episodes(COLOUR), epochs=1, verbose=0)
    assert grey.meta_iteration == colour.meta_iteration == 2
    return {1: grey, 3: colour}


def _served_and_trained(path: str, meta: MetaModel, transform: InputTransform, channels: int):
    """Logits of the SavedModel fed pixels as a client feeds them, and of the in-process model
    on the same pixels through ``transform`` (adapted in the export's serving batch-norm mode)."""
    rng = np.random.default_rng(7)
    sx, qx = _pixels(rng, WAYS * 2, channels), _pixels(rng, 5, channels)
    sy = np.repeat(np.arange(WAYS, dtype=np.int32), 2)
    loaded = tf.saved_model.load(path)
    served = loaded.signatures["adapt_and_predict"](
        support_images=tf.constant(sx), support_labels=tf.constant(sy),
        query_images=tf.constant(qx))["logits"].numpy()
    algo = meta.algorithm
    trained = algo.adapt_and_predict(transform.apply(sx)[None], sy[None],
                                     transform.apply(qx)[None],
                                     bn_mode=exporter.serving_bn_mode(algo))[0].numpy()
    return served, trained


def _trainer_metadata(transform: InputTransform, step: int) -> dict:
    """What the trainer's export writes for a run of these settings and this transform."""
    config = config_lib.base_config()
    config.task = "images" if transform.channels == 3 else "omniglot"
    config.data.update(ways=WAYS, shots=SHOTS, queries=QUERIES, image_size=SIZE,
                       channels=transform.channels)
    return exporter.metadata_from_config(config, step=step, classification=True,
                                         transform=transform)


# --------------------------------------------------------------------------- export transforms
def test_colour_model_exports_with_its_transform_and_serves_the_trained_logits(trained, tmp_path):
    meta = trained[3]
    path = meta.export(str(tmp_path / "colour"), input_transform=COLOUR, shots=SHOTS,
                       queries=QUERIES)
    ours, theirs = exporter.read_metadata(path), _trainer_metadata(COLOUR, step=2)
    for key in (*exporter.TRANSFORM_FIELDS, "ways", "shots", "train_shots", "queries", "inputs",
                "task"):
        assert ours[key] == theirs[key], key
    assert exporter.transform_from_metadata(ours) == COLOUR
    served, want = _served_and_trained(path, meta, COLOUR, 3)
    np.testing.assert_allclose(served, want, atol=1e-5)


@pytest.mark.slow
def test_grayscale_model_of_plain_pixels_serves_the_trained_logits(trained, tmp_path):
    meta = trained[1]
    plain = InputTransform(SIZE, 1)
    path = meta.export(str(tmp_path / "grey"), input_transform="pixels")
    assert exporter.transform_from_metadata(exporter.read_metadata(path)) == plain
    served, want = _served_and_trained(path, meta, plain, 1)
    np.testing.assert_allclose(served, want, atol=1e-5)
    # What Omniglot's inversion would have served instead: visibly different logits.
    _, inverted = _served_and_trained(path, meta, exporter.omniglot_transform(SIZE), 1)
    assert np.abs(served - inverted).max() > 1e-3


@pytest.mark.parametrize("given, task, transform", [
    ("pixels", "images", InputTransform(SIZE, 1)),
    (InputTransform(SIZE, 1), "images", InputTransform(SIZE, 1)),
    ({"image_size": SIZE, "channels": 1}, "images", InputTransform(SIZE, 1)),
    ("omniglot", "omniglot", InputTransform(SIZE, 1, invert=True)),
])
def test_grayscale_metadata_states_the_given_transform(trained, given, task, transform):
    """What the graph applies to served pixels is the metadata's transform
    (:func:`tfmeta.run.exporter.transform_from_metadata`): the one given, as the trainer writes it."""
    ours = export_metadata(trained[1].algorithm, input_transform=given, step=2, shots=SHOTS,
                           queries=QUERIES)
    theirs = _trainer_metadata(transform, step=2)
    assert ours["task"] == task
    assert exporter.transform_from_metadata(ours) == transform
    for key in (*exporter.TRANSFORM_FIELDS, "ways", "shots", "train_shots", "queries", "inputs"):
        assert ours[key] == theirs[key], key


@pytest.mark.parametrize("channels, transform, pattern", [
    (1, None, r"needs input_transform=.*InputTransform.*'omniglot'.*'pixels'"),
    (1, "photos", r"input_transform='photos' is not a known name; allowed: .*'omniglot'"),
    (3, "omniglot", r"'omniglot' is grayscale, but the network .* takes 3 channels"),
    (3, InputTransform(SIZE, 1), r"is for \[12, 12, 1\] images, but the network .* takes "
                                 r"\[12, 12, 3\]"),
    (1, InputTransform(28, 1, invert=True), r"is for \[28, 28, 1\] images"),
    (3, {"image_size": SIZE, "channels": 3, "mean": [0.5]}, r"is not a valid transform"),
    (1, 0.5, r"input_transform is 0.5; allowed"),
])
def test_image_export_without_a_valid_transform_is_one_line_and_writes_nothing(
        trained, tmp_path, channels, transform, pattern):
    output = tmp_path / "export"
    with pytest.raises(exporter.ExportError, match=pattern) as e:
        trained[channels].export(str(output), input_transform=transform)
    _one_line(e.value)
    assert not output.exists() and os.listdir(tmp_path) == []


def test_a_transform_for_a_regressor_is_refused():
    meta = MetaModel(tfmeta.MAML(tfmeta.sinusoid_mlp(hidden=(8,), seed=0), inner_lr=0.01,
                                 inner_steps=1, loss="mse"))
    with pytest.raises(exporter.ExportError, match="input_transform is for image classifiers"):
        meta.export("/nonexistent/x", input_transform="pixels")


# --------------------------------------------------------------------------- bad inputs
def _with(dataset: tf.data.Dataset, **fns) -> tf.data.Dataset:
    return dataset.map(lambda b: {**b, **{k: fn(b[k]) for k, fn in fns.items()}})


@pytest.mark.parametrize("kind, pattern", [
    ("channels", r"fit: support_x holds \[height, width, channels\] examples of shape "
                 r"\[12, 12, 3\] .* the network takes \[12, 12, 1\]"),
    ("size", r"fit: support_x holds .* \[14, 14, 1\] .* the network takes \[12, 12, 1\]"),
    ("uint8", r"fit: support_x has dtype uint8; .*tf.cast\(x, tf.float32\) / 255"),
])
def test_fit_on_examples_the_network_does_not_take_is_one_line(kind, pattern):
    meta = _meta(1)
    data = _episodes(InputTransform(SIZE, 1))
    if kind == "channels":
        data = _with(data, support_x=lambda x: tf.tile(x, [1, 1, 1, 1, 3]),
                     query_x=lambda x: tf.tile(x, [1, 1, 1, 1, 3]))
    elif kind == "size":
        pad = [[0, 0], [0, 0], [1, 1], [1, 1], [0, 0]]
        data = _with(data, support_x=lambda x: tf.pad(x, pad), query_x=lambda x: tf.pad(x, pad))
    else:
        data = _with(data, support_x=lambda x: tf.cast(x * 255, tf.uint8),
                     query_x=lambda x: tf.cast(x * 255, tf.uint8))
    with pytest.raises(EpisodeError, match=pattern) as e:
        meta.fit(data, verbose=0)
    _one_line(e.value)
    assert meta.meta_iteration == 0
    for call in (meta.evaluate, meta.predict):
        with pytest.raises(EpisodeError, match=pattern.replace("fit", call.__name__)):
            call(data, verbose=0)


def test_missing_data_and_bad_counts_are_one_line(trained, tmp_path):
    meta = _meta(1)
    data = _episodes(InputTransform(SIZE, 1))
    for call in (meta.fit, meta.evaluate, meta.predict):
        with pytest.raises(EpisodeError, match=rf"{call.__name__}: no data given") as e:
            call(None, verbose=0)
        _one_line(e.value)
    # Keras would take steps_per_epoch=0 as "until the data runs out": forever on a stream.
    with pytest.raises(MetaModelError, match=r"steps_per_epoch=0; it must be a positive"):
        meta.fit(data.repeat(), steps_per_epoch=0, verbose=0)
    with pytest.raises(MetaModelError, match=r"epochs=-1; it must be a positive integer"):
        meta.fit(data, epochs=-1, verbose=0)
    with pytest.raises(MetaModelError, match=r"evaluate: steps=2.5"):
        meta.evaluate(data, steps=2.5, verbose=0)
    batch = next(iter(data))
    wrong = {**batch, "support_x": tf.zeros([TASKS, WAYS * SHOTS, SIZE + 2, SIZE + 2, 1])}
    with pytest.raises(EpisodeError, match=r"call: support_x holds .* \[14, 14, 1\]") as e:
        meta(wrong)
    _one_line(e.value)
    assert meta.meta_iteration == 0
    for kwargs, pattern in (({"output": None}, r"output is None; give the path"),
                            ({"shots": "1"}, r"shots='1'; it must be an integer >= 1"),
                            ({"max_inner_steps": 0}, r"max_inner_steps=0"),
                            ({"step": -1}, r"step=-1; it must be an integer >= 0")):
        kwargs = {"output": str(tmp_path / "e"), "input_transform": "pixels", **kwargs}
        with pytest.raises(exporter.ExportError, match=pattern) as e:
            export(trained[1], **kwargs)
        _one_line(e.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("empty", ["take", "filter"])
def test_empty_datasets_are_refused_and_train_nothing(empty):
    """A dataset known to be empty is refused before running; one of unknown size (a filter)
    after its first epoch, with the counters unchanged."""
    meta = _meta(1)
    data = _episodes(InputTransform(SIZE, 1))
    data = data.take(0) if empty == "take" else data.filter(lambda b: False)
    weights = [np.array(w) for w in meta.get_weights()]
    with pytest.raises(EpisodeError, match=r"fit: the dataset is empty") as e:
        meta.fit(data, epochs=2, verbose=0)
    _one_line(e.value)
    assert meta.meta_iteration == 0 and int(meta.optimizer.iterations.numpy()) == 0
    for a, b in zip(meta.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(EpisodeError, match=r"evaluate: the dataset is empty"):
        meta.evaluate(data, verbose=0)
    with pytest.raises(EpisodeError, match=r"predict: the dataset is empty"):
        meta.predict(data, verbose=0)
    with pytest.raises(EpisodeError, match=r"validation_data: the dataset is empty"):
        meta.fit(_episodes(InputTransform(SIZE, 1)), validation_data=data, verbose=0)


def test_a_dataset_of_unknown_size_counts_only_the_steps_it_ran():
    meta = _meta(1)
    meta.fit(_episodes(InputTransform(SIZE, 1)).filter(lambda b: True), epochs=1, verbose=0)
    assert meta.meta_iteration == 2 and int(meta.optimizer.iterations.numpy()) == 2


def test_a_mixed_precision_network_is_refused_in_one_line():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = tfmeta.conv4(WAYS, image_size=SIZE, filters=4, seed=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    with pytest.raises(MetaModelError, match=r"dtype policy 'mixed_float16'.*"
                                             r"set_global_policy\('float32'\)") as e:
        MetaModel(tfmeta.MAML(model, inner_lr=0.4, inner_steps=1))
    _one_line(e.value)


# --------------------------------------------------------------------------- weights files
def test_save_and_load_weights_refusals_are_one_line(trained, tmp_path):
    meta = trained[1]
    with pytest.raises(MetaModelError, match=r"must end in \.weights\.h5"):
        meta.save_weights(str(tmp_path / "w.h5"))
    path = str(tmp_path / "w.weights.h5")
    meta.save_weights(path)
    with pytest.raises(MetaModelError, match="exists; pass overwrite=True"):
        meta.save_weights(path, overwrite=False)
    assert os.listdir(tmp_path) == ["w.weights.h5"]  # no temporary left
    meta.save_weights(path)  # replaced atomically
    assert os.listdir(tmp_path) == ["w.weights.h5"]
    with pytest.raises(WeightsFileError, match="does not exist") as e:
        meta.load_weights(str(tmp_path / "nothing.weights.h5"))
    _one_line(e.value)
    with pytest.raises(WeightsFileError, match="directory .* does not exist; create it"):
        meta.save_weights(str(tmp_path / "no" / "w.weights.h5"))
    (tmp_path / "m.keras").write_text("x")
    with pytest.raises(MetaModelError, match="is not a .weights.h5 file"):
        meta.load_weights(str(tmp_path / "m.keras"))
    os.chmod(tmp_path, 0o500)
    try:
        if not os.access(tmp_path, os.W_OK):  # (root may write anyway)
            with pytest.raises(WeightsFileError, match="cannot write .* unchanged") as e:
                meta.save_weights(path)
            _one_line(e.value)
    finally:
        os.chmod(tmp_path, 0o700)


@pytest.mark.parametrize("damage", ["truncated", "zeroed"])
def test_a_damaged_weights_file_loads_nothing_and_is_one_line(tmp_path, damage):
    saved = _meta(1)
    path = str(tmp_path / "w.weights.h5")
    saved.save_weights(path)
    data = bytearray(open(path, "rb").read())
    if damage == "truncated":
        data = data[:len(data) // 2]
    else:  # structure damaged in the middle: h5py opens it, Keras finds layers missing
        data[len(data) // 2:len(data) // 2 + 200] = bytes(200)
    with open(path, "wb") as f:
        f.write(data)
    meta = _meta(1)
    meta.set_weights([w + 1 for w in meta.get_weights()])  # other values than the file's
    before = [np.array(w) for w in meta.get_weights()]
    with pytest.raises((WeightsFileError, MetaModelError), match=re.escape(repr(path))) as e:
        meta.load_weights(path)
    _one_line(e.value)
    for a, b in zip(meta.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_write_atomically_keeps_the_old_file_and_removes_dead_writers_temporaries(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")
    dead = tmp_path / f".tfmeta-tmp-{os.uname().nodename}-999999999-0123abcd.f.json"
    alive = tmp_path / f".tfmeta-tmp-{os.uname().nodename}-{os.getppid()}-0123abcd.f.json"
    dead.write_text("half")
    alive.write_text("being written")

    def fail(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("ha")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_file_atomically(str(path), fail)
    assert path.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == sorted(["f.json", alive.name])
    write_file_atomically(str(path), lambda tmp: open(tmp, "w").write("new"))
    assert path.read_text() == "new"


# --------------------------------------------------------------------------- backups
class _Interrupt(Exception):
    pass


def _sine_meta() -> MetaModel:
    model = tfmeta.sinusoid_mlp(hidden=(8,), seed=0)
    meta = MetaModel(tfmeta.MAML(model, inner_lr=0.01, inner_steps=1, loss="mse"))
    meta.compile(optimizer=keras.optimizers.Adam(1e-2), steps_per_execution=2)
    return meta


def _sine_fit(meta: MetaModel, backup_dir, **backup) -> keras.callbacks.History:
    stream = tfmeta.sinusoid.task_dataset(k_support=5, k_query=5, seed=0, batch_size=4)
    callback = keras.callbacks.BackupAndRestore(str(backup_dir), save_freq=2, **backup)
    return meta.fit(stream, epochs=3, steps_per_epoch=6, verbose=0, callbacks=[callback])


def _interrupt_a_save(monkeypatch, at: int) -> list[int]:
    """Keras' weights writer, stopped halfway through its ``at``-th file (as SIGKILL would);
    returns the list of the meta-iterations of the files it wrote whole."""
    write, calls, complete = keras.Model.save_weights, [0], []

    def half_written(self, filepath, *args, **kwargs):
        write(self, filepath, *args, **kwargs)
        calls[0] += 1
        if calls[0] < at:
            complete.append(self.meta_iteration)
        if calls[0] == at:
            data = open(filepath, "rb").read()
            with open(filepath, "wb") as f:
                f.write(data[:len(data) // 2])
            raise _Interrupt

    monkeypatch.setattr(keras.Model, "save_weights", half_written)
    return complete


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    meta = _sine_meta()
    _sine_fit(meta, tmp_path_factory.mktemp("backup"))
    assert meta.meta_iteration == 18
    return [np.array(w) for w in meta.get_weights()]


def test_a_backup_interrupted_while_written_resumes_from_the_last_complete_one(
        tmp_path, monkeypatch, uninterrupted):
    backup = tmp_path / "backup"
    with monkeypatch.context() as patch:
        complete = _interrupt_a_save(patch, at=4)  # in the second epoch
        with pytest.raises(_Interrupt):
            _sine_fit(_sine_meta(), backup)
    probe = _sine_meta()
    probe.load_weights(str(backup / "latest.weights.h5"))  # whole, not half-written
    assert len(complete) == 3 and probe.meta_iteration == complete[-1] > 6
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 1
    resumed = _sine_meta()
    _sine_fit(resumed, backup)
    assert resumed.meta_iteration == 18
    for a, b in zip(resumed.get_weights(), uninterrupted):
        np.testing.assert_array_equal(a, b)


def _interrupted_backup(tmp_path, monkeypatch, **backup):
    backup_dir = tmp_path / "backup"
    with monkeypatch.context() as patch:
        _interrupt_a_save(patch, at=4)
        with pytest.raises(_Interrupt):
            _sine_fit(_sine_meta(), backup_dir, **backup)
    return backup_dir


@pytest.mark.parametrize("damaged", ["latest.weights.h5", "training_metadata.json"])
def test_a_damaged_backup_is_one_line_naming_it_and_the_repair(tmp_path, monkeypatch, damaged):
    backup = _interrupted_backup(tmp_path, monkeypatch)
    path = backup / damaged
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 3])
    meta = _sine_meta()
    with pytest.raises(WeightsFileError, match=rf"backup file {re.escape(repr(str(path)))} is "
                                               rf"damaged .*delete the backup directory "
                                               rf"{re.escape(repr(str(backup)))}") as e:
        _sine_fit(meta, backup)
    _one_line(e.value)
    assert meta.meta_iteration == 0


def test_a_damaged_backup_falls_back_to_the_previous_one(tmp_path, monkeypatch, uninterrupted):
    backup = _interrupted_backup(tmp_path, monkeypatch, double_checkpoint=True)
    path = backup / "latest.weights.h5"
    path.write_bytes(path.read_bytes()[:100])
    resumed = _sine_meta()
    _sine_fit(resumed, backup, double_checkpoint=True)
    assert resumed.meta_iteration == 18
    for a, b in zip(resumed.get_weights(), uninterrupted):
        np.testing.assert_array_equal(a, b)
