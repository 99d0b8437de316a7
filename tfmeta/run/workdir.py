"""Work directories a second run cannot corrupt: a lock, a config history, readable checkpoints.

A work directory holds one experiment. Three things protect it:

* **A lock** (``WORKDIR/lock.json``) held by the training run. A second training on the same
  directory is refused with an error naming the holder (host, pid, command, start time). A lock
  left behind by a run that died (``kill -9``, a lost machine) is detected and taken over: on the
  same host the holder's pid is checked (with its start time, so a recycled pid does not count);
  from another host the holder's heartbeat, which a live holder refreshes every
  :data:`HEARTBEAT_SECONDS`, must be older than :data:`STALE_SECONDS`.
* **A config history.** ``config.json`` is the config the run was started with and is never
  rewritten. Resuming with a config that changes what the checkpoints mean (model, ways,
  algorithm, ...) is refused before anything is written, naming the fields; changes that only
  say how long, how often or how to evaluate (:data:`tfmeta.run.config.RESUMABLE_FIELDS`) are allowed
  and appended to ``config_changes.json``. :func:`load_config` returns the config in force now.
* **Checkpoints that survive damage.** :func:`restore_newest_readable` tries checkpoints newest
  first; one that cannot be read (truncated, deleted or corrupted files) is reported with its path
  and the next older one is used.
* **Paths that mean what they say, and a state understood before anything is written.**
  :func:`normalize` turns a work-directory path into the one form used everywhere (``~`` expanded,
  relative paths made absolute, URLs untouched); the checkpoint state file holds paths as they
  were given, so a path normalised late would be joined twice. :func:`check_state` refuses a
  directory whose tfmeta files are missing or damaged (checkpoints without ``config.json``, a
  truncated ``config.json``, ...) naming the file and the repair, before anything is written.

Everything goes through ``tf.io.gfile``, so a work directory can be ``gs://bucket/run``. The lock is
atomic on local file systems (``O_EXCL``); on object stores it is best effort (written, then read
back), which is enough to stop the usual accident of starting the same command twice.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import threading
import time
import uuid
from typing import Any

import ml_collections
import tensorflow as tf
from absl import logging

from tfmeta.run import config as config_lib
from tfmeta.base import errors

CONFIG_FILE = "config.json"
CONFIG_CHANGES_FILE = "config_changes.json"
LOCK_FILE = "lock.json"
CHECKPOINT_DIR = "checkpoints"
HISTORY_FILE = "history.jsonl"
# Per split: the classes and images a run uses, and what was left out or skipped, and why.
DATA_SUMMARY_FILE = "data_summary.json"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0


class WorkdirError(errors.UserError, ValueError):
    """The work directory cannot be used as asked (the message says why and what to do)."""


class WorkdirLockedError(WorkdirError):
    """Another live training run holds the work directory."""


class IncompatibleConfigError(WorkdirError):
    """The config changes fields that the work directory's checkpoints depend on."""


class CheckpointError(WorkdirError):
    """Checkpoints exist but none of them can be read."""


class WorkdirStateError(WorkdirError):
    """A work-directory file is missing, damaged or holds values tfmeta cannot use."""


class WorkdirWriteError(WorkdirError):
    """Writing into the work directory failed (disk full, permissions, a lost mount)."""


def _is_local(path: str) -> bool:
    return "://" not in path


