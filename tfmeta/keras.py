"""Meta-training with Keras' ``compile()`` and ``fit()``: a tfmeta algorithm as a ``keras.Model``.

    import keras
    import tfmeta
    from tfmeta.keras import MetaModel

    model = tfmeta.omniglot_conv4(num_classes=5)
    meta = MetaModel(tfmeta.MAML(model, inner_lr=0.4, inner_steps=1, eval_inner_steps=3))
    meta.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=10)
    meta.fit(episodes, epochs=20, steps_per_epoch=100, validation_data=val_episodes,
             validation_steps=25, callbacks=[keras.callbacks.BackupAndRestore("/tmp/backup")])
    meta.export("/tmp/maml_export", input_transform="omniglot")  # as ``tfmeta.train`` writes

Data: any dataset whose elements are episode batches, dicts with ``support_x [tasks, S, ...]``,
``support_y [tasks, S]``, ``query_x [tasks, Q, ...]`` and ``query_y [tasks, Q]`` (the leading
axis is the tasks of a meta-batch), for example :func:`tfmeta.data.episodes.episode_dataset` or
:func:`tfmeta.data.sinusoid.task_dataset` with ``batch_size``. Labels travel inside the episodes, so
``fit`` takes no ``y``.

What each step does:

* ``train_step``: one meta-iteration, exactly the algorithm's ``meta_step`` on the batch (under a
  strategy on each replica's share, divided by the *global* number of tasks); the compiled
  optimizer applies the meta-gradients to ``algorithm.meta_variables`` (which include learned
  inner learning rates and per-step batch-norm weights) and the algorithm's state variables
  (batch-norm statistics, per-step statistics, Reptile's carried Adam state) take the mean of the
  tasks' values over all replicas, as in :mod:`tfmeta.run.trainer`.
* ``test_step``: ``algorithm.evaluate``: adaptation with the evaluation inner steps and the
  algorithm's batch-norm mode, metrics after (and before) adaptation.
* ``predict_step`` (and ``meta_model(batch)``): ``algorithm.adapt_and_predict``: the outputs of
  each episode's queries after adapting to its support set, ``[tasks, Q, ...]``.

Logged metrics (per epoch, a mean over tasks; ``val_`` prefixed for validation data): ``loss``
(query loss after adaptation, the meta-objective for MAML), ``loss_pre`` (before adaptation), and
for classification ``accuracy`` (after adaptation) and ``accuracy_pre``.

Weights. ``trainable_weights`` are exactly ``algorithm.meta_variables`` and
``non_trainable_weights`` ``algorithm.state_variables`` plus the meta-iteration counter, so the
optimizer, ``get_weights``/``set_weights`` (EarlyStopping's ``restore_best_weights``) and
``save_weights``/``load_weights`` (ModelCheckpoint, BackupAndRestore) cover the learned inner
learning rates, per-step batch norm and carried optimizer state too.

Refused with one line before anything runs or is written (docs/keras.md, "What is refused"):
examples of another shape than the network takes, integer pixels, empty datasets (the counters
stay unchanged), networks built under a mixed-precision policy, damaged or missing weights files
(loading is all or nothing), an image export without its input transform. ``save_weights`` and
``BackupAndRestore``'s files are written atomically: a process killed while writing leaves the
previous complete file.

The native ``.keras`` format is not supported: it rebuilds a model from a JSON config, and a
tfmeta algorithm (its inner-loop options, learned-rate layout, Reptile's minibatch schedule) is
a Python object with no such config. ``save_weights``/``load_weights`` into a ``MetaModel`` built
the same way restore everything, and :meth:`MetaModel.export` writes the self-contained
fast-adaptation SavedModel for serving.

The module is named after the library it adapts to, like ``tf.keras``: absolute imports make
``import keras`` below the real Keras, and tfmeta's modules are run with ``python -m``, never as
scripts from inside the package directory (the only way the name could shadow Keras).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfmeta.base import errors
from tfmeta.base.input_transform import InputTransform
from tfmeta.core.maml import ANIL, MAML, MAMLpp, MetaSGD
from tfmeta.core.meta_learner import MetaLearner
from tfmeta.core.reptile import Reptile
from tfmeta.core.schedule import PhaseSchedule, apply_meta_step, assign_state
from tfmeta.serving import export as serving_export
from tfmeta.serving import metadata as metadata_lib
from tfmeta.serving.errors import ExportError

EPISODE_KEYS = ("support_x", "support_y", "query_x", "query_y")
# Algorithm metric -> name in Keras logs ("accuracy" reads as the accuracy that matters: after
# adaptation).
METRIC_NAMES = {"loss": "loss", "accuracy_post": "accuracy", "loss_pre": "loss_pre",
                "accuracy_pre": "accuracy_pre"}
# Written into the in-graph label check, to recognise its error when it surfaces from fit().
_LABEL_CHECK = "tfmeta episode labels out of range"


class EpisodeError(errors.UserError, ValueError):
    """The episodes given to fit/evaluate/predict do not have the episode-batch structure."""


class AlgorithmTypeError(errors.UserError, TypeError):
    """``MetaModel`` was given something that is not a tfmeta meta-learner."""


class MetaModelError(errors.UserError, ValueError):
    """A MetaModel is used in a way it does not support (named in the message)."""


class WeightsFileError(errors.UserError, OSError):
    """A weights file or ``BackupAndRestore`` backup is missing or damaged (an ``OSError``, so
    Keras' ``BackupAndRestore(double_checkpoint=True)`` falls back to the previous backup)."""


# --------------------------------------------------------------------------- input checks
def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _shape(spec: Any) -> tf.TensorShape:
    return tf.TensorShape(getattr(spec, "shape", None))


def _episode_part(data: Any, where: str) -> Any:
    """The episode dict of one dataset element or step input (``(dict,)`` tuples unpacked)."""
    x, y, _ = keras.utils.unpack_x_y_sample_weight(data) if isinstance(data, (tuple, list)) \
        else (data, None, None)
    if y is not None:
        raise EpisodeError(
            f"{where}: labels travel inside the episodes (support_y, query_y); pass the episode "
            f"dicts alone, got a second element {_describe(y)}")
    return x


def check_episode_structure(spec: Any, *, where: str, classification: bool,
                            need_query_y: bool = True) -> None:
    """Checks the structure of an episode batch (tensors or ``tf.TensorSpec`` s) before use.

    Args:
      spec: a mapping of tensors, arrays or specs (for example ``dataset.element_spec``).
      where: what is being checked, for the message (``"fit"``, ``"validation_data"``, ...).
      classification: whether labels must be integer class labels.
      need_query_y: whether ``query_y`` is required (not for ``predict``).

    Raises:
      EpisodeError: a missing key, a count of labels that differs from the count of examples,
        a different number of tasks in two parts, or float class labels; the message names the
        value.
    """
    spec = _episode_part(spec, where)
    if not isinstance(spec, Mapping):
        raise EpisodeError(
            f"{where}: an episode batch must be a dict with keys {list(EPISODE_KEYS)}; got "
            f"{type(spec).__name__} {_describe(spec)}")
    needed = EPISODE_KEYS if need_query_y else EPISODE_KEYS[:3]
    missing = [k for k in needed if k not in spec]
    if missing:
        raise EpisodeError(f"{where}: episodes are missing {missing}; an episode batch needs "
                           f"{list(needed)}, got keys {sorted(spec)}")
    shapes = {k: _shape(spec[k]) for k in needed}
    for key, shape in shapes.items():
        if shape.rank is not None and shape.rank < 2:
            raise EpisodeError(f"{where}: {key} has shape {shape}; episodes are batched, "
                               f"[tasks, examples, ...] (batch the episode dataset)")
    pairs = [("support_x", "support_y", 2)]
    if need_query_y:
        pairs.append(("query_x", "query_y", 2))
    pairs.append(("support_x", "query_x", 1))
    for a, b, axes in pairs:
        for axis in range(axes):
            na = shapes[a][axis] if shapes[a].rank is not None else None
            nb = shapes[b][axis] if shapes[b].rank is not None else None
            if na is not None and nb is not None and na != nb:
                what = "tasks" if axis == 0 else "examples per task"
                raise EpisodeError(
                    f"{where}: {a} has {na} {what} but {b} has {nb} (shapes {shapes[a]} and "
                    f"{shapes[b]}); they must match")
    if classification:
        for key in ("support_y", "query_y")[:2 if need_query_y else 1]:
            dtype = _dtype(spec[key])
            if not dtype.is_integer:
                raise EpisodeError(f"{where}: {key} has dtype {dtype.name}; class labels must be "
                                   "integers in [0, ways)")


def _dtype(value: Any) -> tf.DType:
    return tf.as_dtype(value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype)


def check_episode_inputs(spec: Any, *, where: str, input_shape: tuple) -> None:
    """Checks that the examples of an episode batch are what the network takes, before use.

    Static checks only (dtypes and shapes of the element spec): free, and nothing runs on the
    device, so they hold on TPUs and under XLA too.

    Args:
      spec: a mapping of tensors, arrays or specs, as :func:`check_episode_structure` takes.
      where: what is being checked, for the message.
      input_shape: the network's ``input_shape`` (``(None, *example_shape)``).

    Raises:
      EpisodeError: ``support_x`` or ``query_x`` holds integers (e.g. uint8 pixels in 0..255;
        the message says how to convert), or examples of another shape than the network takes.
    """
    spec = _episode_part(spec, where)
    want = tuple(input_shape[1:])
    image = len(want) == 3
    for key in ("support_x", "query_x"):
        value = spec[key]
        dtype = _dtype(value)
        if not dtype.is_floating:
            how = ("float pixels, e.g. tf.cast(x, tf.float32) / 255 in the dataset's map for "
                   "0-255 pixels (an export is served pixels in [0, 1] and applies the input "
                   "transform it is given, see docs/keras.md)" if image else
                   "floating-point inputs (tf.cast(x, tf.float32))")
            raise EpisodeError(f"{where}: {key} has dtype {dtype.name}; the network takes {how}")
        shape = _shape(value)
        if shape.rank is None:
            continue
        got = tuple(shape.as_list()[2:])
        if len(got) != len(want) or any(g is not None and w is not None and g != w
                                        for g, w in zip(got, want)):
            what = ("[height, width, channels] " if image else "") + "examples of shape"
            raise EpisodeError(
                f"{where}: {key} holds {what} {list(got)} (batch shape {shape.as_list()}), but "
                f"the network takes {list(want)} (its input shape {tuple(input_shape)}); make "
                "the episodes at the network's image size and channels, or build the network "
                "for these")


def _label_error(e: tf.errors.InvalidArgumentError, where: str) -> EpisodeError | None:
    """The one-line error for the in-graph label check's failure, or None for another error."""
    text = getattr(e, "message", str(e))
    if _LABEL_CHECK not in text:
        return None
    found = re.search(rf"{_LABEL_CHECK}: (\w+) must be in \[0, (\d+)\)\S*\s*\[?[^\[]*\[(-?\d+)\]"
                      rf"\s*\[(-?\d+)\]", text)
    if found:
        key, ways, low, high = found.groups()
        return EpisodeError(f"{where}: {key} holds labels outside [0, {ways}) (the model's "
                            f"classes): found labels from {low} to {high}")
    line = next(line for line in text.splitlines() if _LABEL_CHECK in line)
    return EpisodeError(f"{where}: {line.strip()}")


def _empty_message(where: str) -> str:
    return (f"{where}: the dataset is empty (it gives no episode batch), so nothing was run; "
            "check its source and any filter, take or shard that leaves nothing")


class _NoData(keras.callbacks.Callback):
    """Refuses a ``fit`` whose data gives no batch at all (an empty dataset of unknown size).

    Keras only warns that the input ran out and ends the epoch; this callback, the first of the
    list, raises at the end of the first epoch if no step ran, before any other callback's
    ``on_epoch_end`` (a ``BackupAndRestore`` would record the epoch as done). The counters are
    unchanged (see :meth:`MetaModel.train_step`).
    """

    def __init__(self):
        super().__init__()
        self.batches = 0
        self._checked = False

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.batches += 1

    def on_predict_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.batches += 1

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self._checked and not self.batches:
            raise EpisodeError(_empty_message("fit"))
        self._checked = True


# --------------------------------------------------------------------------- atomic files
# Temporary files are siblings named ``.tfmeta-tmp-<host>-<pid>-<8 hex>.<final name>``: the final
# name's suffix is kept (Keras requires ``.weights.h5``), and a later write removes only those
# of this name left by a process of this host that no longer runs (killed mid-write).
_TMP = re.compile(r"^\.tfmeta-tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}\.(?P<name>.+)$")


def _is_local(path: str) -> bool:
    return "://" not in str(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale_temporaries(directory: str, name: str) -> None:
    """Removes the temporaries of ``name`` that killed processes of this host left behind."""
    host = socket.gethostname()
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        found = _TMP.match(entry)
        if (found and found["name"] == name and found["host"] == host
                and int(found["pid"]) != os.getpid() and not _pid_alive(int(found["pid"]))):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(directory, entry))


def _fsync_directory(directory: str) -> None:
    """Makes a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file_atomically(path: str, write: Callable[[str], None]) -> None:
    """Writes the local file ``path`` whole or not at all: a kill mid-write leaves the old file.

    ``write(tmp)`` writes a temporary sibling (same directory, so the rename stays on one file
    system, with ``path``'s suffix); it is flushed to disk (fsync) and renamed over ``path``
    (``os.replace``), and the rename is made durable. A failed write removes its temporary.

    Args:
      path: the final file (a local path).
      write: writes the complete file at the path it is given.
    """
    directory, name = os.path.split(os.path.abspath(path))
    _remove_stale_temporaries(directory, name)
    tmp = os.path.join(directory, f".tfmeta-tmp-{socket.gethostname()}-{os.getpid()}-"
                                  f"{uuid.uuid4().hex[:8]}.{name}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


def _write_text_atomically(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    write_file_atomically(path, write)


def _copy_atomically(source: str, path: str) -> None:
    def write(tmp: str) -> None:
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)

    write_file_atomically(path, write)


class _AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` whose files are replaced atomically, read with care.

    Keras writes ``latest.weights.h5`` and ``training_metadata.json`` in place, so a process
    killed while writing leaves a half-written file on which every restart fails. Here both are
    written by :func:`write_file_atomically` (the weights by :meth:`MetaModel.save_weights`),
    and the previous backup of ``double_checkpoint=True`` is copied the same way. A damaged backup found
    at the start (written by something else, or a damaged disk) is one line naming the file and
    the repair, or, with ``double_checkpoint=True``, Keras falls back to the previous backup.
    Remote paths (``gs://...``) keep Keras' own writes: an object store replaces whole objects.
    """

    @classmethod
    def of(cls, callback: keras.callbacks.BackupAndRestore) -> "_AtomicBackupAndRestore":
        """The same backup (directory, frequency, options) as ``callback``."""
        return cls(callback.backup_dir, save_freq=callback.save_freq,
                   double_checkpoint=callback.double_checkpoint,
                   delete_checkpoint=callback.delete_checkpoint)

    def _damaged(self, path: str, reason: str) -> WeightsFileError:
        return WeightsFileError(
            f"BackupAndRestore: the backup file {path!r} is damaged ({reason}), so training "
            f"cannot resume from it; delete the backup directory {self.backup_dir!r} to start "
            "the run again from the beginning")

    def _load_model(self) -> None:
        path = self._training_metadata_path
        if _is_local(path) and os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    epoch = json.load(f)["epoch"]
                if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                    raise ValueError(f"epoch {epoch!r} is not an epoch number")
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise self._damaged(path, _first_line(e)) from None
        try:
            super()._load_model()
        except WeightsFileError as e:
            raise self._damaged(self._weights_path, e.reason) from None

    def _save_model(self) -> None:
        if not (_is_local(self._weights_path) and isinstance(self.model, MetaModel)):
            super()._save_model()
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        if self.double_checkpoint:
            for path, previous in ((self._weights_path, self._prev_weights_path),
                                   (self._training_metadata_path,
                                    self._prev_training_metadata_path)):
                if os.path.exists(path):
                    _copy_atomically(path, previous)
        self.model.save_weights(self._weights_path, overwrite=True)
        _write_text_atomically(self._training_metadata_path, json.dumps(
            {"epoch": self._current_epoch, "batch": self._last_batch_seen}))


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


# --------------------------------------------------------------------------- resumption
class _Resume(keras.callbacks.Callback):
    """Makes a ``fit`` restored by ``BackupAndRestore`` continue at the step where it stopped.

    ``BackupAndRestore`` restores the weights (with the meta-iteration counter and the
    optimizer) but restarts the interrupted epoch at its first step, from a new iterator over
    the data. Knowing how many meta-iterations the restored weights have done, this callback
    discards exactly the batches an uninterrupted run would have consumed by then and skips
    the steps of the interrupted epoch that were already done, so the run continues with the
    same batches and the same number of steps and ends with the same weights.
    """

    def __init__(self, meta_model: "MetaModel", *, steps_per_epoch: int | None,
                 batches_per_epoch: int | None, initial_epoch: int):
        super().__init__()
        self._meta = meta_model
        self._start = meta_model.meta_iteration
        self._per_epoch = steps_per_epoch or batches_per_epoch
        # Keras keeps one data iterator across epochs when steps_per_epoch is given and makes
        # a new one every epoch otherwise.
        self._one_iterator = steps_per_epoch is not None
        self._initial_epoch = initial_epoch
        self._first_epoch: int | None = None
        self.discard = 0  # batches to drop from the iterator before the first real step
        self.skip = 0  # steps of the first epoch already done before the interruption

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self._first_epoch is not None:
            return
        self._first_epoch = epoch
        done = self._meta.meta_iteration - self._start
        if done <= 0:
            return
        if not self._per_epoch:
            logging.warning(
                "MetaModel.fit resumes %d meta-iterations into the run, but the number of "
                "steps per epoch is unknown (pass steps_per_epoch); the interrupted epoch "
                "restarts at its first batch", done)
            return
        within = done - (epoch - self._initial_epoch) * self._per_epoch
        if not 0 <= within <= self._per_epoch:
            logging.warning(
                "MetaModel.fit: the restored weights have done %d meta-iterations, which is "
                "not in epoch %d of %d steps; the epoch restarts at its first batch", done,
                epoch, self._per_epoch)
            return
        k = self._meta.steps_per_execution
        if within % k:
            raise MetaModelError(
                f"the backup was written {within} steps into an epoch, which is not a multiple "
                f"of steps_per_execution={k}; resume with the steps_per_execution of the "
                "interrupted run")
        self.skip = within
        self.discard = done if self._one_iterator else within
        if within or self.discard:
            logging.info("MetaModel.fit resumes at meta-iteration %d: step %d of epoch %d",
                         self._meta.meta_iteration, within, epoch + 1)


def _discard(iterator: Any, count: tf.Tensor) -> None:
    """Consumes ``count`` elements of ``iterator`` (compiled: one call, whatever the count)."""
    for _ in tf.range(count):
        iterator.get_next()


def _all_layers(model: keras.Model) -> Iterator[keras.Layer]:
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _check_precision(model: keras.Model) -> None:
    """Refuses a network built under a mixed-precision dtype policy (e.g. ``mixed_float16``).

    Its layers compute in float16 on float32 variables; meta-gradients through the inner loop
    then mix the two dtypes (TensorFlow fails on them), and there is no loss scaling for the
    inner loop's gradients.

    Raises:
      MetaModelError: naming the policy, the layer and the repair.
    """
    for layer in _all_layers(model):
        policy = getattr(layer, "dtype_policy", None)
        if (layer.weights and policy is not None
                and policy.compute_dtype != policy.variable_dtype):
            raise MetaModelError(
                f"the network {model.name!r} was built under the dtype policy "
                f"{policy.name!r} (layer {layer.name!r} computes in {policy.compute_dtype} on "
                f"{policy.variable_dtype} variables); meta-learning needs one precision: call "
                "keras.mixed_precision.set_global_policy('float32') before building the network")


# --------------------------------------------------------------------------- the model
class MetaModel(keras.Model):
    """A tfmeta meta-learner as a ``keras.Model``: ``fit`` meta-trains it (see the module doc).

    Build the network, the algorithm and the ``MetaModel`` together, inside
    ``strategy.scope()`` when training under a distribution strategy.

    Args:
      algorithm: a tfmeta meta-learner around a built Keras model: :class:`tfmeta.MAML`
        (also first order), :class:`tfmeta.MAMLpp`, :class:`tfmeta.MetaSGD`,
        :class:`tfmeta.ANIL` or :class:`tfmeta.Reptile`.
      first_order_iterations: MAML family: meta-iterations trained with first-order gradients
        before switching to second order (MAML++'s derivative-order annealing; the trainer's
        ``mamlpp.first_order_iterations``). The switch happens at exactly that meta-iteration,
        inside compiled multi-step executions too. MAML++'s multi-step loss is used for the
        algorithm's ``msl_epochs * iterations_per_epoch`` meta-iterations, as in the trainer.
      name: the Keras model name.

    Raises:
      AlgorithmTypeError: ``algorithm`` is not a tfmeta meta-learner.
      MetaModelError: ``first_order_iterations`` is negative or given for an algorithm that has
        no second order; the algorithm's variables were created under another distribution
        strategy than the ``MetaModel``.
    """

    def __init__(self, algorithm: MetaLearner, *, first_order_iterations: int = 0,
                 name: str | None = None):
        if not isinstance(algorithm, MetaLearner):
            what = (f"the Keras model {algorithm.name!r}; wrap it in an algorithm first, e.g. "
                    "MetaModel(tfmeta.MAML(model, inner_lr=0.4, inner_steps=1))"
                    if isinstance(algorithm, keras.Model) else
                    f"{type(algorithm).__name__} {_describe(algorithm)}")
            raise AlgorithmTypeError(
                f"MetaModel wraps a tfmeta algorithm (tfmeta.MAML, MAMLpp, MetaSGD, ANIL, "
                f"Reptile); got {what}")
        if (isinstance(first_order_iterations, bool)
                or not isinstance(first_order_iterations, (int, np.integer))
                or first_order_iterations < 0):
            raise MetaModelError(f"first_order_iterations must be an integer >= 0, got "
                                 f"{first_order_iterations!r}")
        if first_order_iterations and not (isinstance(algorithm, MAML)
                                           and not algorithm.first_order):
            raise MetaModelError(
                f"first_order_iterations={first_order_iterations} anneals second-order MAML; "
                f"{type(algorithm).__name__} here has no second order")
        _check_precision(algorithm.model)
        super().__init__(name=name or f"meta_{algorithm.model.name}")
        self._check_strategy(algorithm)
        self.algorithm = algorithm
        # A tracked sub-layer: the network's weights are saved (and summarised) under it.
        self.network = algorithm.model
        self.first_order_iterations = int(first_order_iterations)
        self._iteration = self.add_weight(
            shape=(), dtype="int64", initializer="zeros", trainable=False,
            name="meta_iteration", aggregation="only_first_replica")
        names = [METRIC_NAMES[k] for k in algorithm.metric_names]
        self._trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self._resume: _Resume | None = None
        self._load_error: MetaModelError | None = None
        self.built = True

    @staticmethod
    def _check_strategy(algorithm: MetaLearner) -> None:
        strategy = tf.distribute.get_strategy()
        for var in [*algorithm.meta_variables, *algorithm.state_variables]:
            value = var.value if isinstance(var, keras.Variable) else var
            distributed = isinstance(value, tf.distribute.DistributedValues)
            if (tf.distribute.has_strategy() and not distributed) or (
                    distributed and not strategy.extended.variable_created_in_scope(value)):
                raise MetaModelError(
                    f"variable {var.name!r} of the algorithm was created under another "
                    "distribution strategy than the MetaModel; build the network, the algorithm "
                    "and the MetaModel together inside the same strategy.scope()")

    # ------------------------------------------------------------------ weights and state
    @property
    def meta_iteration(self) -> int:
        """Meta-iterations trained so far (saved with the weights)."""
        return int(self._iteration.numpy())

    # Keras derives its variable lists from the layers it tracks, which would miss the inner
    # loop's variables (learned rates, per-step batch norm, carried optimizer state): they are
    # the algorithm's, listed by its public API. Every Keras list is defined from that.
    @property
    def trainable_weights(self) -> list[Any]:
        """Exactly ``algorithm.meta_variables``: the network's, then the inner loop's."""
        return list(self.algorithm.meta_variables) if self.trainable else []

    @property
    def non_trainable_weights(self) -> list[Any]:
        """``algorithm.state_variables``, then the meta-iteration counter."""
        frozen = [] if self.trainable else list(self.algorithm.meta_variables)
        return [*frozen, *self.algorithm.state_variables, self._iteration]

    @property
    def weights(self) -> list[Any]:
        return [*self.trainable_weights, *self.non_trainable_weights]

    @property
    def trainable_variables(self) -> list[Any]:
        return self.trainable_weights

    @property
    def non_trainable_variables(self) -> list[Any]:
        return self.non_trainable_weights

    @property
    def variables(self) -> list[Any]:
        return self.weights

    def _own_saved_variables(self) -> list[Any]:
        """The counter and the algorithm's variables that are not the network's."""
        network = {id(v) for v in self.network.variables}
        inner = [v for v in [*self.algorithm.meta_variables, *self.algorithm.state_variables]
                 if id(v) not in network]
        return [self._iteration, *inner]

    def save_own_variables(self, store: Any) -> None:
        """Saves the counter and the inner loop's variables (the network saves its own)."""
        for i, var in enumerate(self._own_saved_variables()):
            store[str(i)] = np.asarray(var.numpy())

    def load_own_variables(self, store: Any) -> None:
        """Restores what :meth:`save_own_variables` saved.

        Raises:
          MetaModelError: the file holds another number of such variables (another algorithm
            or other options).
        """
        variables = self._own_saved_variables()
        if len(store.keys()) != len(variables):
            # Keras gathers loading errors into one message of many lines; load_weights raises
            # this one instead.
            self._load_error = MetaModelError(
                f"the weights file holds {len(store.keys())} meta-iteration/inner-loop variables "
                f"for {self.name!r}, which has {len(variables)}; it was saved from a MetaModel "
                "with another algorithm or other inner-loop options")
            raise self._load_error
        for i, var in enumerate(variables):
            var.assign(np.asarray(store[str(i)]))

    def save_weights(self, filepath: str, overwrite: bool = True,
                     max_shard_size: float | None = None) -> None:
        """``keras.Model.save_weights``, written atomically (so ModelCheckpoint, BackupAndRestore).

        A local ``.weights.h5`` file is written to a temporary sibling, flushed to disk and renamed
        over ``filepath`` (:func:`write_file_atomically`): a process killed while saving leaves the
        previous file whole. Sharded saves (``max_shard_size``) and remote paths are Keras' own.

        Raises:
          MetaModelError: ``filepath`` does not end in ``.weights.h5``, or exists and
            ``overwrite`` is False.
          WeightsFileError: its directory does not exist, or it cannot be written (the previous
            file is left whole).
        """
        path = os.fspath(filepath)
        if max_shard_size is not None or not _is_local(path):
            super().save_weights(path, overwrite=overwrite, max_shard_size=max_shard_size)
            return
        if not path.endswith(".weights.h5"):
            raise MetaModelError(f"save_weights: {path!r} must end in .weights.h5 (Keras' "
                                 "weights format), e.g. model.weights.h5")
        if not overwrite and os.path.exists(path):
            raise MetaModelError(f"save_weights: {path!r} exists; pass overwrite=True to "
                                 "replace it")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise WeightsFileError(f"save_weights: the directory {directory!r} of {path!r} does "
                                   "not exist; create it first")
        try:
            write_file_atomically(path, lambda tmp: keras.Model.save_weights(self, tmp,
                                                                        overwrite=True))
        except OSError as e:  # unwritable, or the disk is full: the previous file is whole
            raise WeightsFileError(f"save_weights: cannot write {path!r} ({_first_line(e)}); "
                                   "any previous file there is unchanged") from None

    def load_weights(self, filepath: str, *args: Any, **kwargs: Any) -> None:
        """``keras.Model.load_weights``, all or nothing, with one-line errors.

        A file that cannot be loaded whole leaves every weight (and the optimizer) as it was.

        Raises:
          WeightsFileError: the file does not exist, or is damaged (not a complete HDF5 file,
            e.g. written by a process that was killed; or unreadable).
          MetaModelError: not a ``.weights.h5`` file; or saved from a MetaModel with another
            algorithm or other inner-loop options, or from another network.
        """
        path = os.fspath(filepath)
        if _is_local(path) and not os.path.exists(path):
            raise WeightsFileError(f"load_weights: the weights file {path!r} does not exist")
        if not path.endswith((".weights.h5", ".weights.json")):
            raise MetaModelError(f"load_weights: {path!r} is not a .weights.h5 file; a MetaModel "
                                 "loads what its save_weights wrote (ModelCheckpoint with "
                                 "save_weights_only=True, BackupAndRestore)")
        self._load_error = None
        # Keras loads layer by layer: a failure halfway would leave some weights loaded.
        variables = [*self.weights, *(self.optimizer.variables if self.optimizer else [])]
        saved = [np.array(v.numpy()) for v in variables]
        try:
            super().load_weights(path, *args, **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            for var, value in zip(variables, saved):
                var.assign(value)
            if self._load_error is not None:
                raise self._load_error from None
            reason = _first_line(e)
            if isinstance(e, OSError):
                error = WeightsFileError(
                    f"load_weights: the weights file {path!r} is damaged ({reason}); it was "
                    "not written completely (or the disk is damaged): use a complete copy, or "
                    "delete it to start without it")
                error.reason = reason
                raise error from None
            detail = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
            raise MetaModelError(
                f"load_weights: cannot load {path!r} into {self.name!r}: {detail[:300]}; it "
                "was saved from another network or is damaged") from None

    def get_config(self) -> dict[str, Any]:
        raise MetaModelError(
            "a MetaModel cannot be saved in the .keras format, which rebuilds models from a JSON "
            "config: a tfmeta algorithm has none; use save_weights()/load_weights() into a "
            "MetaModel built the same way, or export() for serving")

    def to_json(self, **kwargs: Any) -> str:
        """The JSON config of the meta-learned network (what TensorBoard's graph view shows).

        A MetaModel itself has no config (see :meth:`get_config`); the network does.
        """
        return self.network.to_json(**kwargs)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        # Listed so that Keras resets them every epoch and reads them for the epoch logs.
        return list(self._trackers.values())

    # ------------------------------------------------------------------------- compile
    def compile(self, optimizer: Any = None, loss: Any = None, metrics: Any = None, *,
                steps_per_execution: int = 1, jit_compile: bool | str = "auto",
                run_eagerly: bool = False, **kwargs: Any) -> None:
        """Configures meta-training.

        Args:
          optimizer: the outer (meta) optimizer, a Keras optimizer or its name. Default: what
            the trainer uses, ``Adam(1e-3)`` for the MAML family and ``SGD`` with the meta step
            size ``algorithm.outer_step_size`` as learning rate for Reptile (its meta-gradient
            is ``theta - theta'``).
          loss: not accepted: the meta-objective is the algorithm's ``loss``.
          metrics: not accepted: the logged metrics are fixed (module docstring).
          steps_per_execution: meta-iterations per compiled call (one host round trip each).
          jit_compile: compile each step with XLA (``"auto"``: Keras' rule, off on CPU-only
            machines and under distribution strategies).
          run_eagerly: run the steps eagerly (debugging).
          **kwargs: other ``keras.Model.compile`` arguments.

        Raises:
          MetaModelError: a ``loss`` or ``metrics`` was given.
        """
        for arg, value in (("loss", loss), ("metrics", metrics),
                           ("weighted_metrics", kwargs.get("weighted_metrics"))):
            if value is not None:
                raise MetaModelError(
                    f"MetaModel.compile got {arg}={_describe(value)}; the meta-objective is the "
                    "algorithm's loss (pass loss= to the algorithm) and the logged metrics are "
                    "loss, loss_pre, accuracy and accuracy_pre")
        if optimizer is None:
            optimizer = (keras.optimizers.SGD(self.algorithm.outer_step_size)
                         if isinstance(self.algorithm, Reptile) else keras.optimizers.Adam(1e-3))
        kwargs.pop("weighted_metrics", None)
        super().compile(optimizer=optimizer, steps_per_execution=steps_per_execution,
                        jit_compile=jit_compile, run_eagerly=run_eagerly, **kwargs)
        # The optimizer's slots must exist for every meta-variable (learned rates included) and
        # be created under the model's strategy, before any step function is traced.
        if not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        """Builds what is not built yet: only ever the optimizer (the model is built).

        Keras' version builds models from a sample batch, which it first reduces across
        replicas; for dict batches under ``MultiWorkerMirroredStrategy`` that reduction fails
        (Keras 3.15), and a MetaModel needs no sample batch.
        """
        del iterator, data_batch
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    # ---------------------------------------------------------------------------- phases
    @property
    def schedule(self) -> PhaseSchedule:
        """When the meta-step changes (derivative order, multi-step loss): the trainer's
        :class:`tfmeta.core.schedule.PhaseSchedule`, from the algorithm and
        ``first_order_iterations``."""
        return PhaseSchedule.for_algorithm(self.algorithm,
                                           first_order_iterations=self.first_order_iterations)

    def _meta_step(self, batch: dict[str, tf.Tensor], global_batch_size: int) -> Any:
        """The algorithm's meta-step on ``batch``, in the phase of the current meta-iteration.

        With several phases, all are in the graph and ``tf.switch_case`` picks one per step, so
        a phase switch happens at its exact meta-iteration even inside a multi-step execution
        (no retracing, XLA-compatible).
        """
        iteration = self._iteration.value
        schedule = self.schedule
        bounds = schedule.boundaries()

        def branch(start: int) -> Callable[[], tuple]:
            kwargs = schedule.phase(start).kwargs(iteration)
            return lambda: tuple(self.algorithm.meta_step(
                batch, global_batch_size=global_batch_size, **kwargs))

        if not bounds:
            return branch(0)()
        index = tf.add_n([tf.cast(iteration >= b, tf.int32) for b in bounds])
        return tf.switch_case(index, [branch(s) for s in schedule.phase_starts()])

    # ------------------------------------------------------------------------ the steps
    def _episodes(self, data: Any, *, need_query_y: bool = True) -> dict[str, tf.Tensor]:
        """The episode dict of a step's input, checked; labels checked in the graph too."""
        x = _episode_part(data, "episodes")
        check_episode_structure(x, where="episodes", classification=self._classification,
                                need_query_y=need_query_y)
        check_episode_inputs(x, where="episodes", input_shape=self.network.input_shape)
        keys = EPISODE_KEYS if need_query_y else EPISODE_KEYS[:3]
        batch = {k: tf.convert_to_tensor(x[k]) for k in keys}
        ways = self._classes
        if ways is not None:
            for key in keys[1::2]:
                y = batch[key]
                ok = tf.logical_and(tf.reduce_all(y >= 0), tf.reduce_all(y < ways))
                # The minimum and maximum go into the message, so the error names the values.
                check = tf.debugging.Assert(
                    ok, [f"{_LABEL_CHECK}: {key} must be in [0, {ways}); found",
                         tf.reduce_min(y), tf.reduce_max(y)], summarize=1)
                with tf.control_dependencies([check]):
                    batch[key] = tf.identity(y)
        return batch

    @property
    def _classification(self) -> bool:
        """Whether labels are integer class indices (the sparse cross-entropy loss)."""
        return self.algorithm.loss_name == "sparse_categorical_crossentropy"

    @property
    def _classes(self) -> int | None:
        """Label values run over ``[0, classes)``; None for real-valued targets."""
        if self._classification:
            return int(self.network.output_shape[-1])
        if self.algorithm.loss_name == "binary_crossentropy":
            return 2
        return None

    def _update_trackers(self, values: dict[str, tf.Tensor], count: tf.Tensor) -> None:
        """Adds a batch's global per-task means, weighted by its global number of tasks.

        ``values`` and ``count`` are the same on every replica (all-reduced), so each replica's
        tracker holds the global running mean and the cross-replica read (a sum of totals over
        a sum of counts) is that same mean.
        """
        for key, name in METRIC_NAMES.items():
            if key in values:
                self._trackers[name].update_state(values[key], sample_weight=count)

    def _results(self) -> dict[str, tf.Tensor]:
        results = {name: tracker.result() for name, tracker in self._trackers.items()}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras 3.15 reduces a multi-worker step's logs with reduce(MEAN, axis=0), which
            # fails on scalars; [1] reduces to the scalar (the values are equal everywhere).
            results = {name: value[None] for name, value in results.items()}
        return results

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        """One meta-iteration on a batch of episodes (this replica's share under a strategy).

        Every update (parameters, optimizer, state, counters) depends on the batch: when the
        data runs out, the step's ops that would not read it (the counters' increments) would
        otherwise still run, and an epoch that ended on an exhausted dataset would count a step.
        """
        batch = self._episodes(data)
        with tf.control_dependencies([batch["support_x"]]):
            return self._train_step(batch)

    def _train_step(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        strategy = tf.distribute.get_strategy()
        ctx = tf.distribute.get_replica_context()
        local = batch["support_x"].shape[0]
        if local is not None:
            # Static task counts (tf.data with drop_remainder, TPUs): the algorithm divides by
            # the global count itself, exactly as in the trainer.
            count = tf.constant(float(local * strategy.num_replicas_in_sync))
            step = self._meta_step(batch, local * strategy.num_replicas_in_sync)
            grads, metrics, state = step
        else:
            # Counts known only at run time (a last, smaller batch): sums, then one division by
            # the global count.
            count = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                   tf.cast(tf.shape(batch["support_x"])[0], tf.float32))
            grads, metrics, state = self._meta_step(batch, 1)
            grads = [g / tf.cast(count, g.dtype) for g in grads]
            metrics = {k: v / count for k, v in metrics.items()}
            state = [v / tf.cast(count, v.dtype) if v.dtype.is_floating else v for v in state]
        apply_meta_step(grads, self.algorithm.meta_variables, optimizer=self.optimizer)
        state_vars = self.algorithm.state_variables
        floating = [(var, value) for var, value in zip(state_vars, state)
                    if tf.as_dtype(var.dtype).is_floating]

        def update(strategy: tf.distribute.Strategy, values: list[Any], after: Any) -> None:
            # Each replica's values are its tasks' sum divided by the global count: their sum
            # is the mean over all tasks (as the trainer assigns them).
            assign_state([var for var, _ in floating], values, strategy=strategy)
            with tf.control_dependencies(strategy.experimental_local_results(after)):
                self._iteration.assign_add(1)

        ctx.merge_call(update, args=([value for _, value in floating], grads[0]))
        metrics = ctx.all_reduce(tf.distribute.ReduceOp.SUM, metrics)
        self._update_trackers(metrics, count)
        return self._results()

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        """Adapts to each episode (evaluation inner steps and batch-norm mode) and scores it."""
        batch = self._episodes(data)
        per_task = self.algorithm.evaluate(batch)
        ctx = tf.distribute.get_replica_context()
        sums = {k: tf.reduce_sum(v) for k, v in per_task.items()}
        sums["_count"] = tf.cast(tf.shape(batch["support_x"])[0], tf.float32)
        sums = ctx.all_reduce(tf.distribute.ReduceOp.SUM, sums)
        count = sums.pop("_count")
        self._update_trackers({k: v / count for k, v in sums.items()}, count)
        return self._results()

    def predict_step(self, data: Any) -> tf.Tensor:
        """Each episode's query outputs after adapting to its support set: ``[tasks, Q, ...]``."""
        return self._adapt_and_predict(self._episodes(data, need_query_y=False))

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """``meta_model(episodes)``, with the episodes checked first.

        Keras rewrites errors raised inside ``call`` into a message of several lines; checking
        here keeps a bad batch one line.
        """
        if isinstance(inputs, Mapping):
            self._check_data(inputs, "call", need_query_y=False)
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs: Mapping[str, Any], training: bool = False) -> tf.Tensor:
        """``meta_model(episodes)``: the adapted query outputs, as :meth:`predict_step`."""
        del training  # the inner loop always adapts in training mode, queries as bn_mode says
        return self._adapt_and_predict(self._episodes(inputs, need_query_y=False))

    def _adapt_and_predict(self, batch: dict[str, tf.Tensor]) -> tf.Tensor:
        return self.algorithm.adapt_and_predict(batch["support_x"], batch["support_y"],
                                                batch["query_x"])

    # ------------------------------------------------------------- fit / evaluate / predict
    def make_train_function(self, force: bool = False) -> Callable | None:
        """Keras' compiled train function, wrapped so that a restored fit resumes exactly.

        See :class:`_Resume`: the wrapper drops the batches and skips the steps that the
        restored weights have already been trained on.
        """
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force=True)
        compiled = self.train_function
        discard = tf.function(_discard)

        def train_function(iterator: Any) -> Any:
            resume = self._resume
            if resume is not None and resume.discard:
                discard(iterator, tf.constant(resume.discard, tf.int64))
                resume.discard = 0
            if resume is not None and resume.skip:
                resume.skip -= self.steps_per_execution
                return self.get_metrics_result()
            return compiled(iterator)

        self.train_function = train_function
        return train_function

    def _check_data(self, data: Any, where: str, *, need_query_y: bool = True) -> None:
        """Checks the structure of a dataset (its element spec) or of arrays before running."""
        if data is None:
            raise EpisodeError(f"{where}: no data given; pass a tf.data.Dataset of episode "
                               f"batches (dicts of {', '.join(EPISODE_KEYS)})")
        spec = data.element_spec if isinstance(data, tf.data.Dataset) else data
        if isinstance(data, tf.data.Dataset) or isinstance(data, (Mapping, tuple, list)):
            check_episode_structure(spec, where=where, classification=self._classification,
                                    need_query_y=need_query_y)
            check_episode_inputs(spec, where=where, input_shape=self.network.input_shape)
        if isinstance(data, tf.data.Dataset) and int(data.cardinality()) == 0:
            raise EpisodeError(_empty_message(where))

    def _check_steps(self, where: str, **steps: int | None) -> None:
        """Refuses step counts that Keras would round up to whole executions.

        With ``steps_per_execution=k`` every compiled call runs k steps while data lasts, so an
        epoch of an infinite stream with a step count that is not a multiple of k would train
        (or evaluate) more steps than asked.
        """
        k = self.steps_per_execution
        for name, value in steps.items():
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, np.integer)) or value < 1):
                # Keras takes 0 for "until the data runs out": forever on an infinite stream.
                raise MetaModelError(f"{where}: {name}={value!r}; it must be a positive integer "
                                     f"(a multiple of steps_per_execution={k}), or None for "
                                     "one pass over a finite dataset")
            if value is not None and value % k:
                raise MetaModelError(
                    f"{where}: {name}={value} is not a multiple of steps_per_execution={k}; "
                    f"Keras would run {-(-value // k) * k} steps (use a multiple of {k})")

    @contextlib.contextmanager
    def _user_errors(self, where: str) -> Iterator[None]:
        try:
            yield
        except tf.errors.InvalidArgumentError as e:
            error = _label_error(e, where)
            if error is None:
                raise
            raise error from None

    def fit(self, x: Any = None, y: Any = None, **kwargs: Any) -> keras.callbacks.History:
        """Meta-trains on batches of episodes; ``keras.Model.fit`` with its callbacks.

        Args:
          x: the training episodes: a ``tf.data.Dataset`` of episode batches (module docstring),
            typically infinite, with ``steps_per_epoch``.
          y: must be None (labels are inside the episodes).
          **kwargs: ``keras.Model.fit`` arguments: ``epochs``, ``steps_per_epoch``,
            ``validation_data``, ``validation_steps``, ``callbacks``, ``initial_epoch``,
            ``verbose``, ...

        Returns:
          The ``History``.

        Raises:
          EpisodeError: the episodes (or ``validation_data``) lack a key, have label counts that
            differ from example counts, or hold class labels outside ``[0, ways)``.
          MetaModelError: ``steps_per_epoch`` or ``validation_steps`` is not a multiple of
            ``steps_per_execution``.

        With ``BackupAndRestore``, a run interrupted mid-epoch continues at the step where its
        backup was written, with the same batches (the data stream is consumed up to that
        point, so the dataset must be the same, deterministic stream) and ends with the same
        weights as an uninterrupted run; the logs of that epoch cover the steps run after the
        restart.
        """
        if y is not None:
            raise EpisodeError(f"fit: labels travel inside the episodes; y must be None, got "
                               f"{_describe(y)}")
        self._check_data(x, "fit")
        if kwargs.get("validation_data") is not None:
            self._check_data(kwargs["validation_data"], "validation_data")
        self._check_steps("fit", steps_per_epoch=kwargs.get("steps_per_epoch"),
                          validation_steps=kwargs.get("validation_steps"))
        epochs = kwargs.get("epochs", 1)
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise MetaModelError(f"fit: epochs={epochs!r}; it must be a positive integer")
        steps = kwargs.get("steps_per_epoch")
        per_epoch = None
        if isinstance(x, tf.data.Dataset):
            cardinality = int(x.cardinality())
            per_epoch = cardinality if cardinality > 0 else None
        if isinstance(x, tf.data.Dataset):
            # Episode batches are already random draws; Keras would only warn that it cannot
            # shuffle a dataset.
            kwargs.setdefault("shuffle", False)
        callbacks = kwargs.pop("callbacks", None)
        given = (callbacks.callbacks if isinstance(callbacks, keras.callbacks.CallbackList)
                 else list(callbacks or []))
        # Keras' BackupAndRestore writes its files in place; this one replaces them atomically.
        listed = [_AtomicBackupAndRestore.of(c)
                  if type(c) is keras.callbacks.BackupAndRestore else c for c in given]
        # First: an empty dataset is refused before any other callback ends the epoch.
        listed.insert(0, _NoData())
        # Only a backup of this very run says where it stopped (weights loaded by another
        # callback, e.g. a warm start, are no position in this run's data).
        if any(isinstance(c, keras.callbacks.BackupAndRestore) for c in listed):
            self._resume = _Resume(self, steps_per_epoch=steps, batches_per_epoch=per_epoch,
                                   initial_epoch=kwargs.get("initial_epoch", 0))
            # Last, so that it runs after BackupAndRestore has restored the weights.
            listed.append(self._resume)
        if isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks.callbacks[:] = listed
            for callback in listed:
                callback.set_model(self)
        else:
            callbacks = listed
        try:
            with self._user_errors("fit"):
                return super().fit(x, callbacks=callbacks, **kwargs)
        finally:
            self._resume = None

    def evaluate(self, x: Any = None, y: Any = None, **kwargs: Any) -> Any:
        """Adapts to held-out episodes and reports the metrics (``keras.Model.evaluate``).

        Raises:
          EpisodeError: as :meth:`fit`.
        """
        if y is not None:
            raise EpisodeError(f"evaluate: labels travel inside the episodes; y must be None, "
                               f"got {_describe(y)}")
        cached = kwargs.get("_use_cached_eval_dataset")
        if not cached:
            self._check_data(x, "evaluate")
            self._check_steps("evaluate", steps=kwargs.get("steps"))
        with self._user_errors("evaluate"):
            result = super().evaluate(x, **kwargs)
        # The trackers count the tasks evaluated (a dataset of unknown size may be empty).
        if not any(float(t.count.numpy()) for t in self._trackers.values()):
            raise EpisodeError(_empty_message("validation_data" if cached else "evaluate"))
        return result

    def predict(self, x: Any, **kwargs: Any) -> Any:
        """Adapted query outputs of every episode, ``[episodes, Q, ...]`` (``keras.Model.predict``).

        Raises:
          EpisodeError: as :meth:`fit` (``query_y`` is not needed).
        """
        self._check_data(x, "predict", need_query_y=False)
        self._check_steps("predict", steps=kwargs.get("steps"))
        counter = _NoData()
        callbacks = kwargs.pop("callbacks", None)
        if isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks.append(counter)
        else:
            callbacks = [*(callbacks or []), counter]
        try:
            with self._user_errors("predict"):
                return super().predict(x, callbacks=callbacks, **kwargs)
        except UnboundLocalError:  # Keras 3.15 on a dataset that gives no batch
            if counter.batches:
                raise
            raise EpisodeError(_empty_message("predict")) from None

    def export(self, filepath: str, **kwargs: Any) -> str:
        """Writes the fast-adaptation SavedModel; see :func:`export` (replaces Keras' export)."""
        return export(self, filepath, **kwargs)


