r"""Evaluates a trained tfmeta run on held-out tasks.

    python -m tfmeta.evaluate --workdir=/tmp/run [--split=test] [--episodes=600] [--inner_steps=N]

Prints the mean post-adaptation accuracy (MSE for regression) with its 95% confidence interval
(1.96 * std / sqrt(n)) and writes it, with the number of episodes and the settings used, to
WORKDIR/eval_<split>.json.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory of a tfmeta.train run.")
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Task split.")
_EPISODES = flags.DEFINE_integer("episodes", 600, "Number of evaluation episodes.", lower_bound=1)
_INNER_STEPS = flags.DEFINE_integer(
    "inner_steps", None, "Inner steps at evaluation (default: the config's inner.eval_steps).",
    lower_bound=1)
_STRATEGY = flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multiworker", "tpu"],
                              "Distribution strategy.")
_TPU = flags.DEFINE_string("tpu", "", "TPU name or address for --strategy=tpu.")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from tfmeta import distribute, trainer

    try:
        strategy = distribute.make_strategy(_STRATEGY.value, tpu=_TPU.value)
        exp = trainer.restore(_WORKDIR.value, strategy=strategy)
    except (FileNotFoundError, ValueError, distribute.TPUUnavailableError) as e:
        sys.exit(f"error: {e}")
    result = trainer.evaluate(exp, _SPLIT.value, episodes=_EPISODES.value,
                              inner_steps=_INNER_STEPS.value)
    path = os.path.join(_WORKDIR.value, f"eval_{_SPLIT.value}.json")
    if distribute.is_chief(strategy):
        trainer.write_json(path, result)
    metric = result["metric"]
    scale, unit = (100.0, "%") if metric == "accuracy" else (1.0, "")
    print(f"{_SPLIT.value} {metric}: {scale * result[metric]:.2f}{unit} "
          f"+- {scale * result['ci95']:.2f}{unit} (95% CI) over {result['episodes']} episodes, "
          f"{result['inner_steps']} inner steps, step {result['step']}")
    print(json.dumps(result, sort_keys=True))
    print(f"written to {path}")


def run() -> None:
    """Console-script entry point."""
    app.run(main)


if __name__ == "__main__":
    run()
