r"""Evaluates a trained tfmeta run on held-out tasks, under a stated protocol.

    python -m tfmeta.evaluate --workdir=/tmp/run [--split=test] [--episodes=600] [--inner_steps=N]
        [--queries=Q] [--bn_mode=transductive|support|running] [--output=PATH | --replace]

Prints the mean post-adaptation accuracy (MSE for regression) with its 95% confidence interval
(1.96 * std / sqrt(n)) and the protocol it was measured under: ways, shots, queries per class,
inner steps, batch-norm mode (transductive or not) and episodes. The result is written as JSON to a
new file ``WORKDIR/eval_<split>_<protocol>_<Q>q_<steps>steps_<episodes>ep.json`` (``-2``, ``-3``...
appended rather than overwriting an earlier one), or to ``--output=PATH``, which must not exist.
``--replace`` replaces an earlier result: ``WORKDIR/eval_<split>.json`` (the training run's own
final result), or ``PATH`` together with ``--output``. Nothing but a tfmeta evaluation result is
ever overwritten: a target that exists and is anything else is refused with one ``error:`` line
(exit status 2), before the evaluation runs.
"""

from __future__ import annotations

import json
import os

from absl import flags

from tfmeta import choices, cli
from tfmeta import errors
from tfmeta import config as config_lib


_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory of a tfmeta.train run.")
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Task split.")
_EPISODES = flags.DEFINE_integer("episodes", 600, "Number of evaluation episodes.", lower_bound=1)
_INNER_STEPS = flags.DEFINE_integer(
    "inner_steps", None, "Inner steps at evaluation (default: the config's inner.eval_steps).",
    lower_bound=1, upper_bound=config_lib.MAX_INNER_STEPS)
_QUERIES = flags.DEFINE_integer(
    "queries", None, "Query examples per class (default: the config's data.queries). With "
    "transductive batch norm the accuracy depends on it.", lower_bound=1)
_BN_MODE = flags.DEFINE_enum(
    "bn_mode", None, list(choices.BN_MODES),
    "Batch norm of the query set at evaluation (default: the mode the model was trained with). "
    "'transductive' normalises queries with their own batch statistics (the MAML paper's "
    "protocol); 'support' and 'running' give each query an answer that does not depend on the "
    "other queries.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "Write the JSON result here (a new file, or an earlier result with --replace).")
_REPLACE = flags.DEFINE_bool(
    "replace", False, "Replace an earlier evaluation result: --output, or else "
    "WORKDIR/eval_<split>.json (the training run's result). Never overwrites anything else.")
_STRATEGY = flags.DEFINE_enum("strategy", "default", choices.STRATEGIES,
                              "Distribution strategy.")
_TPU = flags.DEFINE_string("tpu", "", "TPU name or address for --strategy=tpu.")
flags.mark_flags_as_required(["workdir"])


# The keys every evaluation result has (see tfmeta.evaluation.evaluate): a JSON file with them all is
# a result tfmeta wrote, which --replace may overwrite; any other file never is.
_RESULT_KEYS = ("split", "metric", "ci95", "episodes", "step", "inner_steps")


class OutputError(errors.UserError, ValueError):
    """The result cannot be written where asked (the message names the path and what to do)."""


def fixed_path(workdir: str, split: str, *, output: str | None, replace: bool) -> str | None:
    """The result's path when the flags fix it (``output``, or the run's own file), else None."""
    if output:
        return output
    if replace:
        return os.path.join(workdir, f"eval_{split}.json")
    return None


def is_evaluation_result(path: str) -> bool:
    """Whether ``path`` is a JSON evaluation result written by tfmeta (train or evaluate)."""
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


def write_result(path: str, result: dict, *, replace: bool) -> None:
    """Writes ``result`` as JSON to ``path`` atomically, over nothing but an allowed result.

    The JSON goes to a new sibling ``PATH.tfmeta-tmp-<tag>`` that is renamed into place; on any
    failure it is removed, and ``path`` is left as it was.

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


def result_path(workdir: str, result: dict, *, output: str | None, replace: bool) -> str:
    """Where a result goes: ``output``, the run's own file (``replace``) or a new file."""
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


def describe(result: dict) -> str:
    """One line: the number with its confidence interval and the protocol it was measured under."""
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


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return cli.fail(f"unexpected arguments: {argv[1:]}")
    from tfmeta import distribute, evaluation, experiment, workdir

    run_dir = workdir.normalize(_WORKDIR.value)
    fixed = fixed_path(run_dir, _SPLIT.value, output=_OUTPUT.value, replace=_REPLACE.value)
    try:
        if fixed:  # refused before minutes of evaluation, not after
            check_target(fixed, replace=_REPLACE.value)
    except OutputError as e:
        return cli.fail(str(e))
    strategy = distribute.make_strategy(_STRATEGY.value, tpu=_TPU.value)
    exp = experiment.restore(run_dir, strategy=strategy)
    result = evaluation.evaluate(exp, _SPLIT.value, episodes=_EPISODES.value,
                              inner_steps=_INNER_STEPS.value, queries=_QUERIES.value,
                              bn_mode=_BN_MODE.value)
    path = result_path(run_dir, result, output=_OUTPUT.value, replace=_REPLACE.value)
    if distribute.is_chief(strategy):
        try:
            # An automatically named file is new: only an explicit target may be replaced.
            write_result(path, result, replace=_REPLACE.value and fixed is not None)
        except OutputError as e:
            return cli.fail(str(e))
    print(describe(result))
    print(json.dumps(result, sort_keys=True))
    print(f"written to {path}")
    return 0


def run() -> None:
    """Console-script entry point."""
    cli.run(main)


if __name__ == "__main__":
    run()