def normalize(path: str) -> str:
    """The one form of a work-directory path that every binary and library entry point uses.

    ``~`` is expanded and a relative path made absolute (against the current directory, once, at
    the edge: checkpoint state files and a later ``cd`` must not change what the path means); a
    URL such as ``gs://bucket/run`` is returned unchanged.

    Raises:
      WorkdirError: ``path`` is empty (which would silently mean the current directory).
    """
    if path is None or not str(path).strip():
        raise WorkdirError(f"the work directory path is empty ({path!r}); give a directory such "
                           "as --workdir=/tmp/run, --workdir=runs/name or "
                           "--workdir=gs://bucket/run")
    path = str(path)
    if not _is_local(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


def os_reason(error: BaseException) -> str:
    """The operating system's (or TensorFlow's file system's) reason for ``error``, one line."""
    if isinstance(error, OSError) and error.errno:
        return error.strerror or os.strerror(error.errno)
    reason = (getattr(error, "message", None) or str(error) or type(error).__name__).strip()
    return reason.splitlines()[0] if reason else type(error).__name__


def check_writable(workdir: str) -> None:
    """Creates ``workdir`` if needed and checks that files can be written in it.

    Raises:
      WorkdirError: naming the directory and the operating system's reason.
    """
    try:
        tf.io.gfile.makedirs(workdir)
        probe = os.path.join(workdir, f".write-test-{uuid.uuid4().hex[:8]}")
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("ok")
        tf.io.gfile.remove(probe)
    except (tf.errors.OpError, OSError) as e:
        raise WorkdirError(f"cannot write to the work directory {workdir!r}: "
                           f"{os_reason(e)}") from e


def check_workdir(workdir: str, config: ml_collections.ConfigDict | None = None) -> str:
    """Everything a training run checks about its work directory before it writes there.

    Args:
      workdir: the work directory as the user gave it.
      config: the config the run will use; checked against the one the directory was started
        with, if any.

    Returns:
      The normalised path (see :func:`normalize`).

    Raises:
      WorkdirError: the path is empty, the directory's state is not understood
        (:func:`check_state`), the config cannot resume it (:class:`IncompatibleConfigError`), or
        it cannot be written to (or created); nothing has been written (a missing directory is
        not created here, see :func:`check_creatable`).
    """
    path = normalize(workdir)
    saved = check_state(path)
    if saved is not None and config is not None:
        check_resumable(saved, config)
    if tf.io.gfile.isdir(path):
        check_writable(path)
    else:
        check_creatable(path)
    return path


def check_creatable(workdir: str) -> None:
    """Checks, creating nothing, that the missing directory ``workdir`` can be created.

    A run checks its config and data before it creates its work directory, so that a refused run
    leaves nothing behind; the directory is created when the run takes its lock. Only local paths
    are checked (an object store has no directories to create).

    Raises:
      WorkdirError: naming the directory and why it cannot be created.
    """
    if not _is_local(workdir):
        return
    parent = os.path.dirname(workdir.rstrip(os.sep)) or os.sep
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise WorkdirError(f"cannot create the work directory {workdir!r}: {parent!r} is a file, "
                           "not a directory; choose another --workdir")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise WorkdirError(f"cannot create the work directory {workdir!r}: {parent!r} is not "
                           "writable (permission denied or a read-only file system); choose "
                           "another --workdir")


# ------------------------------------------------------------------------------------- lock
def _process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat), or None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            # The command name (field 2) may contain spaces; fields after it are well formed.
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int, start_time: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if start_time is not None:
        current = _process_start_time(pid)
        if current is not None and current != start_time:
            return False  # the pid was recycled by another process
    return True


def _describe(holder: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("started", 0)))
    return (f"pid {holder.get('pid')} on host {holder.get('host')!r}, started {started}, "
            f"command: {holder.get('command', '?')}")


