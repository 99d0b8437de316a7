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
(exit status 2), before the evaluation runs. The result file is handled by
:mod:`tfmeta.run.evaluation_results`.
"""

from __future__ import annotations

import json

from absl import flags

from tfmeta.base import choices
from tfmeta.run import cli
from tfmeta.run import config as config_lib
from tfmeta.run import evaluation_results as results

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


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return cli.fail(f"unexpected arguments: {argv[1:]}")
    from tfmeta.base import distribute
    from tfmeta.run import evaluation, experiment, workdir

    run_dir = workdir.normalize(_WORKDIR.value)
    fixed = results.fixed_path(run_dir, _SPLIT.value, output=_OUTPUT.value,
                               replace=_REPLACE.value)
    if fixed:  # refused before minutes of evaluation, not after
        results.check_target(fixed, replace=_REPLACE.value)
    strategy = distribute.make_strategy(_STRATEGY.value, tpu=_TPU.value)
    exp = experiment.restore(run_dir, strategy=strategy)
    result = evaluation.evaluate(exp, _SPLIT.value, episodes=_EPISODES.value,
                              inner_steps=_INNER_STEPS.value, queries=_QUERIES.value,
                              bn_mode=_BN_MODE.value)
    path = results.result_path(run_dir, result, output=_OUTPUT.value, replace=_REPLACE.value)
    if distribute.is_chief(strategy):
        # An automatically named file is new: only an explicit target may be replaced.
        results.write_result(path, result, replace=_REPLACE.value and fixed is not None)
    print(results.describe(result))
    print(json.dumps(result, sort_keys=True))
    print(f"written to {path}")
    return 0


def run() -> None:
    """Console-script entry point."""
    cli.run(main)


if __name__ == "__main__":
    run()