# --------------------------------------------------------------------------- export
def algorithm_name(algorithm: MetaLearner) -> str:
    """The config name of an algorithm object (``"maml"``, ``"fomaml"``, ``"mamlpp"``, ...)."""
    for cls, name in ((MAMLpp, "mamlpp"), (MetaSGD, "metasgd"), (ANIL, "anil"),
                      (Reptile, "reptile")):
        if isinstance(algorithm, cls):
            return name
    if isinstance(algorithm, MAML):
        return "fomaml" if algorithm.first_order else "maml"
    return type(algorithm).__name__.lower()


# The input transforms export() knows by name (besides an InputTransform or its dict).
TRANSFORM_PRESETS = {
    "omniglot": "grayscale, inverted (1 - p), not normalised: tfmeta's Omniglot episodes",
    "pixels": "pixels / 255 as they are: not inverted, not normalised",
}


def _allowed_transforms() -> str:
    presets = " or ".join(f"{name!r} ({about})" for name, about in TRANSFORM_PRESETS.items())
    return ("a tfmeta.base.input_transform.InputTransform(image_size, channels, invert, mean, std) "
            f"as the training data was made, its dict, or {presets}")


def input_transform_for(model: keras.Model, input_transform: Any) -> InputTransform:
    """The input transform an image model is exported with, from what the caller gives.

    A model does not know what its training data were made from (Omniglot's inverted strokes,
    photos normalised with measured means, plain pixels), so the caller states it; it is checked
    against the network's input shape.

    Args:
      model: the image network (input ``[B, S, S, C]``).
      input_transform: an :class:`~tfmeta.base.input_transform.InputTransform`, its dict
        (``to_dict()``, e.g. the ``input_transform`` of a run's data summary), or a name of
        :data:`TRANSFORM_PRESETS` (the network's size and channels).

    Raises:
      tfmeta.serving.errors.ExportError: none given, an unknown name, an invalid dict, or a
        transform
        for other images than the network takes (one line each, naming what is allowed).
    """
    shape = tuple(model.input_shape)
    if input_transform is None:
        raise ExportError(
            f"export: the image model {model.name!r} (input {shape}) needs input_transform=, "
            f"how served pixels (decode_png / 255, in [0, 1]) become its inputs: "
            f"{_allowed_transforms()}")
    size, width, channels = shape[1:]
    if isinstance(input_transform, str):
        if input_transform not in TRANSFORM_PRESETS:
            raise ExportError(
                f"export: input_transform={input_transform!r} is not a known name; allowed: "
                f"{_allowed_transforms()}")
        if input_transform == "omniglot" and channels != 1:
            raise ExportError(
                f"export: input_transform='omniglot' is grayscale, but the network "
                f"{model.name!r} takes {channels} channels (input {shape}); give the transform "
                "of its training data")
        input_transform = InputTransform(int(size), int(channels),
                                         invert=input_transform == "omniglot")
    elif isinstance(input_transform, Mapping):
        try:
            input_transform = InputTransform.from_dict(dict(input_transform))
        except (ValueError, TypeError, KeyError) as e:
            raise ExportError(f"export: input_transform {_describe(input_transform)} is "
                                       f"not a valid transform ({_first_line(e)})") from None
    elif not isinstance(input_transform, InputTransform):
        raise ExportError(f"export: input_transform is {_describe(input_transform)}; "
                                   f"allowed: {_allowed_transforms()}")
    t = input_transform
    if (t.image_size, t.image_size, t.channels) != (size, width, channels):
        raise ExportError(
            f"export: input_transform is for [{t.image_size}, {t.image_size}, {t.channels}] "
            f"images, but the network {model.name!r} takes {[size, width, channels]} (input "
            f"{shape}); give the transform of the data it was trained on")
    return t