class WorkdirLock:
    """Exclusive use of a work directory by one training run.

    Use as a context manager, or :meth:`acquire` / :meth:`release`. While held, a daemon thread
    refreshes the heartbeat so that other hosts can tell a live holder from a dead one.

    Args:
      workdir: the work directory (created if missing).
      stale_seconds: a holder on another host whose heartbeat is older than this is dead.
    """

    def __init__(self, workdir: str, *, stale_seconds: float = STALE_SECONDS):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self.stale_seconds = stale_seconds
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def _record(self) -> dict[str, Any]:
        now = time.time()
        return {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                "pid_start_time": _process_start_time(os.getpid()), "started": now,
                "heartbeat": now, "command": " ".join(sys.argv) or "python"}

    def _read(self) -> dict[str, Any] | None:
        try:
            with tf.io.gfile.GFile(self.path) as f:
                return json.loads(f.read())
        except tf.errors.NotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError, tf.errors.OpError):
            return {}  # half-written or damaged: treated as stale below

    def _is_stale(self, holder: dict[str, Any]) -> bool:
        if not holder or "pid" not in holder:
            return True
        if holder.get("host") == socket.gethostname():
            return not _pid_alive(int(holder["pid"]), holder.get("pid_start_time"))
        return time.time() - float(holder.get("heartbeat", 0)) > self.stale_seconds

    def _create_exclusive(self, record: dict[str, Any]) -> bool:
        text = json.dumps(record, indent=2)
        if _is_local(self.path):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            return True
        if tf.io.gfile.exists(self.path):
            return False
        with tf.io.gfile.GFile(self.path, "w") as f:
            f.write(text)
        return (self._read() or {}).get("token") == self.token

    def acquire(self) -> "WorkdirLock":
        """Takes the lock, taking over a stale one.

        Raises:
          WorkdirLockedError: another live run holds it (the message names the holder).
        """
        check_writable(self.workdir)
        record = self._record()
        for _ in range(3):
            if self._create_exclusive(record):
                break
            holder = self._read()
            if holder is None:
                continue  # released meanwhile: try again
            if holder:
                check_lock_record(self.path, holder)
            if not self._is_stale(holder):
                raise WorkdirLockedError(
                    f"the work directory {self.workdir!r} is in use by another training run "
                    f"({_describe(holder)}); wait for it to finish or stop it, or use another "
                    "--workdir")
            logging.warning("Taking over the lock of a training run that is no longer alive "
                            "(%s).", _describe(holder) if holder else "unreadable lock file")
            tf.io.gfile.remove(self.path)
        else:
            raise WorkdirLockedError(f"could not lock the work directory {self.workdir!r}: "
                                     "another run keeps taking it")
        self.held = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="workdir-heartbeat")
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                holder = self._read()
                if not holder or holder.get("token") != self.token:
                    return  # taken over: do not fight for it
                holder["heartbeat"] = time.time()
                with tf.io.gfile.GFile(self.path, "w") as f:
                    f.write(json.dumps(holder, indent=2))
            except (tf.errors.OpError, OSError) as e:  # a transient storage error must not kill
                logging.warning("could not refresh the work directory lock: %s", e)

    def release(self) -> None:
        """Releases the lock if this run still holds it."""
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self._read()
        if holder and holder.get("token") == self.token:
            tf.io.gfile.remove(self.path)
        self.held = False

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ----------------------------------------------------------------------------------- config
_REPAIR = "restore it from a backup, or start afresh with a new --workdir"


def _read_json(path: str) -> Any:
    """The JSON value in ``path``.

    Raises:
      WorkdirStateError: the file cannot be read or is not valid JSON (naming the file).
    """
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        what = "is empty" if not text.strip() else (
            f"is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}; truncated?)")
        raise WorkdirStateError(f"{path} {what}; {_REPAIR}") from e


def _read_text(path: str) -> str:
    """The UTF-8 text of the work-directory file ``path``.

    Raises:
      WorkdirStateError: the file cannot be read or is not UTF-8 text (naming the file).
    """
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except (tf.errors.OpError, OSError) as e:
        raise WorkdirStateError(f"cannot read {path}: {os_reason(e)}") from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise WorkdirStateError(f"{path} is not text (byte {e.start} is not UTF-8: overwritten "
                                f"or corrupted?); {_REPAIR}") from e


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value),
                                                                           type(value).__name__)


