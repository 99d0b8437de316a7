"""From a config to the objects of a run: data source, model, algorithm, optimizer, checkpoint.

Models and algorithms are chosen from registries (:data:`MODELS`, :data:`ALGORITHMS`) keyed by the
config's names; each entry maps config fields to the constructor's arguments and nothing else, so
an algorithm's defaults (MAML++'s switches, Meta-SGD's per-parameter rates, ANIL's head) are stated
once, in the algorithm's class. :func:`restore` rebuilds a trained run from its work directory.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import keras
import ml_collections
import tensorflow as tf

from tfmeta.run import config as config_lib
from tfmeta.core import imaml, maml, models, reptile
from tfmeta.run import memory_budget, specs, tasks
from tfmeta.run import workdir as workdir_lib
from tfmeta.core.meta_learner import MetaLearner


@dataclasses.dataclass
class Experiment:
    """The objects of one run, built from a config under a strategy."""

    config: ml_collections.ConfigDict
    strategy: tf.distribute.Strategy
    source: tasks.TaskSource
    model: keras.Model
    algorithm: Any
    optimizer: keras.optimizers.Optimizer
    step: tf.Variable
    # Seconds since the run started (all of it, and inside compiled training loops only), kept in
    # the checkpoint so that a run done in parts reports its true wall-clock time.
    wall_seconds: tf.Variable
    train_seconds: tf.Variable
    _eval_fns: dict = dataclasses.field(default_factory=dict)


def _conv4(config: ml_collections.ConfigDict, source: tasks.TaskSource,
           **kwargs: Any) -> keras.Model:
    return models.conv4(source.num_outputs, image_size=source.input_shape[0],
                        channels=source.input_shape[-1], filters=config.model.filters,
                        downsample=config.model.downsample, head=config.model.head, **kwargs)


def _resnet12(config: ml_collections.ConfigDict, source: tasks.TaskSource,
              **kwargs: Any) -> keras.Model:
    return models.resnet12(source.num_outputs, image_size=source.input_shape[0],
                           channels=source.input_shape[-1], widths=tuple(config.model.widths),
                           **kwargs)


def _mlp(config: ml_collections.ConfigDict, source: tasks.TaskSource,
         **kwargs: Any) -> keras.Model:
    return models.sinusoid_mlp(**kwargs)


# config.model.name -> builder(config, source, seed=..., [dtype=...]) of a built Keras model.
MODELS: dict[str, Callable[..., keras.Model]] = {
    "conv4": _conv4, "resnet12": _resnet12, "mlp": _mlp}


def build_model(config: ml_collections.ConfigDict, source: tasks.TaskSource) -> keras.Model:
    """The network named by ``config.model.name``, built, with the config's compute dtype."""
    # Seeded initialisation: every worker and every rerun starts from the same parameters.
    kwargs: dict[str, Any] = {"seed": config.seed}
    if config.dtype == "bfloat16":
        kwargs["dtype"] = "mixed_bfloat16"
    return MODELS[config.model.name](config, source, **kwargs)


def _maml_family(cls: type[maml.MAML], **fixed: Any) -> Callable[..., MetaLearner]:
    def build(config: ml_collections.ConfigDict, model: keras.Model,
              common: dict[str, Any]) -> MetaLearner:
        return cls(model, **fixed, remat=config.inner.remat, **common)
    return build


def _mamlpp(config: ml_collections.ConfigDict, model: keras.Model,
            common: dict[str, Any]) -> MetaLearner:
    # MAMLpp's class holds the defaults of its switches; the config turns each on or off.
    pp = config.mamlpp
    switches: dict[str, Any] = dict(
        per_step_bn=pp.per_step_bn, multi_step_loss=pp.multi_step_loss,
        msl_epochs=pp.msl_epochs, iterations_per_epoch=pp.iterations_per_epoch)
    if not pp.learned_lr:
        switches["learned_lr"] = "none"
    return maml.MAMLpp(model, **switches, remat=config.inner.remat, **common)


def _reptile(config: ml_collections.ConfigDict, model: keras.Model,
             common: dict[str, Any]) -> MetaLearner:
    return reptile.Reptile(model, outer_step_size=config.outer.lr,
                           inner_optimizer=config.inner.optimizer,
                           inner_batch_size=config.inner.batch_size or None,
                           shuffle_per_task=config.inner.shuffle_per_task,
                           carry_optimizer_state=config.inner.carry_optimizer_state, **common)


def _imaml(config: ml_collections.ConfigDict, model: keras.Model,
           common: dict[str, Any]) -> MetaLearner:
    return imaml.IMAML(model, lam=config.imaml.lam, cg_steps=config.imaml.cg_steps, **common)


# config.algorithm -> builder(config, model, common keyword arguments) of the meta-learner.
ALGORITHMS: dict[str, Callable[..., MetaLearner]] = {
    "maml": _maml_family(maml.MAML),
    "fomaml": _maml_family(maml.MAML, first_order=True),
    "mamlpp": _mamlpp,
    "metasgd": _maml_family(maml.MetaSGD),
    "anil": _maml_family(maml.ANIL),
    "reptile": _reptile,
    "imaml": _imaml,
}