def export_metadata(algorithm: MetaLearner, *, input_transform: Any = None, step: int = 0,
                    shots: int | None = None, queries: int | None = None,
                    max_inner_steps: int | None = None, **extra: Any) -> dict[str, Any]:
    """The SavedModel's metadata, from the algorithm (as the trainer writes it from a config).

    The same builder as the trainer's export (:func:`tfmeta.serving.metadata.build`; the trainer
    feeds it from the config, :func:`tfmeta.run.exporter.metadata_from_config`), so the fields
    are the same where the algorithm knows them;
    ``shots`` / ``queries`` (data facts a model does not hold) when given.

    Args:
      algorithm: the trained meta-learner.
      input_transform: image classifiers: how served pixels become the model's inputs
        (:func:`input_transform_for`); must be None for other models.
      step: meta-iterations the parameters were trained for.
      shots: support examples per class the model was trained for (classification).
      queries: query examples per class (classification).
      max_inner_steps: bound on a client's ``inner_steps`` (default:
        :data:`tfmeta.serving.metadata.DEFAULT_MAX_INNER_STEPS`).
      **extra: more JSON-ready fields (e.g. ``split_scheme``), stored as given.

    Raises:
      tfmeta.serving.errors.ExportError: an image classifier without a valid
        ``input_transform``, or
        another model with one.
    """
    model = algorithm.model
    reptile = isinstance(algorithm, Reptile)
    classification = _is_image_classifier(algorithm)
    if not classification and input_transform is not None:
        raise ExportError(
            f"export: input_transform is for image classifiers; {model.name!r} (input "
            f"{tuple(model.input_shape)}) is exported with its inputs as they are: leave it out")
    adaptation = metadata_lib.Adaptation(
        algorithm=algorithm_name(algorithm), inner_lr=algorithm.inner_lr,
        inner_steps=algorithm.eval_inner_steps, train_inner_steps=algorithm.inner_steps,
        bn_mode=algorithm.bn_mode,
        max_inner_steps=max_inner_steps or max(metadata_lib.DEFAULT_MAX_INNER_STEPS,
                                               algorithm.eval_inner_steps),
        inner_optimizer=algorithm.inner_optimizer if reptile else "sgd",
        inner_batch_size=(algorithm.inner_batch_size or 0) if reptile else 0,
        inner_shuffle_per_task=reptile and algorithm.shuffle_per_task,
        inner_carry_optimizer_state=reptile and algorithm.carry_optimizer_state,
        inner_grad_clip=algorithm.inner_grad_clip or 0.0)
    classifier = None
    if classification:
        classifier = metadata_lib.Classifier(
            ways=int(model.output_shape[-1]), transform=input_transform_for(model, input_transform),
            shots=shots, train_shots=shots, queries=queries)
    task = (("omniglot" if input_transform == "omniglot" else "images") if classification
            else "sinusoid")
    return metadata_lib.build(step=step, task=task, adaptation=adaptation, classifier=classifier,
                              **{"trained_with": "keras_fit", **extra})