def state_markers(workdir: str) -> list[str]:
    """The files and folders in ``workdir`` that only a tfmeta training run writes.

    A directory holding any of them is a tfmeta work directory (whether or not its ``config.json``
    survived); the lock file alone is not, since a run that died right after taking the lock left
    nothing else.
    """
    if not tf.io.gfile.isdir(workdir):
        return []
    names = {name.rstrip("/") for name in tf.io.gfile.listdir(workdir)}
    found = [name for name in (CHECKPOINT_DIR, CONFIG_CHANGES_FILE, HISTORY_FILE)
             if name in names]
    found += sorted(n for n in names if n.startswith("eval_") and n.endswith(".json"))
    return found


def _parse_config(path: str, value: Any) -> ml_collections.ConfigDict:
    if not isinstance(value, dict):
        raise WorkdirStateError(f"{path} holds {_json_kind(value)}, not an object of config "
                                f"fields; {_REPAIR}")
    config = config_lib.base_config()
    for key, field in config_lib.flatten(value).items():
        # One field at a time, so that the message names the field that is wrong.
        try:
            config.update_from_flattened_dict({key: field})
        except (KeyError, AttributeError) as e:
            raise WorkdirStateError(f"{path} has the field {key!r}, which is not a config field "
                                    f"of this tfmeta version; {_REPAIR}") from e
        except (TypeError, ValueError) as e:
            default = config_lib.flatten(config_lib.base_config().to_dict()).get(key)
            expected = "another kind of value" if default is None else _json_kind(default)
            raise WorkdirStateError(f"{path}: the field {key!r} holds {field!r} "
                                    f"({_json_kind(field)}) where {expected} belongs; "
                                    f"{_REPAIR}") from e
    return config


def _apply_changes(path: str, config: ml_collections.ConfigDict, history: Any) -> None:
    repair = ("repair or remove it (then the config the run started with applies), or start "
              "afresh with a new --workdir")
    if not isinstance(history, list):
        raise WorkdirStateError(f"{path} holds {_json_kind(history)}, not a list of recorded "
                                f"changes; {repair}")
    for i, entry in enumerate(history):
        changes = entry.get("changes") if isinstance(entry, dict) else None
        if not isinstance(changes, dict):
            raise WorkdirStateError(f"{path}: entry {i} is not an object with \"changes\"; "
                                    f"{repair}")
        for key, change in changes.items():
            if not (isinstance(change, list) and len(change) == 2):
                raise WorkdirStateError(f"{path}: entry {i}, field {key!r} is not a "
                                        f"[saved, new] pair; {repair}")
            try:
                config.update_from_flattened_dict({key: change[1]})
            except (KeyError, AttributeError, TypeError, ValueError) as e:
                raise WorkdirStateError(f"{path}: entry {i} sets the field {key!r} to "
                                        f"{change[1]!r}, which this config cannot hold; "
                                        f"{repair}") from e


def read_input_transform(workdir: str, config: ml_collections.ConfigDict | None = None):
    """The input transform recorded in ``workdir`` (``input_transform.json``), checked.

    Args:
      workdir: a normalised work-directory path.
      config: the run's config; when given, the transform must have its image size (and, for
        task 'images', its channels).

    Returns:
      The :class:`~tfmeta.base.input_transform.InputTransform`, or None when there is no such file.

    Raises:
      WorkdirStateError: the file is damaged (not JSON, missing or wrong-typed fields, values
        that no transform has, or another size than the config's), naming it and the repair.
    """
    from tfmeta.base import input_transform as input_transform_lib

    path = os.path.join(workdir, input_transform_lib.FILE_NAME)
    if not tf.io.gfile.exists(path):
        return None
    value = _read_json(path)
    repair = ("it is written when training starts: restore it from a backup, or start afresh "
              "with a new --workdir")
    if not isinstance(value, dict):
        raise WorkdirStateError(f"{path} holds {_json_kind(value)}, not an object; {repair}")
    for key, kinds, what in (("image_size", (int,), "an integer"),
                             ("channels", (int,), "an integer"),
                             ("invert", (bool,), "a boolean"), ("mean", (list,), "a list"),
                             ("std", (list,), "a list")):
        field = value.get(key)
        if key in ("image_size", "channels") and key not in value:
            raise WorkdirStateError(f"{path} lacks the field {key!r}; {repair}")
        if key in value and (not isinstance(field, kinds) or (bool not in kinds
                                                              and isinstance(field, bool))):
            raise WorkdirStateError(f"{path}: the field {key!r} holds {field!r} "
                                    f"({_json_kind(field)}) where {what} belongs; {repair}")
    try:
        transform = input_transform_lib.InputTransform.from_dict(value)
    except (TypeError, ValueError) as e:
        raise WorkdirStateError(f"{path} is not a valid input transform ({e}); {repair}") from e
    if config is not None and config.task != "sinusoid":
        expected = {"image_size": int(config.data.image_size)}
        if config.task == "images" and config.data.source != "omniglot":
            expected["channels"] = int(config.data.channels)
        for key, want in expected.items():
            if getattr(transform, key) != want:
                raise WorkdirStateError(
                    f"{path} has {key} {getattr(transform, key)} but the run's config has "
                    f"{want}; it belongs to another run: {repair}")
    return transform