def build_algorithm(config: ml_collections.ConfigDict, model: keras.Model,
                    classification: bool) -> MetaLearner:
    """The meta-learner ``config.algorithm`` names, around ``model``."""
    options = specs.algorithm_options(config)
    return ALGORITHMS[options.name](config, model,
                                    options.common_kwargs(classification=classification))


def build_optimizer(config: ml_collections.ConfigDict) -> keras.optimizers.Optimizer:
    """The outer optimizer; for Reptile, SGD with the meta step size as learning rate."""
    lr = config.outer.lr
    if config.outer.schedule == "linear":
        lr = keras.optimizers.schedules.PolynomialDecay(
            lr, decay_steps=config.train.iterations, end_learning_rate=0.0, power=1.0)
    elif config.outer.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(
            lr, decay_steps=config.train.iterations, alpha=config.outer.min_lr / lr)
    if config.outer.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    return keras.optimizers.SGD(lr)


def build_experiment(config: ml_collections.ConfigDict, strategy: tf.distribute.Strategy, *,
                     data=None, check_data: bool = True, validated: bool = False) -> Experiment:
    """Validates ``config`` and builds data, model, algorithm and optimizer under ``strategy``.

    Args:
      config: experiment config.
      strategy: where to run.
      data: pre-loaded Omniglot data (tests); loaded through TFDS on first use when None.
      check_data: load the data now and check the config against it (e.g. ways <= classes of
        every split). Off for restoring a trained model, which needs no data.
      validated: the caller has already run ``config.validate`` with this strategy's replicas
        (the trainer does, before it reads the work directory), so it is not run again.

    Raises:
      config_lib.ConfigError: for any invalid field, before anything is trained.
    """
    if not validated:
        config_lib.validate(config, num_replicas=strategy.num_replicas_in_sync)
    source = tasks.build(config, data=data)
    if check_data and source.split_classes is not None:
        config_lib.check_split_classes(config, source.split_classes())
    with strategy.scope():
        model = build_model(config, source)
        try:
            algorithm = build_algorithm(config, model, source.classification)
        except ValueError as e:  # an option the model cannot support: a config mistake
            raise config_lib.ConfigError(f"the config cannot be built: {e}") from e
        if check_data:  # training: the "auto" group capped at what the memory budget holds
            memory_budget.apply(config, algorithm, classification=source.classification,
                                num_replicas=strategy.num_replicas_in_sync)
        optimizer = build_optimizer(config)
        # Build the optimizer's slots under the scope, before any tf.function traces.
        optimizer.build(algorithm.meta_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="meta_iteration")
        wall = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="wall_seconds")
        train_s = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="train_seconds")
    return Experiment(config, strategy, source, model, algorithm, optimizer, step, wall, train_s)


def checkpoint(exp: Experiment) -> tf.train.Checkpoint:
    """Everything a training checkpoint holds."""
    return tf.train.Checkpoint(model=exp.model, optimizer=exp.optimizer, step=exp.step,
                               wall_seconds=exp.wall_seconds, train_seconds=exp.train_seconds,
                               **exp.algorithm.checkpointables)


def restore(workdir: str, *, strategy: tf.distribute.Strategy | None = None,
            data=None, config: ml_collections.ConfigDict | None = None) -> Experiment:
    """Rebuilds the experiment of ``workdir`` with its newest readable checkpoint's parameters.

    Args:
      workdir: the work directory (local path, relative or with ``~``, or gs://...).
      strategy: where to run; the default (single device) strategy when None.
      data: pre-loaded Omniglot data (tests); loaded through TFDS on first use when None.
      config: the config to build; the one in force in ``workdir`` when None.

    Raises:
      FileNotFoundError: when ``workdir`` has no config or no checkpoint.
      workdir_lib.CheckpointError: when no checkpoint can be read (each is named).
      workdir_lib.WorkdirStateError: ``config.json`` is missing next to checkpoints, or it or
        ``config_changes.json`` is damaged (naming the file).
    """
    workdir = workdir_lib.normalize(workdir)
    strategy = strategy or tf.distribute.get_strategy()
    config = config or workdir_lib.load_config(workdir)
    exp = build_experiment(config, strategy, data=data, check_data=False)
    directory = os.path.join(workdir, workdir_lib.CHECKPOINT_DIR)
    # Only the model, step and clocks are needed; optimizer slots may be absent from the graph.
    checkpoint = tf.train.Checkpoint(model=exp.model, step=exp.step,
                                     wall_seconds=exp.wall_seconds,
                                     train_seconds=exp.train_seconds,
                                     **exp.algorithm.checkpointables)
    if not workdir_lib.restore_newest_readable(checkpoint, directory, partial=True):
        raise FileNotFoundError(f"no checkpoint in {directory!r}")
    return exp
