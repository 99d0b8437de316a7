r"""Meta-trains a tfmeta experiment.

    python -m tfmeta.train --config=configs/omniglot_maml.py:5way1shot --workdir=/tmp/run \
        [--config.train.iterations=1000] [--strategy=mirrored] [--tpu=local]

What is computed lives in the config; where it runs lives in the flags. Rerunning the same command
resumes from the latest checkpoint; SIGTERM (preemption) saves a checkpoint and exits cleanly,
or, when it comes while a graph is still being built or compiled, stops within
--stop_grace_seconds keeping the checkpoints already written (exit status 143).
At the end the model is evaluated on the config's evaluation split and exported to WORKDIR/export.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from tfmeta.run import cli, preemption
from tfmeta.base import choices
from tfmeta.run import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with a variant: configs/x.py:variant.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (local path or gs://...).")
_STRATEGY = flags.DEFINE_enum("strategy", "default", choices.STRATEGIES,
                              "Distribution strategy.")
_TPU = flags.DEFINE_string("tpu", "",
                           "TPU name or address for --strategy=tpu; 'local' on a TPU VM.")
_EXPORT = flags.DEFINE_bool("export", True, "Export a fast-adaptation SavedModel at the end.")
_DETERMINISTIC = flags.DEFINE_bool("deterministic", False,
                                   "Enable TensorFlow's deterministic ops (bit-exact resumes).")
_STOP_GRACE_SECONDS = flags.DEFINE_float(
    "stop_grace_seconds", 30.0, "After SIGTERM the run saves a checkpoint at the end of its "
    "current training loop; if it is still running this many seconds later (tracing or compiling "
    "a graph, or a long loop) it stops at once, keeping the checkpoints already written.",
    lower_bound=0.001)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # First, so that a SIGTERM during start-up (imports, tracing, compiling) is honoured too.
    stop = preemption.StopRequest(_STOP_GRACE_SECONDS.value).install()
    import tensorflow as tf

    from tfmeta.base import distribute
    from tfmeta.run import trainer, workdir

    if _DETERMINISTIC.value:
        tf.config.experimental.enable_op_determinism()
    config = _CONFIG.value
    # A switch such as --config.model.name resets the config file's fields it makes unread.
    config_lib.settle_fields(config, config_lib.user_fields(sys.argv))
    # Fail on a bad config or an unusable work directory before any device or data is touched.
    config_lib.validate(config)
    workdir.check_workdir(_WORKDIR.value, config)
    if _EXPORT.value:  # the export at the end must not be refused after the training
        from tfmeta.run import exporter
        exporter.check_run_export(_WORKDIR.value)
    strategy = distribute.make_strategy(_STRATEGY.value, tpu=_TPU.value)
    logging.info("strategy %s with %d replicas", _STRATEGY.value, strategy.num_replicas_in_sync)

    exp = trainer.prepare(config, _WORKDIR.value, strategy=strategy)
    summary = trainer.run(exp, _WORKDIR.value, should_stop=stop.is_set)
    if summary["preempted"]:
        return 0
    if _EXPORT.value and distribute.is_chief(strategy):
        from tfmeta.run import exporter
        path = exporter.export_trained(exp, _WORKDIR.value)
        logging.info("exported a fast-adaptation SavedModel to %s", path)
    return 0


def run() -> None:
    """Console-script entry point."""
    cli.run(main, before_parse=lambda argv: config_lib.check_config_argv(argv, "config"),
            after_parse=lambda: config_lib.check_config_loaded(_CONFIG.value, "config"))


if __name__ == "__main__":
    run()
