"""Omniglot accuracy of ``MetaModel.fit`` against ``tfmeta.train`` on the same config and data.

    python benchmarks/keras_accuracy.py --workdir=runs/keras_maml_5w1s [--iterations=4700]
        [--config=configs/omniglot_maml.py:5way1shot] [--archives_dir=DIR] [--data_dir=DIR]

Builds the config's experiment (model, algorithm, Adam, seeds) with :mod:`tfmeta.run.trainer`, wraps
its algorithm in :class:`tfmeta.keras.MetaModel` and meta-trains it with ``fit`` on the trainer's
own training stream (``seed``, input pipeline 0, the config's meta-batch), for ``--iterations``
meta-iterations (``steps_per_epoch`` 100, ``steps_per_execution`` 100 as the trainer's
``steps_per_loop``), validating every 500 iterations on 200 validation episodes (100 batches of
2, one execution).
``BackupAndRestore`` keeps a backup every epoch, so rerunning the same command after an
interruption resumes. Then it evaluates the final parameters with the trainer's own
evaluation (``tfmeta.run.evaluation.evaluate``) on 600 test episodes, 1 query per class, in both
protocols (non-transductive: the config's ``bn_mode``; transductive: the paper's), and writes
``WORKDIR/eval_test*.json`` and one JSON line per protocol on stdout.

The trainer's side is ``tfmeta.train`` with the same config and ``train.iterations`` followed
by ``tfmeta.evaluate`` (see ``--print_trainer_commands``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tfmeta.run import evaluation, experiment
from tfmeta.data import omniglot
from tfmeta.run.config import load_file as load_config  # noqa: E402
from tfmeta.keras import MetaModel  # noqa: E402

STEPS_PER_EPOCH = 100
VALIDATE_EVERY_EPOCHS = 5
VALIDATION_EPISODES = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--config",
                        default=os.path.join(REPO, "configs", "omniglot_maml.py") + ":5way1shot")
    parser.add_argument("--iterations", type=int, default=4700)
    parser.add_argument("--archives_dir", default=os.environ.get("TFMETA_OMNIGLOT_ARCHIVES", ""))
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--print_trainer_commands", action="store_true")
    args = parser.parse_args()
    workdir = os.path.abspath(args.workdir)
    if args.print_trainer_commands:
        run = workdir + "_trainer"
        print(f"python -m tfmeta.train --config={args.config} --workdir={run} "
              f"--config.train.iterations={args.iterations} --config.train.eval_every=500")
        print(f"python -m tfmeta.evaluate --workdir={run} --split=test --episodes=600 "
              "--bn_mode=transductive --queries=1")
        return
    if args.iterations % STEPS_PER_EPOCH:
        parser.error(f"--iterations must be a multiple of {STEPS_PER_EPOCH}")
    os.makedirs(workdir, exist_ok=True)
    config = load_config(args.config)
    config.train.iterations = args.iterations
    data = omniglot.load(data_dir=args.data_dir or None, archives_dir=args.archives_dir or None,
                         image_size=config.data.image_size, subset=config.data.subset)
    exp = experiment.build_experiment(config, tf.distribute.get_strategy(), data=data)
    meta = MetaModel(exp.algorithm)
    meta.compile(optimizer=exp.optimizer, steps_per_execution=config.train.steps_per_loop)
    batch = config.train.meta_batch_size
    train = exp.source.make_dataset("train", 0, batch, config.seed, 0)
    # Batches of episodes such that one execution of steps_per_loop steps is the trainer's
    # validation (train.eval_episodes episodes).
    validation_batch = VALIDATION_EPISODES // config.train.steps_per_loop
    validation = exp.source.make_dataset("validation", 0, validation_batch, config.eval.seed, 0)
    t0 = time.perf_counter()
    meta.fit(train, epochs=args.iterations // STEPS_PER_EPOCH, steps_per_epoch=STEPS_PER_EPOCH,
             validation_data=validation,
             validation_steps=config.train.steps_per_loop,
             validation_freq=VALIDATE_EVERY_EPOCHS, verbose=2,
             callbacks=[keras.callbacks.BackupAndRestore(os.path.join(workdir, "backup")),
                        keras.callbacks.CSVLogger(os.path.join(workdir, "log.csv"), append=True)])
    fit_seconds = time.perf_counter() - t0
    # The evaluation counts the experiment's step counter; fit keeps its own.
    exp.step.assign(meta.meta_iteration)
    for name, kwargs in (("eval_test.json", {}),
                         ("eval_test_transductive_1q.json",
                          {"bn_mode": "transductive", "queries": 1})):
        result = evaluation.evaluate(exp, "test", episodes=config.eval.episodes, **kwargs)
        result.update(trained_with="keras_fit", fit_seconds_this_process=round(fit_seconds, 1))
        with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, sort_keys=True)
        print(json.dumps(result, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