def read_history(workdir: str) -> list[dict[str, Any]]:
    """The validation points in ``history.jsonl`` (empty when there is none), checked.

    Raises:
      WorkdirStateError: a line is not a JSON object (naming the file, the line and the repair).
    """
    path = os.path.join(workdir, HISTORY_FILE)
    if not tf.io.gfile.exists(path):
        return []
    points = []
    repair = ("it holds only the validation curve: repair or remove the line (or the file) and "
              "rerun")
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            point = json.loads(line)
        except json.JSONDecodeError as e:
            raise WorkdirStateError(f"{path} line {number} is not valid JSON ({e.msg}); "
                                    f"{repair}") from e
        if not isinstance(point, dict):
            raise WorkdirStateError(f"{path} line {number} holds {_json_kind(point)}, not an "
                                    f"object; {repair}")
        points.append(point)
    return points


# The fields of a lock record and the JSON kinds they hold.
_LOCK_FIELDS = {"token": (str,), "host": (str,), "pid": (int,), "pid_start_time": (str, type(None)),
                "started": (int, float), "heartbeat": (int, float), "command": (str,)}


def check_lock_record(path: str, holder: Any) -> None:
    """Refuses a lock record that is valid JSON but not a lock tfmeta wrote.

    A record that is not JSON at all was cut short by a run that died while writing it, and is
    taken over as stale; one with a field of the wrong kind was written by something else, and
    taking it over could let two runs write the same directory.

    Raises:
      WorkdirStateError: naming the file, the field and the repair.
    """
    repair = (f"if no training run is using this work directory, delete {path} and rerun the "
              "same command")
    if not isinstance(holder, dict):
        raise WorkdirStateError(f"{path} holds {_json_kind(holder)}, not a lock record; {repair}")
    for key, kinds in _LOCK_FIELDS.items():
        if key not in holder:
            continue
        value = holder[key]
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            wanted = " or ".join(_json_kind(k()) if k is not type(None) else "null"
                                 for k in kinds)
            raise WorkdirStateError(f"{path}: the field {key!r} holds {value!r} "
                                    f"({_json_kind(value)}) where {wanted} belongs; {repair}")


def check_lock_file(workdir: str) -> None:
    """Checks ``lock.json`` if there is one (see :func:`check_lock_record`)."""
    path = os.path.join(workdir, LOCK_FILE)
    if not tf.io.gfile.exists(path):
        return
    try:
        holder = json.loads(_read_text(path))
    except (json.JSONDecodeError, WorkdirStateError):
        return  # cut short while being written: stale, taken over by the next run
    check_lock_record(path, holder)


