"""Writing a SavedModel atomically, and the rule for what an export may replace.

Nothing is deleted that tfmeta did not create. An export writes only to a path that does not
exist, or replaces a previous tfmeta SavedModel: a directory whose whole tree is exactly what an
export writes (``saved_model.pb``, ``fingerprint.pb``, ``assets/tfmeta.json``, ``variables/``'s
index and data shards; :func:`foreign_entry`), with ``replace``. Anything else (a file, a symbolic
link, a work directory, a directory holding other files at any depth, a protected work directory's
ancestors or its checkpoint directory) is refused with one error line naming the output as the
caller gave it (:class:`Wording`) and the first foreign file.

Writing is atomic with respect to the output path: the model is written to a new sibling
``PATH.tfmeta-tmp-<12 hex digits>``, holding a marker file written first, and renamed into place
only when complete; a previous model at PATH is kept until then (moved to
``PATH.tfmeta-old-<tag>`` for the duration of the swap and deleted after). A failed export (a
full disk, an error, Ctrl-C) removes its temporary. Leftovers of an export that was killed are
removed by the next export to the same path, which touches only siblings with exactly that name
pattern whose whole tree proves them an export's (the marker and parts of a SavedModel only, or a
complete tfmeta SavedModel).

This module knows nothing of graphs or metadata: it saves a ``tf.Module`` with the signatures it
is given.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import uuid
from collections.abc import Mapping
from typing import Any

import tensorflow as tf
from absl import logging

from tfmeta.base import signatures as names
from tfmeta.base.version import __version__
from tfmeta.serving.errors import ExportError

# Where a training run keeps its own export (WORKDIR/export), suggested in refusals.
EXPORT_DIR = "export"
# How refusals name WORKDIR/export when the caller gave no output.
RUN_EXPORT = "the run's export directory"

_FILE = None
# Every file and folder a tfmeta export writes, by name at its level (regular expressions; a
# folder maps to what it may hold, a file to _FILE). A directory holding anything else, at any
# depth (a user's notes in assets/, a file dropped into variables/), holds something that is not
# tfmeta's: it is never replaced and never deleted.
_EXPORT_TREE: dict[str, Any] = {
    r"saved_model\.pb": _FILE,
    r"fingerprint\.pb": _FILE,
    r"assets": {re.escape(names.METADATA_ASSET): _FILE},
    r"variables": {r"variables\.index": _FILE, r"variables\.data-\d{5}-of-\d{5}": _FILE},
}
# Written first into every temporary directory: the proof, for a later export's clean-up, that a
# leftover directory is a killed export's and not something of the user's.
_TEMP_MARKER = ".tfmeta-export-in-progress.json"
_PART = r"part-\d{5}-of-\d{5}(\.index|\.data-\d{5}-of-\d{5})"
# What a killed export's temporary may hold: the marker, and the parts of a SavedModel, including
# the variables' own temporary (TensorFlow writes variables/variables_temp/part-* first, or
# variables/variables.part-* on S3, then merges them).
_PARTIAL_TREE: dict[str, Any] = {
    **_EXPORT_TREE,
    re.escape(_TEMP_MARKER): _FILE,
    r"variables": {**_EXPORT_TREE[r"variables"], r"variables\." + _PART: _FILE,
                   r"variables_temp": {_PART: _FILE}},
}
_TEMP_KINDS = ("tmp", "old")
_TAG_LENGTH = 12


@dataclasses.dataclass(frozen=True)
class Wording:
    """How the caller names the output and the permission to replace it, in refusals.

    Attributes:
      output: what precedes the output path: ``"--output"`` on the command line, ``"output"``
        from Python, a description for a path the caller did not give (the run's own export).
      replace: how to ask for a replacement: ``"--replace"`` or ``"replace=True"``.
    """

    output: str = "output"
    replace: str = "replace=True"

    def the_output(self, path: str) -> str:
        """``--output 'PATH'``, ``output 'PATH'`` or ``the run's export directory 'PATH'``."""
        return f"{self.output} {path!r}"


PYTHON = Wording()
COMMAND_LINE = Wording("--output", "--replace")




def _write_saved_model(module: tf.Module, path: str,
                       functions: Mapping[str, Any] | None) -> None:
    tf.saved_model.save(module, path, signatures=dict(functions) if functions else None)

def _listdir(path: str) -> list[str]:
    # Object stores list subdirectories with a trailing "/".
    return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(path))


