r"""Exporting a training run: from a work directory, or the experiment a run has in memory.

    python -m tfmeta.export --workdir=DIR [--output=PATH [--replace]]   # default PATH: DIR/export

(the binary, :mod:`tfmeta.export`; this module is the library and reads no flags).

This is the run tier's side of an export: it reads the config (and the input transform training
recorded) of a work directory, or takes a built :class:`~tfmeta.run.experiment.Experiment`,
describes it (:func:`metadata_from_config`) and hands it to :func:`tfmeta.serving.export.export`,
which builds the graph (:mod:`tfmeta.serving.graph`: the signatures, the inner loop inside the
graph), completes the metadata (:mod:`tfmeta.serving.metadata`) and writes the SavedModel
atomically (:mod:`tfmeta.serving.writer`: what may be replaced, temporaries, clean-up).

The run's own ``WORKDIR/export`` is always replaced if it holds a previous tfmeta SavedModel; any
other path only with ``--replace`` (``replace=True``); the work directory, its ancestors and its
checkpoint directory never. docs/export-and-serving.md states the contract.

The serving tier's public names (``export``, ``ExportError``, ``preprocess_images``,
``read_metadata``, ``check_output``, ...) are importable from here too, as they always were.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from tfmeta.base.input_transform import InputTransform
from tfmeta.serving import metadata as metadata_lib
from tfmeta.serving import writer
# The serving tier's names, importable from here as before the serving tier held them.
from tfmeta.serving.errors import ExportError
from tfmeta.serving.export import export
from tfmeta.serving.graph import preprocess_images, serving_bn_mode
from tfmeta.serving.metadata import (DEFAULT_MAX_INNER_STEPS, TRANSFORM_FIELDS,
                                     classifier_metadata, input_descriptions,
                                     omniglot_transform, transform_from_metadata,
                                     versions_and_time)
from tfmeta.serving.serving_client import read_metadata
from tfmeta.serving.writer import (COMMAND_LINE, EXPORT_DIR, PYTHON, RUN_EXPORT, Wording,
                                   check_output, foreign_entry, is_tfmeta_export,
                                   write_atomically)

__all__ = [
    "COMMAND_LINE", "DEFAULT_MAX_INNER_STEPS", "EXPORT_DIR", "ExportError", "PYTHON",
    "RUN_EXPORT", "TRANSFORM_FIELDS", "Wording", "check_output", "check_run_export",
    "classifier_metadata", "export", "export_experiment", "export_from_workdir", "export_trained",
    "foreign_entry", "input_descriptions", "is_tfmeta_export", "metadata_from_config",
    "omniglot_transform", "preprocess_images", "read_metadata", "serving_bn_mode",
    "transform_from_metadata", "versions_and_time", "write_atomically",
]


def metadata_from_config(config: Any, *, step: int, classification: bool,
                         transform: InputTransform | None = None) -> dict[str, Any]:
    """The JSON-ready description stored with an export of a run.

    The same builder as ``tfmeta.keras.export`` (:func:`tfmeta.serving.metadata.build`), fed
    from the config.

    Args:
      config: the experiment config.
      step: meta-iteration of the exported parameters.
      classification: whether the task is N-way classification.
      transform: for classification, the run's input transform (recorded with the run, see
        :func:`tfmeta.run.tasks.input_transform_of`); when None, the one the config states alone.
    """
    from tfmeta.run import config as config_lib

    reptile = config.algorithm == "reptile"
    adaptation = metadata_lib.Adaptation(
        algorithm=config.algorithm, inner_lr=config.inner.lr,
        inner_steps=config.inner.eval_steps, train_inner_steps=config.inner.steps,
        bn_mode=config.inner.bn_mode, max_inner_steps=config.export.max_inner_steps,
        inner_optimizer=config.inner.optimizer if reptile else "sgd",
        inner_batch_size=config.inner.batch_size if reptile else 0,
        inner_shuffle_per_task=config.inner.shuffle_per_task,
        inner_carry_optimizer_state=config.inner.carry_optimizer_state,
        inner_grad_clip=config.inner.grad_clip)
    if not classification:
        return metadata_lib.build(step=step, task=config.task, adaptation=adaptation,
                                  k_support=int(config.data.k_support),
                                  k_query=int(config.data.k_query))
    if transform is None:
        from tfmeta.run import tasks

        transform = tasks.input_transform_of(config)
    classifier = metadata_lib.Classifier(
        ways=config.data.ways, transform=transform, shots=config.data.shots,
        train_shots=config_lib.train_shots(config), queries=config.data.queries)
    return metadata_lib.build(step=step, task=config.task, adaptation=adaptation,
                              classifier=classifier, split_scheme=config.data.split_scheme,
                              subset=config.data.subset)


def export_experiment(exp: Any, output: str, *, max_inner_steps: int | None = None,
                      replace: bool = False, workdir: str | None = None,
                      wording: Wording = PYTHON) -> str:
    """Exports a built :class:`tfmeta.run.experiment.Experiment` (its current parameters).

    ``tfmeta.train`` calls this with the experiment it has just trained, so nothing is rebuilt or
    read back from the checkpoint.

    Args:
      exp: the experiment.
      output: SavedModel directory (see :func:`tfmeta.serving.export.export`).
      max_inner_steps: as in :func:`tfmeta.serving.export.export`.
      replace: whether a previous tfmeta SavedModel at ``output`` may be replaced.
      workdir: the run's work directory: the input transform training recorded there is the
        one exported (:func:`tfmeta.run.tasks.input_transform_of`; else the config's), and
        ``output`` may not overwrite it.
      wording: how refusals name ``output`` and ``replace``.

    Returns:
      The SavedModel path (absolute for a local path).
    """
    from tfmeta.run import tasks

    classification = exp.source.classification
    # The transform training recorded in the work directory (normalisation measured on the data).
    transform = tasks.input_transform_of(exp.config, workdir) if classification else None
    metadata = metadata_from_config(exp.config, step=int(exp.step.numpy()),
                                    classification=classification, transform=transform)
    return export(exp.model, exp.algorithm, output, metadata=metadata,
                  classification=classification, max_inner_steps=max_inner_steps,
                  replace=replace, workdir=workdir, wording=wording)


def check_run_export(workdir: str) -> str:
    """Checks that the run's own ``WORKDIR/export`` may be written (new, or a tfmeta export).

    ``tfmeta.train`` calls it before training, so that the export at the end is not refused
    after hours of work.

    Returns:
      The export directory (absolute for a local path).

    Raises:
      ExportError: ``WORKDIR/export`` holds something an export does not write (naming it).
    """
    return check_output(os.path.join(workdir, EXPORT_DIR), replace=True, workdir=workdir,
                        wording=Wording(RUN_EXPORT))


def export_trained(exp: Any, workdir: str) -> str:
    """Exports the experiment a run has just trained to the run's own ``WORKDIR/export``.

    What ``tfmeta.train`` does at the end: the experiment in memory holds the parameters of the
    run's last checkpoint, so the export is the one :func:`export_from_workdir` writes for the
    same directory, without rebuilding the experiment or reading the checkpoint back. An
    experiment trained under a distribution strategy other than the default one is read back
    from the checkpoint instead, into a single-device experiment: its variables are distributed.

    Returns:
      The SavedModel path (absolute for a local path).
    """
    import tensorflow as tf

    from tfmeta.run import workdir as workdir_lib

    workdir = workdir_lib.normalize(workdir)
    if exp.strategy is not tf.distribute.get_strategy():
        return export_from_workdir(workdir, replace=True)
    return export_experiment(exp, os.path.join(workdir, EXPORT_DIR), replace=True,
                             workdir=workdir, wording=Wording(RUN_EXPORT))


def export_from_workdir(workdir: str, output: str | None = None, *, replace: bool = False,
                        max_inner_steps: int | None = None, wording: Wording = PYTHON) -> str:
    """Exports the latest checkpoint of a training run.

    The default location ``WORKDIR/export`` belongs to the run: a previous tfmeta SavedModel
    there is replaced without ``replace``. An explicit ``output`` elsewhere replaces a previous
    tfmeta SavedModel only with ``replace``. Whatever ``replace`` says, an output that is not a
    tfmeta SavedModel (a file, a directory holding anything else), that is the work directory or
    one of its ancestors, or that lies inside its checkpoint directory is refused before the
    checkpoint is even read.

    Args:
      workdir: work directory of ``tfmeta.train`` (local path or gs://...).
      output: SavedModel directory; ``WORKDIR/export`` when None.
      replace: whether a previous tfmeta SavedModel at an explicit ``output`` may be replaced.
      max_inner_steps: as in :func:`tfmeta.serving.export.export`.
      wording: how refusals name ``output`` and ``replace``; the default location, which the
        caller did not give, is named "the run's export directory".

    Returns:
      The SavedModel path (absolute for a local path).

    Raises:
      FileNotFoundError: ``workdir`` has no config or no checkpoint.
      ExportError: ``output`` may not be written (see :func:`tfmeta.serving.writer.check_output`).
    """
    from tfmeta.run import experiment, workdir as workdir_lib

    workdir = workdir_lib.normalize(workdir)
    default = os.path.join(workdir, EXPORT_DIR)
    if output is None:
        output, replace = default, True
        wording = dataclasses.replace(wording, output=RUN_EXPORT)
    elif writer.normalise(output) == writer.normalise(default):
        replace = True
    check_output(output, replace=replace, workdir=workdir, wording=wording)
    exp = experiment.restore(workdir)
    return export_experiment(exp, output, max_inner_steps=max_inner_steps, replace=replace,
                             workdir=workdir, wording=wording)