def check_state(workdir: str) -> ml_collections.ConfigDict | None:
    """Checks that tfmeta understands what ``workdir`` holds, before anything is written to it.

    Args:
      workdir: a normalised work-directory path (see :func:`normalize`).

    Returns:
      The config in force (see :func:`load_config`), or None when ``workdir`` holds no tfmeta
      state (it is missing, empty, or holds only unrelated files): a new run.

    Raises:
      WorkdirStateError: ``workdir`` holds checkpoints or other tfmeta state but no
        ``config.json``, or one of the files a training run reads (``config.json``,
        ``config_changes.json``, ``input_transform.json``, ``history.jsonl``, ``lock.json``) is
        damaged (naming the file and the repair).
    """
    if tf.io.gfile.exists(os.path.join(workdir, CONFIG_FILE)):
        config = load_config(workdir)
        # Every other file a training run reads, before it writes anything.
        read_input_transform(workdir, config)
        read_history(workdir)
        check_lock_file(workdir)
        return config
    markers = state_markers(workdir)
    if markers:
        raise WorkdirStateError(
            f"the work directory {workdir!r} holds training state ({', '.join(markers)}) but no "
            f"{CONFIG_FILE}, so its checkpoints cannot be interpreted; restore {CONFIG_FILE} "
            "(the config the run was started with) from a backup, or start afresh with a new "
            "--workdir")
    return None


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config in force in ``workdir``: the original one with every recorded change applied.

    Raises:
      FileNotFoundError: ``workdir`` has no ``config.json`` and nothing else of a training run.
      WorkdirStateError: ``config.json`` is missing although the directory holds checkpoints or
        other training state, or ``config.json`` / ``config_changes.json`` is damaged (not JSON,
        not the right shape, a value of the wrong type, an invalid config); the message names
        the file.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        if state_markers(workdir):
            check_state(workdir)  # raises, saying how to repair
        raise FileNotFoundError(f"no {CONFIG_FILE} in {workdir!r}: is it a tfmeta work directory?")
    config = _parse_config(path, _read_json(path))
    changes_path = os.path.join(workdir, CONFIG_CHANGES_FILE)
    if tf.io.gfile.exists(changes_path):
        _apply_changes(changes_path, config, _read_json(changes_path))
    try:
        config_lib.validate(config)
    except config_lib.ConfigError as e:
        source = path + (f" with {changes_path}" if tf.io.gfile.exists(changes_path) else "")
        raise WorkdirStateError(f"{source} is not a valid config: {e}; {_REPAIR}") from e
    return config


def config_differences(saved: ml_collections.ConfigDict,
                       current: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
    """``{field: (saved value, current value)}`` for every field that differs."""
    old = config_lib.flatten(saved.to_dict())
    new = config_lib.flatten(current.to_dict())
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)}


def check_resumable(saved: ml_collections.ConfigDict,
                    current: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
    """Checks that ``current`` may continue a run started with ``saved``.

    Returns:
      The changed fields (all of them resumable).

    Raises:
      IncompatibleConfigError: naming every changed field that is not resumable.
    """
    changes = config_differences(saved, current)
    refused = {k: v for k, v in changes.items() if not config_lib.is_resumable(k)}
    if refused:
        listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise IncompatibleConfigError(
            f"the work directory was started with another experiment; these fields cannot change "
            f"when resuming (saved -> now): {listed}. Use a new --workdir for a new experiment. "
            f"Fields that may change on resume: {', '.join(config_lib.RESUMABLE_FIELDS)}")
    return changes


def record_config(workdir: str, config: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
    """Writes ``config.json`` for a new run, or checks and records the changes of a resumed one.

    Call it while holding the :class:`WorkdirLock`. ``config.json`` is never rewritten.

    Returns:
      The fields changed with respect to the config in force (empty for a new run).

    Raises:
      IncompatibleConfigError: before anything is written.
      WorkdirStateError: the directory's state is not understood (see :func:`check_state`).
    """
    saved = check_state(workdir)
    if saved is None:
        write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict())
        return {}
    changes = check_resumable(saved, config)
    if changes:
        changes_path = os.path.join(workdir, CONFIG_CHANGES_FILE)
        history = _read_json(changes_path) if tf.io.gfile.exists(changes_path) else []
        history.append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "changes": {k: [a, b] for k, (a, b) in changes.items()}})
        write_json(changes_path, history)
        logging.warning("Resuming with changed fields (saved -> now), recorded in %s: %s",
                        CONFIG_CHANGES_FILE,
                        ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()))
    return changes