def normalise(path: str) -> str:
    """An absolute local path or a remote URL, without a trailing "/"."""
    if "://" in path:
        return path.rstrip("/")
    return os.path.abspath(os.path.expanduser(path))


def _within(path: str, ancestor: str) -> bool:
    """Whether ``path`` is ``ancestor`` or lies inside it, symbolic links resolved."""
    if "://" not in path:
        path, ancestor = os.path.realpath(path), os.path.realpath(ancestor)
    return path == ancestor or path.startswith(ancestor.rstrip("/") + "/")


def _is_link(path: str) -> bool:
    return "://" not in path and os.path.islink(path)


def foreign_entry(path: str, tree: dict[str, Any] | None = None) -> str | None:
    """The first entry under the directory ``path`` that a tfmeta export does not write.

    Walks the whole tree in sorted order. An entry is foreign when its name is not one an export
    writes at its level, when it is a folder where the export writes a file (or the reverse), or
    when it is a symbolic link (whatever it points to is someone else's).

    Args:
      path: a directory (local or remote).
      tree: the allowed names (default: a complete export's, ``_EXPORT_TREE``).

    Returns:
      The foreign entry's path relative to ``path`` (e.g. ``"assets/notes.txt"``), or None when
      every file and folder is one an export writes.

    Raises:
      tf.errors.OpError: a folder cannot be listed.
    """
    tree = _EXPORT_TREE if tree is None else tree
    for name in _listdir(path):
        full = os.path.join(path, name)
        pattern = next((p for p in tree if re.fullmatch(p, name)), None)
        if pattern is None or _is_link(full):
            return name
        expected = tree[pattern]
        if (expected is not _FILE) != tf.io.gfile.isdir(full):
            return name
        if expected is not _FILE:
            inner = foreign_entry(full, expected)
            if inner is not None:
                return f"{name}/{inner}"
    return None


def is_tfmeta_export(path: str) -> bool:
    """Whether ``path`` is a directory holding a tfmeta SavedModel and nothing else.

    A tfmeta SavedModel has ``saved_model.pb`` and the metadata asset ``assets/tfmeta.json``, and
    every file and folder in it, at any depth, is one an export writes (:func:`foreign_entry`):
    anything else (a checkpoint, a config, a user's file in ``assets/`` or ``variables/``) makes
    the directory something else, which an export never replaces.
    """
    try:
        if _is_link(path) or not tf.io.gfile.isdir(path):
            return False
        return (not tf.io.gfile.isdir(os.path.join(path, "saved_model.pb"))
                and tf.io.gfile.exists(os.path.join(path, "saved_model.pb"))
                and tf.io.gfile.exists(os.path.join(path, "assets", names.METADATA_ASSET))
                and foreign_entry(path) is None)
    except tf.errors.OpError:
        return False


def _describe(path: str) -> str:
    """What an existing path that is not a tfmeta SavedModel is, for the refusal message."""
    if _is_link(path):
        return f"is a symbolic link (to {os.path.realpath(path)!r})"
    if not tf.io.gfile.isdir(path):
        return "is a file"
    names = _listdir(path)
    if not names:
        return "is an empty directory"
    if "checkpoints" in names or "config.json" in names:
        return "is a training work directory"
    foreign = foreign_entry(path)
    if "saved_model.pb" in names and foreign is not None:
        return (f"holds a SavedModel together with {foreign!r}, which a tfmeta export does not "
                "write")
    if "saved_model.pb" in names:
        return "holds a SavedModel that tfmeta did not export (no assets/tfmeta.json)"
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f"is a directory holding other files ({shown})"


