"""Task sources: what the trainer meta-learns on, built from a config.

A task source turns (split, input pipeline, per-replica batch size, seed, first task index) into a
``tf.data.Dataset`` of task batches ``{support_x, support_y, query_x, query_y}``. Every task is a
pure function of (seed, input pipeline, task index), so a resumed run continues exactly the same
stream by starting at the right index, and each input pipeline of a distributed run draws its own.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import ml_collections
import numpy as np
import tensorflow as tf

from tfmeta.run import config as config_lib
from tfmeta.run import specs
from tfmeta.base import distribute
from tfmeta.base import input_transform as input_transform_lib
from tfmeta.base.input_transform import InputTransform

# Sinusoid tasks have no splits; held-out evaluation tasks come from a different seed stream.
_SINUSOID_SPLIT_OFFSET = {"train": 0, "validation": 1, "test": 2}


@dataclasses.dataclass
class TaskSource:
    """Everything the trainer needs to know about the tasks of an experiment.

    Attributes:
      make_dataset: ``(split, pipeline_id, batch_size, seed, start_index, queries=None) ->
        tf.data.Dataset``; ``queries`` overrides the query examples per class (points for
        regression).
      num_outputs: units of the model's head (ways for classification, 1 for regression).
      input_shape: shape of one example (without batch dimension).
      classification: whether the labels are classes (accuracy is reported) or real values.
      split_classes: returns the classes available in each split, for validating ``ways``; loads
        the data on first call (None: the tasks have no classes). Task 'images' raises itself
        when a split has fewer usable classes than ways, after writing the data summary beside
        the prepared data (the run stops before its work directory is written).
      input_transform: returns how the model's input images are made from pixels (size, channels,
        inversion, normalisation; may load the data to measure the normalisation); None for
        tasks that are not images.
      data_summary: returns the run's data summary (per split: the classes and images used, and
        what was skipped and why), a JSON-able dict; None when there is nothing to report.
      examples_per_class: ``split -> (limit, what)``: the most examples (shots + queries) a
        class of an episode of ``split`` can give, and what the limit is, in words, for
        messages (Omniglot: its 20 drawings; an image source: the images of its classes); None
        for tasks without classes.
      result_note: returns what every result of this data must say about it ("" for nothing):
        a named benchmark used with other image counts than published is "not <benchmark>: ..."
        (see :func:`tfmeta.data.benchmark_sources.check_complete`); None when there is nothing.
    """

    make_dataset: Callable[..., tf.data.Dataset]
    num_outputs: int
    input_shape: tuple[int, ...]
    classification: bool
    split_classes: Callable[[], Mapping[str, int]] | None = None
    input_transform: Callable[[], InputTransform] | None = None
    data_summary: Callable[[], dict] | None = None
    examples_per_class: Callable[[str], tuple[int, str]] | None = None
    result_note: Callable[[], str] | None = None


def build(config: ml_collections.ConfigDict, *, data=None) -> TaskSource:
    """Builds the task source for ``config``.

    Args:
      config: experiment config.
      data: for Omniglot, an already loaded ``tfmeta.data.omniglot`` data object (tests pass a small
        generated one); loaded from TFDS when None.
    """
    if config.task == "sinusoid":
        return _sinusoid(config)
    if config.task == "images" and config.data.source != "omniglot":
        return _images(config)
    return _omniglot(config, data)


def _sinusoid(config: ml_collections.ConfigDict) -> TaskSource:
    from tfmeta.data import sinusoid

    def make_dataset(split, pipeline_id, batch_size, seed, start_index, queries=None):
        # Offsetting the seed gives held-out tasks disjoint (with probability 1) from training.
        return sinusoid.task_dataset(
            k_support=config.data.k_support, k_query=queries or config.data.k_query,
            seed=seed * 3 + _SINUSOID_SPLIT_OFFSET[split], pipeline_id=pipeline_id,
            start_index=start_index, batch_size=batch_size)

    return TaskSource(make_dataset, num_outputs=1, input_shape=(1,), classification=False)


def _omniglot(config: ml_collections.ConfigDict, data) -> TaskSource:
    from tfmeta.data import episodes, omniglot

    shape = specs.episode_shape(config)

    @functools.cache
    def pools() -> dict[str, np.ndarray]:
        # Loaded on first use: restoring a model for export or inspection needs no data.
        loaded = data
        if loaded is None:
            loaded = omniglot.load(data_dir=config.data.data_dir or None,
                                   archives_dir=config.data.archives_dir or None,
                                   image_size=config.data.image_size, subset=config.data.subset)
        pools = {split: omniglot.split(loaded, scheme=config.data.split_scheme, split=split)
                 for split in omniglot.SPLITS}
        if config.data.rotation_classes:
            pools["train"] = omniglot.with_rotations(pools["train"])
        return pools

    def make_dataset(split, pipeline_id, batch_size, seed, start_index, queries=None):
        if pools()[split].shape[0] == 0:
            raise config_lib.ConfigError(
                f"split {split!r} of split scheme {config.data.split_scheme!r} has no characters; "
                "use another split")
        spec = episodes.EpisodeSpec(ways=shape.ways, shots=shape.shots_of(split),
                                    queries=queries or shape.queries, rotate=shape.rotate)
        return episodes.episode_dataset(pools()[split], spec, seed=seed, pipeline_id=pipeline_id,
                                        start_index=start_index, batch_size=batch_size)

    def examples_per_class(split: str) -> tuple[int, str]:
        return int(pools()[split].shape[1]), "drawings of an Omniglot character"

    size = config.data.image_size
    return TaskSource(make_dataset, num_outputs=config.data.ways, input_shape=(size, size, 1),
                      classification=True,
                      split_classes=lambda: {k: int(v.shape[0]) for k, v in pools().items()},
                      input_transform=lambda: input_transform_of(config),
                      examples_per_class=examples_per_class)


def _needed(config: ml_collections.ConfigDict, split: str, queries: int | None = None) -> int:
    """Images a class of ``split`` needs: shots (training shots for train) + queries."""
    return specs.episode_shape(config).needed(split, queries)


def _images(config: ml_collections.ConfigDict) -> TaskSource:
    """Episodes of any prepared image source (folders, TFDS, the named benchmarks)."""
    from tfmeta.data import episodes, image_sources

    d = specs.image_data(config)
    shape = specs.episode_shape(config)

    @functools.cache
    def prepared():
        # Prepared (or found prepared) on first use: restoring a model needs no data.
        return image_sources.prepare(d.source, **d.prepare_kwargs())

    @functools.cache
    def benchmark_note() -> str:
        # Checked on the prepared data (after unreadable images were skipped), on first use.
        return benchmark_note_of(prepared(), allow_partial=d.allow_partial_benchmark)

    def usable(split: str, needed: int) -> list[int]:
        benchmark_note()  # a partial benchmark is refused before any episode
        return [i for i, c in enumerate(prepared().classes[split]) if c.count >= needed]

    @functools.cache
    def in_memory() -> bool:
        p = prepared()
        if d.storage != "auto":
            return d.storage == "memory"
        total = sum(p.split_bytes(split) for split in p.classes)
        return total <= d.memory_limit_mb * 2**20

    @functools.cache
    def pool(split: str, needed: int):
        p, classes = prepared(), usable(split, needed)
        counts = [p.classes[split][c].count for c in classes]
        if not classes:
            empty = not any(c.count for c in p.classes[split])
            raise config_lib.ConfigError(
                f"split {split!r} of {d.source!r} has no class with at least {needed} images "
                "(shots + queries)" + (f": {p.why_empty(split)}" if empty else
                                       "; see the data summary"))
        if in_memory():
            # One tensor, no NumPy copy kept beside it: the pool is the run's largest object.
            return episodes.ImagePool(tf.convert_to_tensor(p.read(split, classes)), counts)
        files, first = p.files(split, classes)
        return episodes.ShardPool(files, first, counts, p.records_per_shard, p.image_shape)

    @functools.cache
    def transform() -> InputTransform:
        mean, std = d.mean, d.std
        if d.normalize and not mean:
            mean, std = prepared().mean_std("train")
        return InputTransform(int(d.image_size), int(d.channels), invert=False, mean=mean,
                              std=std)

    def make_dataset(split, pipeline_id, batch_size, seed, start_index, queries=None):
        train = split == "train"
        spec = episodes.EpisodeSpec(ways=shape.ways, shots=shape.shots_of(split),
                                    queries=queries or shape.queries, rotate=shape.rotate,
                                    augment=d.augment and train,
                                    crop_padding=d.crop_padding if d.augment and train else 0)
        t = transform()
        return episodes.episode_dataset(
            pool(split, shape.needed(split, queries)), spec, seed=seed,
            pipeline_id=pipeline_id, start_index=start_index, batch_size=batch_size,
            normalization=(t.mean, t.std) if t.normalizes else None)

    def split_classes() -> dict[str, int]:
        counts = {split: len(usable(split, shape.needed(split)))
                  for split in prepared().classes}
        for split, classes in counts.items():
            # A split without any usable class is an error only where it is used.
            if 0 < classes < shape.ways:
                raise _too_few_classes(config, split, classes, summary())
        return counts

    def summary() -> dict:
        return {**data_summary(prepared(), config, in_memory=in_memory(), transform=transform()),
                "not_the_benchmark": benchmark_note()}

    def examples_per_class(split: str) -> tuple[int, str]:
        # An episode takes `ways` classes: the limit is the ways-th largest class.
        counts = sorted((c.count for c in prepared().classes[split]), reverse=True)
        limit = counts[shape.ways - 1] if len(counts) >= shape.ways else 0
        return limit, (f"images that {shape.ways} classes (data.ways) of split {split!r} of "
                       f"{d.source!r} have (see the data summary for each class's count)")

    size = d.image_size
    return TaskSource(make_dataset, num_outputs=shape.ways, input_shape=(size, size, d.channels),
                      classification=True, split_classes=split_classes,
                      input_transform=transform, data_summary=summary,
                      examples_per_class=examples_per_class, result_note=benchmark_note)


SUMMARY_OF_REFUSED_RUN = "data_summary.json"


def benchmark_note_of(prepared, *, allow_partial: bool) -> str:
    """"" unless ``prepared`` is a named benchmark with other image counts than published.

    Raises:
      DataError: such a benchmark, unless ``allow_partial`` (then the note results carry).
    """
    from tfmeta.data import benchmark_sources, image_sources

    kind, _ = image_sources.parse(prepared.source)
    if kind not in benchmark_sources.NAMES:
        return ""
    counts = {split: {r.name: r.count for r in records}
              for split, records in prepared.classes.items()}
    return benchmark_sources.check_complete(
        kind, counts, where=f"{prepared.source!r} (prepared in {prepared.directory})",
        allow_partial=allow_partial)


def _too_few_classes(config: ml_collections.ConfigDict, split: str, classes: int,
                     summary: dict) -> config_lib.ConfigError:
    """The error of a split with fewer usable classes than ways, after writing the summary.

    The run stops before its work directory is touched, so the data summary (every class with
    its count, the classes left out, every image) is written beside the prepared data, and the
    message names it.
    """
    import json
    import os

    facts = summary["splits"][split]
    left_out = facts["classes_left_out"]
    examples = ", ".join(f"{name!r} ({count})" for name, count in list(left_out.items())[:5])
    path = os.path.join(summary["prepared_dir"], SUMMARY_OF_REFUSED_RUN)
    try:
        with tf.io.gfile.GFile(path + ".tmp", "w") as f:
            f.write(json.dumps(summary, indent=1) + "\n")
        tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
        where = f"every class and image is listed in {path}"
    except (OSError, tf.errors.OpError) as e:
        where = f"the data summary could not be written to {path} ({e})"
    return config_lib.ConfigError(
        f"config field 'data.ways' is {config.data.ways}; the {split!r} split of "
        f"{config.data.source!r} has only {classes} usable classes (with at least "
        f"{facts['images_needed_per_class']} images each, shots + queries), so ways must be <= "
        f"{classes}; {len(left_out)} classes are left out for fewer images"
        f"{', e.g. ' + examples if examples else ''}: lower data.ways, data.shots or "
        "data.queries, or give the split more classes (data.split_fractions, data.class_lists); "
        f"{where}")


def image_episodes(source: str, split: str = "train", *, ways: int = 5, shots: int = 1,
                   queries: int = 15, image_size: int = 84, channels: int = 3, seed: int = 0,
                   batch_size: int | None = None, start_index: int = 0,
                   **data: Any) -> tf.data.Dataset:
    """N-way K-shot episodes of any ``data.source`` string, from Python.

    The same data layer as the training binary: the source is prepared on first use (see
    :mod:`tfmeta.data.image_sources`), then episodes are drawn in memory or streamed.

    Example::

        ds = tfmeta.image_episodes("folder:/data/photos", "train", ways=5, shots=1, queries=15,
                                   image_size=84, batch_size=4, normalize=True, augment=True)

    Args:
      source: a ``data.source`` string (``folder:PATH``, ``tfds:NAME``, ``miniimagenet:PATH``...).
      split: ``"train"``, ``"validation"`` or ``"test"``.
      ways, shots, queries: the episode shape.
      image_size, channels: what every image is converted to.
      seed: seed of the episode stream.
      batch_size: tasks per element (static leading dimension), or None for single episodes.
      start_index: first episode, to resume a stream.
      **data: any other ``data.*`` config field (``normalize``, ``augment``, ``storage``,
        ``split_fractions``, ``class_lists``, ``prepared_dir``, ``resize``, ...).

    Returns:
      A ``tf.data.Dataset`` of ``{support_x, support_y, query_x, query_y}``.

    Raises:
      ConfigError: a field has a value that is not allowed.
      DataError: the source cannot be read.
    """
    config = config_lib.base_config()
    config.task = "images"
    config.data.rotate = False
    config.data.update({"source": source, "ways": ways, "shots": shots, "queries": queries,
                        "image_size": image_size, "channels": channels, **data})
    config_lib.validate(config)
    return _images(config).make_dataset(split, 0, batch_size, seed, start_index)


def data_summary(prepared, config: ml_collections.ConfigDict, *, in_memory: bool,
                 transform: InputTransform) -> dict:
    """What a run uses of its prepared data: per split the classes used with every image (its
    file or item name, in the prepared order), the classes left out (too few images for shots +
    queries) and the images skipped, with the reasons; and the files skipped while listing."""
    splits = {}
    for split, records in prepared.classes.items():
        needed = _needed(config, split)
        used = [r for r in records if r.count >= needed]
        skipped = [list(s) for r in records for s in r.skipped]
        splits[split] = {
            "classes": len(used), "images": sum(r.count for r in used),
            "images_needed_per_class": needed,
            "class_images": {r.name: r.count for r in used},
            "images_used": {r.name: list(r.images) for r in used},
            "classes_left_out": {r.name: r.count for r in records if r.count < needed},
            "images_skipped": len(skipped), "skipped": skipped,
        }
    return {"source": prepared.source, "split_origin": prepared.origin,
            "prepared_dir": prepared.directory, "storage": "memory" if in_memory else "stream",
            "image_shape": list(prepared.image_shape), "input_transform": transform.to_dict(),
            "files_skipped_while_listing": [list(s) for s in prepared.skipped], "splits": splits}


def input_transform_of(config: ml_collections.ConfigDict,
                       workdir: str | None = None) -> InputTransform | None:
    """How the images of a run's model are made from pixels, without loading any data.

    Args:
      config: the run's config.
      workdir: its work directory, where training recorded the transform (``input_transform.json``;
        needed for normalisation measured on the data).

    Returns:
      The transform, or None for tasks that are not images (sinusoids).

    Raises:
      ConfigError: a task 'images' run whose work directory has no recorded transform.
    """
    if config.task == "sinusoid":
        return None
    if workdir:
        from tfmeta.run import workdir as workdir_lib

        recorded = workdir_lib.read_input_transform(workdir, config)
        if recorded is not None:
            return recorded
    if config.task == "omniglot":
        # Omniglot's pool holds strokes bright on black: pixels of a white-background PNG invert.
        return InputTransform(int(config.data.image_size), 1, invert=True)
    if not config.data.normalize or tuple(config.data.mean):
        return InputTransform(int(config.data.image_size), int(config.data.channels),
                              invert=config.data.source == "omniglot",
                              mean=tuple(config.data.mean), std=tuple(config.data.std))
    raise config_lib.ConfigError(
        f"work directory {workdir!r} has no {input_transform_lib.FILE_NAME}: the normalisation "
        "measured on the meta-train split is recorded there when training starts")


def distributed_dataset(strategy: tf.distribute.Strategy, source: TaskSource, split: str, *,
                        global_batch_size: int, seed: int, start_step: int = 0,
                        queries: int | None = None):
    """Per-replica task batches of ``split`` for ``strategy``, from iteration ``start_step``."""
    return distribute.per_replica_dataset(
        strategy,
        lambda pipeline, batch, start: source.make_dataset(split, pipeline, batch, seed, start,
                                                           queries=queries),
        global_batch_size=global_batch_size, start_step=start_step)
