"""Evaluation result files: where a result goes, and never over anything but an earlier result.

:mod:`tfmeta.evaluate` writes the result of :func:`tfmeta.run.evaluation.evaluate` as JSON, to a new
file ``WORKDIR/eval_<split>_<protocol>_<Q>q_<steps>steps_<episodes>ep.json`` (``-2``, ``-3``...
appended rather than overwriting an earlier one), to a given output path, which must not exist,
or, when asked to replace, over an earlier result: that output, or ``WORKDIR/eval_<split>.json``
(the training run's own final result). Nothing but a tfmeta evaluation result is ever
overwritten: a target that exists and is anything else raises :class:`OutputError`. Paths go
through ``tf.io.gfile`` (``gs://`` works too); TensorFlow is imported only when used.
"""

from __future__ import annotations

import json
import os
from typing import Any

from tfmeta.base import errors

# The keys every evaluation result has (see tfmeta.run.evaluation.evaluate): a JSON file with them all
# is a result tfmeta wrote, which --replace may overwrite; any other file never is.
_RESULT_KEYS = ("split", "metric", "ci95", "episodes", "step", "inner_steps")


class OutputError(errors.UserError, ValueError):
    """The result cannot be written where asked (the message names the path and what to do)."""


def fixed_path(workdir: str, split: str, *, output: str | None, replace: bool) -> str | None:
    """The result's path when the caller fixes it, before the evaluation runs.

    Args:
      workdir: the run's work directory.
      split: the evaluated split.
      output: the path asked for, if any.
      replace: whether an earlier result is to be replaced.

    Returns:
      ``output`` if given; else with ``replace`` the run's own ``WORKDIR/eval_<split>.json``;
      else None (the result gets a new file, named after its protocol: :func:`result_path`).
    """
    if output:
        return output
    if replace:
        return os.path.join(workdir, f"eval_{split}.json")
    return None


def is_evaluation_result(path: str) -> bool:
    """Tells whether ``path`` is a JSON evaluation result written by tfmeta (train or evaluate).

    Args:
      path: any path.

    Returns:
      True for a JSON object with every key of an evaluation result and a numeric value of its
      ``metric``; False for anything else, a directory or an unreadable path.
    """
    import tensorflow as tf

    try:
        if tf.io.gfile.isdir(path):
            return False
        with tf.io.gfile.GFile(path) as f:
            value = json.loads(f.read())
    except (tf.errors.OpError, OSError, UnicodeDecodeError, ValueError):
        return False
    return (isinstance(value, dict) and all(key in value for key in _RESULT_KEYS)
            and isinstance(value["metric"], str)
            and isinstance(value.get(value["metric"]), (int, float)))


def check_target(path: str, *, replace: bool) -> None:
    """Checks that a result may be written to ``path``: new, or an earlier result to replace.

    Args:
      path: where the result is to go.
      replace: whether an earlier evaluation result there may be replaced.

    Raises:
      OutputError: ``path`` exists and is not to be replaced, or is not a tfmeta evaluation
        result (a directory, any other file), which is never overwritten.
    """
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return
    if not is_evaluation_result(path):
        what = "a directory" if tf.io.gfile.isdir(path) else "a file that is not a tfmeta " \
                                                              "evaluation result"
        raise OutputError(f"{path!r} exists and is {what}; it is never overwritten, even with "
                          "--replace: choose another --output")
    if not replace:
        raise OutputError(f"{path!r} already holds an evaluation result; pass --replace to "
                          "replace it, or choose another --output")


def write_result(path: str, result: dict[str, Any], *, replace: bool) -> None:
    """Writes ``result`` as JSON to ``path`` atomically, over nothing but an allowed result.

    The JSON goes to a new sibling ``PATH.tfmeta-tmp-<tag>`` that is renamed into place; on any
    failure it is removed, and ``path`` is left as it was.

    Args:
      path: where the result goes.
      result: the evaluation result.
      replace: whether an earlier evaluation result at ``path`` may be replaced.

    Raises:
      OutputError: ``path`` may not be written (see :func:`check_target`), or writing failed.
    """
    import uuid

    import tensorflow as tf

    check_target(path, replace=replace)
    tmp = f"{path}.tfmeta-tmp-{uuid.uuid4().hex[:12]}"
    try:
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
        # Checked again right before the rename: without replace, a file that appeared since is
        # kept (rename refuses to overwrite it).
        check_target(path, replace=replace)
        tf.io.gfile.rename(tmp, path, overwrite=replace)
    except BaseException as e:
        try:
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.remove(tmp)
        except (tf.errors.OpError, OSError):
            pass
        if isinstance(e, (tf.errors.OpError, OSError)):
            reason = (getattr(e, "message", None) or str(e)).strip().splitlines()[0]
            raise OutputError(f"cannot write the result to {path!r}: {reason}") from e
        raise


def result_path(workdir: str, result: dict[str, Any], *, output: str | None,
                replace: bool) -> str:
    """Where a result goes: ``output``, the run's own file (``replace``) or a new file.

    Args:
      workdir: the run's work directory.
      result: the evaluation result; its protocol names a new file.
      output: the path asked for, if any.
      replace: whether an earlier result is to be replaced.

    Returns:
      The path from :func:`fixed_path` if any; else a new file in ``workdir`` named after the
      result's protocol, with ``-2``, ``-3``... appended when that name is taken.
    """
    import tensorflow as tf

    split = result["split"]
    fixed = fixed_path(workdir, split, output=output, replace=replace)
    if fixed:
        return fixed
    protocol = "transductive" if result.get("transductive") else result.get("bn_mode", "eval")
    queries = result.get("queries", result.get("k_query", "x"))
    stem = (f"eval_{split}_{protocol}_{queries}q_{result['inner_steps']}steps_"
            f"{result['episodes']}ep")
    path, n = os.path.join(workdir, f"{stem}.json"), 1
    while tf.io.gfile.exists(path):
        n += 1
        path = os.path.join(workdir, f"{stem}-{n}.json")
    return path


def describe(result: dict[str, Any]) -> str:
    """Describes a result in one line.

    Args:
      result: the evaluation result.

    Returns:
      The number with its 95% confidence interval and the protocol it was measured under.
    """
    metric = result["metric"]
    scale, unit = (100.0, "%") if metric == "accuracy" else (1.0, "")
    task = (f"{result['ways']}-way {result['shots']}-shot, {result['queries']} queries per class"
            if "ways" in result else
            f"{result.get('k_support')} support / {result.get('k_query')} query points")
    protocol = ("transductive batch norm (queries normalised together)"
                if result.get("transductive") else
                f"non-transductive (bn_mode={result.get('bn_mode')}: each query on its own)")
    return (f"{result['split']} {metric}: {scale * result[metric]:.2f}{unit} "
            f"+- {scale * result['ci95']:.2f}{unit} (95% CI) over {result['episodes']} episodes; "
            f"{task}, {result['inner_steps']} inner steps, {protocol}; step {result['step']}")