def _repair(path: str, wording: Wording) -> str:
    """How to free ``path`` (a refused existing output), for the refusal message."""
    foreign = None
    if tf.io.gfile.isdir(path) and not _is_link(path):
        foreign = foreign_entry(path)
        if foreign is not None and "saved_model.pb" not in _listdir(path):
            foreign = None  # not a model with an extra file: all of it is someone else's
    if foreign is not None:
        move = f"move {os.path.join(path, foreign)!r} out of it to have the model replaced"
    else:
        move = "move what is there elsewhere"
    if wording.output == RUN_EXPORT:  # the caller gave no output to change
        return f"{move}; that directory holds only the run's SavedModel"
    return f"{move}, or choose a path that does not exist"


def check_output(output: str, *, replace: bool = False, workdir: str | None = None,
                 wording: Wording = PYTHON) -> str:
    """Checks that a SavedModel may be written to ``output`` without losing anything.

    The output may be a path that does not exist, or (with ``replace``) a previous tfmeta
    SavedModel (:func:`is_tfmeta_export`: nothing in its whole tree but what an export writes).
    Anything else that exists is refused: a file, a symbolic link, a work directory, a directory
    holding other files (at any depth), even an empty one.

    Args:
      output: the SavedModel directory asked for (local or remote).
      replace: whether a previous tfmeta SavedModel at ``output`` may be replaced.
      workdir: the work directory the model comes from: ``output`` may be neither the work
        directory nor one of its ancestors, nor lie inside its checkpoint directory.
      wording: how the caller names ``output`` and ``replace`` (:data:`PYTHON`,
        :data:`COMMAND_LINE`), so that a refusal names what the caller actually gave.

    Returns:
      ``output`` normalised: absolute (local), without a trailing "/".

    Raises:
      ExportError: naming ``output``, why it cannot be written and what to do instead.
    """
    path = normalise(output)
    parent, base = os.path.split(path)
    subject = wording.the_output(output)
    remote_root = "://" in path and "/" not in path.split("://", 1)[1]
    if base in ("", ".", "..") or not parent or remote_root:
        raise ExportError(f"{subject} is a file system or bucket root; choose a new directory "
                          "path for the SavedModel, such as DIR/export")
    if workdir is not None:
        work = normalise(workdir)
        if _within(work, path):
            what = ("is the work directory" if _within(path, work) else
                    "contains the work directory")
            raise ExportError(f"{subject} {what} {workdir!r}; choose a path of its own for the "
                              f"SavedModel, such as {os.path.join(workdir, EXPORT_DIR)!r}")
        checkpoints = os.path.join(work, "checkpoints")
        if _within(path, checkpoints):
            raise ExportError(f"{subject} is inside the checkpoint directory {checkpoints!r}; "
                              "choose a path outside it, such as "
                              f"{os.path.join(workdir, EXPORT_DIR)!r}")
    try:
        exists = tf.io.gfile.exists(path) or _is_link(path)
        if not exists:
            return path
        if is_tfmeta_export(path):
            if replace:
                return path
            raise ExportError(f"{subject} already holds a tfmeta SavedModel; pass "
                              f"{wording.replace} to replace it, or choose a path that does not "
                              "exist")
        what, repair = _describe(path), _repair(path, wording)
    except tf.errors.OpError as e:
        raise ExportError(f"cannot write the SavedModel to {output!r}: {reason(e)}") from e
    # The run's own export directory is replaced without asking: no option to mention.
    even = "" if wording.output == RUN_EXPORT else f" (not even with {wording.replace})"
    raise ExportError(f"{subject} {what}; an export only creates a new directory or replaces a "
                      f"tfmeta SavedModel, so nothing was written{even}: {repair}")