def write_json(path: str, value: Any) -> None:
    """Writes ``value`` as JSON atomically (a temporary file renamed into place), via gfile."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
    tf.io.gfile.rename(tmp, path, overwrite=True)


# ------------------------------------------------------------------------------ checkpoints
_CKPT_NUMBER = re.compile(r"-(\d+)$")


def checkpoint_candidates(directory: str) -> list[str]:
    """Checkpoint prefixes in ``directory``, newest (highest number) first.

    Found from the ``checkpoint`` state file and, in case that file is damaged or lost, from the
    ``*.index`` files themselves. A checkpoint is always in ``directory`` itself, so only the base
    name of a path in the state file counts: the file holds paths as they were given when saving
    (relative to the directory, or to the current directory of a run given a relative work
    directory, or absolute where the directory has since been moved), which TensorFlow then joins
    with ``directory`` again.
    """
    found: set[str] = set()
    try:
        state = tf.train.get_checkpoint_state(directory)
        if state is not None:
            found.update(state.all_model_checkpoint_paths)
            if state.model_checkpoint_path:
                found.add(state.model_checkpoint_path)
    except (tf.errors.OpError, ValueError) as e:  # a damaged state file (text proto)
        logging.warning("the checkpoint state file in %s is unreadable (%s); listing the "
                        "checkpoint files instead", directory, e)
    if tf.io.gfile.isdir(directory):
        for name in tf.io.gfile.listdir(directory):
            if name.endswith(".index"):
                found.add(os.path.join(directory, name[: -len(".index")]))
    prefixes = [os.path.join(directory, os.path.basename(p.rstrip("/"))) for p in found]

    def number(prefix: str) -> int:
        match = _CKPT_NUMBER.search(prefix)
        return int(match.group(1)) if match else -1

    return sorted(set(prefixes), key=number, reverse=True)


def restore_newest_readable(checkpoint: tf.train.Checkpoint, directory: str, *,
                            partial: bool) -> str | None:
    """Restores the newest checkpoint in ``directory`` that can be read.

    A checkpoint whose files are missing, truncated or corrupted (TensorFlow checks a CRC32C of
    every tensor) is reported with its path and the error, and the next older one is tried.

    Args:
      checkpoint: the objects to restore.
      directory: the checkpoint directory.
      partial: allow the checkpoint to hold objects ``checkpoint`` does not (restoring a model
        without its optimizer); otherwise every saved object must match.

    Returns:
      The restored checkpoint's prefix, or None when ``directory`` has no checkpoint.

    Raises:
      CheckpointError: there are checkpoints but none can be read (each is named).
    """
    failures = []
    candidates = checkpoint_candidates(directory)
    for prefix in candidates:
        try:
            status = checkpoint.restore(prefix)
            if partial:
                status.expect_partial()
            else:
                status.assert_existing_objects_matched()
        except (tf.errors.OpError, ValueError, IndexError, AssertionError, OSError) as e:
            reason = (getattr(e, "message", None) or str(e) or type(e).__name__).strip()
            reason = f"{type(e).__name__}: {reason.splitlines()[0]}"
            failures.append(f"{prefix} ({reason})")
            logging.warning("Checkpoint %s cannot be read (%s); trying an older one.", prefix,
                            reason)
            continue
        if failures:
            logging.warning("Using %s: the newer checkpoint(s) %s could not be read.", prefix,
                            "; ".join(failures))
        return prefix
    if failures:
        raise CheckpointError(f"no readable checkpoint in {directory!r}: " + "; ".join(failures))
    return None
