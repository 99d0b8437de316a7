r"""Evaluates a trained tfmeta run on held-out tasks, under a stated protocol.

    python -m tfmeta.evaluate --workdir=/tmp/run [--split=test] [--episodes=600] [--inner_steps=N]
        [--queries=Q] [--bn_mode=transductive|support|running] [--output=PATH | --replace]

Prints the mean post-adaptation accuracy (MSE for regression) with its 95% confidence interval
(1.96 * std / sqrt(n)) and the protocol it was measured under: ways, shots, queries per class,
inner steps, batch-norm mode (transductive or not) and episodes. The result is written as JSON to a
new file ``WORKDIR/eval_<split>_<protocol>_<Q>q_<steps>steps_<episodes>ep.json`` (``-2``, ``-3``...
appended rather than overwriting an earlier one), or to ``--output``; ``--replace`` writes
``WORKDIR/eval_<split>.json``, replacing the training run's own final result.
"""

from __future__ import annotations

import json
import os

from absl import flags

from tfmeta import cli

BN_MODES = ("transductive", "support", "running")

_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory of a tfmeta.train run.")
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Task split.")
_EPISODES = flags.DEFINE_integer("episodes", 600, "Number of evaluation episodes.", lower_bound=1)
_INNER_STEPS = flags.DEFINE_integer(
    "inner_steps", None, "Inner steps at evaluation (default: the config's inner.eval_steps).",
    lower_bound=1)
_QUERIES = flags.DEFINE_integer(
    "queries", None, "Query examples per class (default: the config's data.queries). With "
    "transductive batch norm the accuracy depends on it.", lower_bound=1)
_BN_MODE = flags.DEFINE_enum(
    "bn_mode", None, list(BN_MODES),
    "Batch norm of the query set at evaluation (default: the mode the model was trained with). "
    "'transductive' normalises queries with their own batch statistics (the MAML paper's "
    "protocol); 'support' and 'running' give each query an answer that does not depend on the "
    "other queries.")
_OUTPUT = flags.DEFINE_string("output", None, "Write the JSON result here.")
_REPLACE = flags.DEFINE_bool(
    "replace", False, "Write WORKDIR/eval_<split>.json, replacing the training run's result.")
_STRATEGY = flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multiworker", "tpu"],
                              "Distribution strategy.")
_TPU = flags.DEFINE_string("tpu", "", "TPU name or address for --strategy=tpu.")
flags.mark_flags_as_required(["workdir"])


def result_path(workdir: str, result: dict, *, output: str | None, replace: bool) -> str:
    """Where a result goes: ``output``, the run's own file (``replace``) or a new file."""
    import tensorflow as tf

    if output:
        return output
    split = result["split"]
    if replace:
        return os.path.join(workdir, f"eval_{split}.json")
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
    from tfmeta import distribute, trainer, workdir

    run_dir = workdir.normalize(_WORKDIR.value)
    strategy = distribute.make_strategy(_STRATEGY.value, tpu=_TPU.value)
    exp = trainer.restore(run_dir, strategy=strategy)
    result = trainer.evaluate(exp, _SPLIT.value, episodes=_EPISODES.value,
                              inner_steps=_INNER_STEPS.value, queries=_QUERIES.value,
                              bn_mode=_BN_MODE.value)
    path = result_path(run_dir, result, output=_OUTPUT.value, replace=_REPLACE.value)
    if distribute.is_chief(strategy):
        try:
            workdir.write_json(path, result)
        except Exception as e:  # noqa: BLE001 - any storage error is reported as the path's
            return cli.fail(f"cannot write the result to {path!r}: {e}")
    print(describe(result))
    print(json.dumps(result, sort_keys=True))
    print(f"written to {path}")
    return 0


def run() -> None:
    """Console-script entry point."""
    cli.run(main)


if __name__ == "__main__":
    run()
