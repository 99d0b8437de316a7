"""Atomic weights files and an exact resume for ``BackupAndRestore``.

A process killed while writing leaves the last complete file; a resumed ``fit`` continues at the
step where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import uuid
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from tfmeta.keras.errors import MetaModelError, WeightsFileError, _first_line

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
    and the previous backup of ``double_checkpoint=True`` is copied the same way. A damaged
    backup found at the start (written by something else, or a damaged disk) is one line naming
    the file and the repair, or, with ``double_checkpoint=True``, Keras falls back to the previous backup.
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
        atomic = getattr(self.model, "writes_weights_atomically", False)
        if not (_is_local(self._weights_path) and atomic):
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


class _Resume(keras.callbacks.Callback):
    """Makes a ``fit`` restored by ``BackupAndRestore`` continue at the step where it stopped.

    ``BackupAndRestore`` restores the weights (with the meta-iteration counter and the
    optimizer) but restarts the interrupted epoch at its first step, from a new iterator over
    the data. Knowing how many meta-iterations the restored weights have done, this callback
    discards exactly the batches an uninterrupted run would have consumed by then and skips
    the steps of the interrupted epoch that were already done, so the run continues with the
    same batches and the same number of steps and ends with the same weights.
    """

    def __init__(self, meta_model: keras.Model, *, steps_per_epoch: int | None,
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