def _temporary_name(base: str, kind: str) -> str:
    return f"{base}.tfmeta-{kind}-{uuid.uuid4().hex[:_TAG_LENGTH]}"


def _temporary_kind(name: str, base: str) -> str | None:
    """``"tmp"`` or ``"old"`` when ``name`` is exactly an export temporary's name for ``base``."""
    for kind in _TEMP_KINDS:
        prefix = f"{base}.tfmeta-{kind}-"
        tag = name[len(prefix):] if name.startswith(prefix) else ""
        if len(tag) == _TAG_LENGTH and all(c in "0123456789abcdef" for c in tag):
            return kind
    return None


def _marker_is_live(path: str) -> bool:
    """Whether the export that wrote the marker in ``path`` is still running on this machine."""
    try:
        with tf.io.gfile.GFile(os.path.join(path, _TEMP_MARKER)) as f:
            marker = json.loads(f.read())
        pid = int(marker["pid"])
        if marker.get("host") != socket.gethostname() or pid <= 0:
            return False
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, ValueError, KeyError, TypeError, tf.errors.OpError):
        return False
    except PermissionError:  # the process exists, owned by someone else
        return True


def _is_own_temporary(path: str, kind: str) -> bool:
    """Whether a directory with a temporary's name provably is a killed export's.

    A ``tmp`` directory holds the marker an export writes first (plus whatever part of a
    SavedModel it got to write), or a complete tfmeta SavedModel (killed after removing the
    marker, before renaming); an ``old`` directory is a complete tfmeta SavedModel moved aside.
    """
    try:
        if _is_link(path) or not tf.io.gfile.isdir(path):
            return False
        if kind == "tmp" and _TEMP_MARKER in _listdir(path):
            # Only what an export writes, at any depth: a user's file inside is never deleted.
            return foreign_entry(path, _PARTIAL_TREE) is None and not _marker_is_live(path)
    except tf.errors.OpError:
        return False
    return is_tfmeta_export(path)


def _clean_stale(output: str) -> None:
    """Recovers from an export killed mid-swap and removes leftovers of killed exports.

    Only directories named exactly ``BASE.tfmeta-tmp-<tag>`` / ``BASE.tfmeta-old-<tag>`` (a
    12-digit hexadecimal tag) next to ``output`` whose content proves them an export's own
    temporaries (:func:`_is_own_temporary`) are touched; any other neighbour is left alone. If
    ``output`` is missing but a moved-aside previous model exists, the kill happened between the
    two renames of a replacement: that model is moved back.
    """
    parent, base = os.path.split(output)
    if not tf.io.gfile.isdir(parent):
        return
    for name in _listdir(parent):
        kind = _temporary_kind(name, base)
        path = os.path.join(parent, name)
        if kind is None or not _is_own_temporary(path, kind):
            continue
        if kind == "old" and not tf.io.gfile.exists(output):
            logging.warning("restoring %s from %s, left by an export killed while replacing it",
                            output, path)
            tf.io.gfile.rename(path, output)
        else:
            logging.info("removing %s, left by a killed export", path)
            tf.io.gfile.rmtree(path)


def _missing_ancestors(path: str) -> list[str]:
    """The ancestors of ``path`` that do not exist yet, deepest first."""
    missing = []
    parent = os.path.dirname(path)
    while parent and not parent.endswith("://") and not tf.io.gfile.exists(parent):
        missing.append(parent)
        if os.path.dirname(parent) == parent:
            break
        parent = os.path.dirname(parent)
    return missing


def _remove_quietly(paths: list[str]) -> None:
    """Best-effort removal of what a failed export created (directories, deepest first)."""
    for path in paths:
        try:
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
        except (tf.errors.OpError, OSError) as e:
            logging.warning("could not remove %s after a failed export: %s", path, reason(e))