def _is_image_classifier(algorithm: MetaLearner) -> bool:
    return algorithm.accuracy_fn is not None and len(algorithm.model.input_shape) == 4


def export(model_or_algorithm: MetaModel | MetaLearner, output: str, *,
           input_transform: Any = None, shots: int | None = None, queries: int | None = None,
           max_inner_steps: int | None = None, replace: bool = False,
           step: int | None = None, **extra: Any) -> str:
    """Exports a trained model as the fast-adaptation SavedModel ``tfmeta.train`` writes.

    The same :func:`tfmeta.serving.export.export` as the trainer's export: the same signatures
    (``adapt_and_predict``, ``..._steps``, ``..._batch``, ``..._transductive``, ``predict``,
    ``metadata``), the inner loop in the graph, loadable by ``tf.saved_model.load`` without
    tfmeta or Keras; atomic, never overwriting anything but a previous tfmeta SavedModel
    (with ``replace``).

    An image classifier is served pixels (``decode_png / 255``, in [0, 1], any size) and the
    graph makes its inputs from them as the training data were made: ``input_transform`` says
    how (size, channels, inversion, normalisation), and is required, since ``fit`` cannot know
    what its episodes were made from.

    Args:
      model_or_algorithm: a :class:`MetaModel` or the tfmeta algorithm it wraps.
      output: the SavedModel directory (local or gs://); must not exist, or be a previous tfmeta
        export with ``replace=True``.
      input_transform: image classifiers only: an
        :class:`~tfmeta.base.input_transform.InputTransform`, its dict, or ``"omniglot"``
        (grayscale, inverted: tfmeta's Omniglot episodes) or ``"pixels"`` (pixels / 255 as they
        are); see :func:`input_transform_for`.
      shots: support examples per class the model was trained for (recorded in the metadata).
      queries: query examples per class (recorded in the metadata).
      max_inner_steps: the largest ``inner_steps`` a client may ask for (default 100).
      replace: whether a previous tfmeta SavedModel at ``output`` may be replaced.
      step: the meta-iteration recorded in the metadata (default: the MetaModel's counter).
      **extra: more JSON-ready metadata fields.

    Returns:
      The SavedModel path (absolute for a local path).

    Raises:
      AlgorithmTypeError: neither a MetaModel nor a tfmeta algorithm.
      tfmeta.serving.errors.ExportError: an image classifier without a valid
        ``input_transform`` (or
        another model with one), a model that does not fit the signature contract (square
        images ``[S, S, C]`` to ``[ways]`` logits, or ``[1]`` to ``[1]`` regression), or an
        ``output`` that may not be written.
    """
    if not isinstance(output, (str, os.PathLike)) or not os.fspath(output):
        raise ExportError(f"export: output is {_describe(output)}; give the path of "
                                   "the SavedModel directory to write (local or gs://)")
    output = os.fspath(output)
    for name, value, low in (("shots", shots, 1), ("queries", queries, 1),
                             ("max_inner_steps", max_inner_steps, 1), ("step", step, 0)):
        if value is not None and (isinstance(value, bool)
                                  or not isinstance(value, (int, np.integer)) or value < low):
            raise ExportError(f"export: {name}={value!r}; it must be an integer >= "
                                       f"{low} (or left out)")
    if isinstance(model_or_algorithm, MetaModel):
        algorithm = model_or_algorithm.algorithm
        step = model_or_algorithm.meta_iteration if step is None else step
    elif isinstance(model_or_algorithm, MetaLearner):
        algorithm = model_or_algorithm
    else:
        raise AlgorithmTypeError(f"export takes a MetaModel or a tfmeta algorithm; got "
                                 f"{type(model_or_algorithm).__name__} "
                                 f"{_describe(model_or_algorithm)}")
    metadata = export_metadata(algorithm, input_transform=input_transform, step=step or 0,
                               shots=shots, queries=queries, max_inner_steps=max_inner_steps,
                               **extra)
    return serving_export.export(algorithm.model, algorithm, output, metadata=metadata,
                                 classification=_is_image_classifier(algorithm),
                                 max_inner_steps=max_inner_steps, replace=replace)


__all__ = ["AlgorithmTypeError", "EpisodeError", "MetaModel", "MetaModelError",
           "TRANSFORM_PRESETS", "WeightsFileError", "algorithm_name", "check_episode_inputs",
           "check_episode_structure", "export", "export_metadata", "input_transform_for",
           "write_file_atomically"]
