"""Small typed views of a validated config, built in one place for the modules that consume them.

The config is validated once (:func:`tfmeta.run.config.validate`); the task sources
(:mod:`tfmeta.run.tasks`), the experiment builder (:mod:`tfmeta.run.experiment`) and the trainer
then read what they need from these frozen values instead of from the whole config: the episode
shape, the image data source with its split settings, the algorithm's constructor options and the
phase schedule. Each function here only reads fields; none checks them again.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from tfmeta.core.schedule import PhaseSchedule
from tfmeta.run import config as config_lib


@dataclasses.dataclass(frozen=True)
class EpisodeShape:
    """N-way K-shot episodes with Q queries per class (classification tasks).

    Attributes:
      ways: classes per episode.
      shots: support examples per class in evaluation.
      train_shots: support examples per class in meta-training.
      queries: query examples per class.
      rotate: whether each class of an episode is rotated by a random multiple of 90 degrees.
    """

    ways: int
    shots: int
    train_shots: int
    queries: int
    rotate: bool

    def shots_of(self, split: str) -> int:
        """Support examples per class of an episode of ``split``."""
        return self.train_shots if split == "train" else self.shots

    def needed(self, split: str, queries: int | None = None) -> int:
        """Images a class of ``split`` needs: its shots + queries (``queries`` overrides)."""
        return self.shots_of(split) + (queries or self.queries)


def episode_shape(config: ml_collections.ConfigDict) -> EpisodeShape:
    """The episode shape of a validated config."""
    d = config.data
    return EpisodeShape(ways=int(d.ways), shots=int(d.shots),
                        train_shots=int(config_lib.train_shots(config)), queries=int(d.queries),
                        rotate=bool(d.rotate))


@dataclasses.dataclass(frozen=True)
class ImageData:
    """Where the images of task 'images' come from, how they are prepared and split.

    Attributes mirror the ``data.*`` config fields of the same meaning.
    """

    source: str
    image_size: int
    channels: int
    resize: str
    min_side: int
    data_dir: str
    prepared_dir: str
    fractions: tuple[float, ...]
    split_seed: int
    class_lists: str
    storage: str
    memory_limit_mb: int
    normalize: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    crop_padding: int
    allow_partial_benchmark: bool

    def prepare_kwargs(self) -> dict:
        """The keyword arguments of :func:`tfmeta.data.image_sources.prepare`."""
        return dict(image_size=self.image_size, channels=self.channels, resize=self.resize,
                    min_side=self.min_side, data_dir=self.data_dir,
                    prepared_dir=self.prepared_dir, fractions=self.fractions,
                    split_seed=self.split_seed, class_lists=self.class_lists)


def image_data(config: ml_collections.ConfigDict) -> ImageData:
    """The image data source of a validated task 'images' config."""
    d = config.data
    return ImageData(
        source=d.source, image_size=d.image_size, channels=d.channels, resize=d.resize,
        min_side=d.min_image_side, data_dir=d.data_dir, prepared_dir=d.prepared_dir,
        fractions=tuple(d.split_fractions), split_seed=d.split_seed, class_lists=d.class_lists,
        storage=d.storage, memory_limit_mb=d.memory_limit_mb, normalize=d.normalize,
        mean=tuple(d.mean), std=tuple(d.std), augment=d.augment, crop_padding=d.crop_padding,
        allow_partial_benchmark=d.allow_partial_benchmark)


@dataclasses.dataclass(frozen=True)
class AlgorithmOptions:
    """The options every meta-learner's constructor takes, from a validated config.

    Attributes:
      name: ``config.algorithm``.
      inner_lr, inner_steps, eval_inner_steps: the inner loop.
      inner_grad_clip: global-norm clip of the inner gradients (None: none).
      bn_mode: how batch norm normalises in adaptation.
      tasks_in_parallel: an int, ``"all"`` or ``"auto"``
        (:func:`tfmeta.run.config.parse_tasks_in_parallel`).
    """

    name: str
    inner_lr: float
    inner_steps: int
    eval_inner_steps: int
    inner_grad_clip: float | None
    bn_mode: str
    tasks_in_parallel: int | str

    def common_kwargs(self, *, classification: bool) -> dict:
        """The constructor keyword arguments shared by every algorithm."""
        return dict(
            inner_lr=self.inner_lr, inner_steps=self.inner_steps,
            eval_inner_steps=self.eval_inner_steps,
            loss="sparse_categorical_crossentropy" if classification else "mse",
            inner_grad_clip=self.inner_grad_clip, bn_mode=self.bn_mode,
            tasks_in_parallel=self.tasks_in_parallel)


def algorithm_options(config: ml_collections.ConfigDict) -> AlgorithmOptions:
    """The common algorithm options of a validated config."""
    return AlgorithmOptions(
        name=config.algorithm, inner_lr=config.inner.lr, inner_steps=config.inner.steps,
        eval_inner_steps=config.inner.eval_steps, inner_grad_clip=config.inner.grad_clip or None,
        bn_mode=config.inner.bn_mode,
        tasks_in_parallel=config_lib.tasks_in_parallel(config))


def phase_schedule(config: ml_collections.ConfigDict) -> PhaseSchedule:
    """When the meta-step changes in a run of ``config`` (see :class:`PhaseSchedule`).

    First-order MAML is first order throughout; MAML++ anneals the derivative order over
    ``mamlpp.first_order_iterations`` and uses the multi-step loss for its first
    ``msl_epochs * iterations_per_epoch`` meta-iterations; the other MAMLs are second order.
    """
    if config.algorithm not in config_lib.MAML_FAMILY:
        return PhaseSchedule()
    first_order_until = (None if config.algorithm == "fomaml"
                         else config_lib.first_order_until(config))
    msl_until = config_lib.multi_step_loss_until(config) if config.algorithm == "mamlpp" else None
    return PhaseSchedule(maml=True, first_order_until=first_order_until,
                         multi_step_loss_until=msl_until)