def write_atomically(module: tf.Module, output: str, *,
                     signatures: Mapping[str, Any] | None = None, replace: bool = False,
                     workdir: str | None = None, wording: Wording = PYTHON) -> str:
    """Saves ``module`` to ``output`` so that ``output`` is never a partial model.

    The model is written to a new sibling ``BASE.tfmeta-tmp-<tag>`` (a marker file first, so
    that a later export can tell a killed export's leftover from anything else) and renamed into
    place once complete. Only a path that does not exist or, with ``replace``, a previous tfmeta
    SavedModel is written (see :func:`check_output`); a replaced model is moved aside to
    ``BASE.tfmeta-old-<tag>`` for the duration of the swap and deleted after. Whatever happens
    (an error, a full disk, KeyboardInterrupt), the temporary and any parent directories the
    export created are removed. Not safe against concurrent exports to the same path.

    Args:
      module: the module to save.
      output: SavedModel directory (local or gs://).
      signatures: the serving signatures, by name (concrete functions), as
        ``tf.saved_model.save`` takes them; None saves none.
      replace: whether a previous tfmeta SavedModel at ``output`` may be replaced.
      workdir: the work directory the model comes from (protected, see :func:`check_output`).
      wording: how refusals name ``output`` and ``replace`` (see :func:`check_output`).

    Returns:
      ``output`` normalised (absolute for a local path).

    Raises:
      ExportError: ``output`` exists and may not be replaced, or cannot be written (naming it
        and the reason); nothing was changed at ``output`` then.
    """
    output = check_output(output, replace=replace, workdir=workdir, wording=wording)
    parent, base = os.path.split(output)
    created = _missing_ancestors(output)
    tmp = os.path.join(parent, _temporary_name(base, "tmp"))
    try:
        _clean_stale(output)
        # A model restored by the clean-up must be checked again.
        output = check_output(output, replace=replace, workdir=workdir, wording=wording)
        tf.io.gfile.makedirs(parent)
        # Creating the temporary directory and its marker first turns "this location cannot be
        # written" (read-only or virtual file systems, missing permissions) into one clear error.
        tf.io.gfile.mkdir(tmp)
        with tf.io.gfile.GFile(os.path.join(tmp, _TEMP_MARKER), "w") as f:
            f.write(json.dumps({"target": output, "pid": os.getpid(),
                                "host": socket.gethostname(), "tfmeta": __version__}))
        _write_saved_model(module, tmp, signatures)
        tf.io.gfile.remove(os.path.join(tmp, _TEMP_MARKER))
        if tf.io.gfile.exists(output):
            _swap(tmp, output, base)
        else:
            tf.io.gfile.rename(tmp, output, overwrite=False)
    except BaseException as e:
        _remove_quietly([tmp, *created])
        if isinstance(e, (tf.errors.OpError, OSError)):
            raise ExportError(f"cannot write the SavedModel to {output!r}: {reason(e)}; "
                              "nothing was changed there") from e
        raise
    return output


def _swap(tmp: str, output: str, base: str) -> None:
    """Replaces the tfmeta SavedModel at ``output`` by the complete one at ``tmp``."""
    if not is_tfmeta_export(output):  # changed since it was checked
        raise ExportError(f"{output!r} changed during the export and is no longer a tfmeta "
                          "SavedModel; it was left as it is")
    old = os.path.join(os.path.dirname(output), _temporary_name(base, "old"))
    tf.io.gfile.rename(output, old)
    try:
        tf.io.gfile.rename(tmp, output)
    except BaseException:
        tf.io.gfile.rename(old, output)
        raise
    try:
        tf.io.gfile.rmtree(old)
    except (tf.errors.OpError, OSError) as e:
        # The new model is in place; the next export to this path removes the old one.
        logging.warning("could not remove the replaced model %s: %s", old, reason(e))


def reason(e: BaseException) -> str:
    """The first line of an error's message (TensorFlow's errors carry a traceback)."""
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    return text.strip().splitlines()[0]

