"""N-way K-shot episodes from a split's classes, in memory or streamed, as pure TensorFlow.

An episode is a dict with the contract used by every algorithm in tfmeta::

    support_x  float32 [N*K, H, W, C]   pixels / 255 (then normalised, if asked)
    support_y  int32   [N*K]            labels 0..N-1
    query_x    float32 [N*Q, H, W, C]
    query_y    int32   [N*Q]

A split's classes come as a pool: :class:`ImagePool` holds every image in memory (uint8
``[T, H, W, C]``, class ``c`` owning ``counts[c]`` consecutive rows); :class:`ShardPool` names
per-class record shards on disk (see :mod:`tfmeta.data.class_store`) and reads only the images an
episode uses, so memory is bounded by what is in flight, not by the dataset. Omniglot's dense
``uint8 [C, D, S, S]`` array is accepted as an ImagePool of D drawings per class.

Examples are class-major (all K support images of label 0, then label 1, ...). The N classes are
distinct and drawn in random order, so the label of a class differs between episodes; per class,
K + Q distinct images are drawn uniformly without replacement among its own (support and query
never share one); with ``rotate`` the whole class is rotated by a random multiple of 90 degrees
(MAML's Omniglot augmentation, which effectively creates new classes); with ``augment`` each
image is randomly cropped after zero padding and flipped left-right (meta-training of photos).

Sampling is split in two so it vectorises: a per-episode stage draws only indices (classes,
images, rotation, crop offsets) with stateless random ops seeded by ``(seed, pipeline_id,
episode_index)``; a second stage gathers (or reads), augments and converts whole batches at once.
The stream is therefore identical whether batched or not, whatever the batch size, and in memory
or streamed from shards; ``start_index`` resumes it exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import tensorflow as tf

from tfmeta.base import distribute

Episode = dict[str, tf.Tensor]

_AUTOTUNE = tf.data.AUTOTUNE
# Above this, episode_dataset rotates each batch instead of keeping all four
# rotations of the pool in memory (all 1623 Omniglot characters at 28x28: 25 MB,
# 100 MB pre-rotated; at 105x105 pre-rotating would take 1.4 GB).
MAX_PREROTATED_POOL_BYTES = 256 * 2**20
# Shard files read concurrently per batch of streamed episodes.
_PARALLEL_READS = 16


def _counts_array(counts: Any) -> np.ndarray:
    counts = np.asarray(counts, np.int64)
    if counts.ndim != 1 or counts.size == 0 or (counts < 0).any():
        raise ValueError(f"counts must be a non-empty 1-D array of non-negative ints, got {counts}")
    return counts


@dataclasses.dataclass(frozen=True, eq=False)
class ImagePool:
    """A split's classes in memory.

    Attributes:
      images: uint8 ``[T, H, W, C]``; class ``c`` owns rows ``offsets[c] : offsets[c] + counts[c]``.
      counts: images per class, int ``[num_classes]``, summing to T.
    """

    images: Any
    counts: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "counts", _counts_array(self.counts))
        shape = tuple(self.images.shape)
        if len(shape) != 4 or tf.as_dtype(self.images.dtype) != tf.uint8:
            raise ValueError(f"images must be uint8 [T, H, W, C], got "
                             f"{tf.as_dtype(self.images.dtype).name} {shape}")
        if shape[0] != int(self.counts.sum()):
            raise ValueError(f"images has {shape[0]} rows but counts sum to {self.counts.sum()}")

    @classmethod
    def from_dense(cls, images: Any) -> "ImagePool":
        """Omniglot's layout, uint8 ``[C, D, S, S]`` (D drawings per class), as a pool."""
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[2] != shape[3] or tf.as_dtype(images.dtype) != tf.uint8:
            raise ValueError(f"images must be uint8 [classes, drawings, S, S], got "
                             f"{tf.as_dtype(images.dtype).name} {shape}")
        flat = tf.reshape(tf.convert_to_tensor(images, tf.uint8), [-1, shape[2], shape[3], 1])
        return cls(flat, np.full([shape[0]], shape[1], np.int64))

    @property
    def num_classes(self) -> int:
        return int(self.counts.size)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True, eq=False)
class ShardPool:
    """A split's classes as per-class record shards on disk (read per episode).

    Attributes:
      files: every shard file, class-major: class ``c``'s image ``i`` is record
        ``i % records_per_shard`` of ``files[first_shard[c] + i // records_per_shard]``.
      first_shard: index into ``files`` of each class's first shard, int ``[num_classes]``.
      counts: images per class, int ``[num_classes]``.
      records_per_shard: records in every shard but a class's last.
      image_shape: ``(H, W, C)`` of every record (uint8, row-major).
    """

    files: Sequence[str]
    first_shard: np.ndarray
    counts: np.ndarray
    records_per_shard: int
    image_shape: tuple[int, int, int]

    def __post_init__(self):
        object.__setattr__(self, "counts", _counts_array(self.counts))
        object.__setattr__(self, "first_shard", np.asarray(self.first_shard, np.int64))
        object.__setattr__(self, "files", tuple(self.files))
        if self.first_shard.shape != self.counts.shape:
            raise ValueError("first_shard and counts must have one entry per class")
        if self.records_per_shard <= 0 or len(self.image_shape) != 3:
            raise ValueError("records_per_shard must be positive and image_shape (H, W, C)")

    @property
    def num_classes(self) -> int:
        return int(self.counts.size)

    @property
    def record_bytes(self) -> int:
        return int(np.prod(self.image_shape))


Pool = Union[ImagePool, ShardPool]


def as_pool(images: Any) -> Pool:
    """An ImagePool / ShardPool as is; Omniglot's dense ``uint8 [C, D, S, S]`` as an ImagePool."""
    if isinstance(images, (ImagePool, ShardPool)):
        return images
    return ImagePool.from_dense(images)


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
    """Shape of an N-way K-shot task.

    Attributes:
        ways: N, classes per episode.
        shots: K, support examples per class.
        queries: Q, query examples per class.
        rotate: Rotate each class by a random multiple of 90 degrees (square images only).
        augment: Randomly crop each image after zero padding by ``crop_padding`` pixels and flip
            it left-right with probability 1/2.
        crop_padding: Padding of the random crop, in pixels.
    """

    ways: int
    shots: int
    queries: int
    rotate: bool = True
    augment: bool = False
    crop_padding: int = 0

    def __post_init__(self):
        for field in ("ways", "shots", "queries"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"EpisodeSpec.{field} must be a positive int, got {value!r}")
        for field in ("rotate", "augment"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"EpisodeSpec.{field} must be a bool, got "
                                 f"{getattr(self, field)!r}")
        padding = self.crop_padding
        if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
            raise ValueError(f"EpisodeSpec.crop_padding must be an int >= 0, got {padding!r}")

    @property
    def drawings_per_class(self) -> int:
        """K + Q, the distinct images each class needs."""
        return self.shots + self.queries


def _pool_facts(images_or_num_classes: Any) -> tuple[int, int | None, tuple[int, ...] | None]:
    """(classes, fewest images of a class or None, image shape or None) of what validate was
    given; a bare class count says nothing about the images of a class."""
    if isinstance(images_or_num_classes, (int, np.integer)) and not isinstance(
            images_or_num_classes, bool):
        return int(images_or_num_classes), None, None
    if isinstance(images_or_num_classes, (ImagePool, ShardPool)):
        pool = images_or_num_classes
        return pool.num_classes, int(pool.counts.min()), pool.image_shape
    shape = tuple(images_or_num_classes.shape)
    dtype = tf.as_dtype(images_or_num_classes.dtype)
    if len(shape) != 4 or shape[2] != shape[3] or dtype != tf.uint8:
        raise ValueError(
            f"images must be uint8 [classes, drawings, S, S], got {dtype.name} {shape}")
    return shape[0], shape[1], (shape[2], shape[3], 1)


def validate(
    images_or_num_classes: Any,
    spec: EpisodeSpec,
    global_batch_size: int | None = None,
    num_replicas: int = 1,
) -> None:
    """Checks that episodes of ``spec`` can be drawn, raising otherwise.

    Args:
        images_or_num_classes: The pool (an ImagePool, ShardPool, or Omniglot's
            uint8 [C, D, S, S] array or tensor), or just its number of classes C
            (then the images per class are not checked: the source knows them).
        spec: The episode shape.
        global_batch_size: Tasks per step over all replicas, if batching.
        num_replicas: Replicas the global batch is split over.

    Raises:
        ValueError: The pool is malformed, N exceeds its classes, K + Q exceeds
            the images of a class, rotation of non-square images, or the batch
            is non-positive or not divisible by the number of replicas. The
            message names the value and what is allowed.
    """
    if not isinstance(spec, EpisodeSpec):
        raise ValueError(f"spec must be an EpisodeSpec, got {spec!r}")
    num_classes, drawings, image_shape = _pool_facts(images_or_num_classes)
    if spec.ways > num_classes:
        raise ValueError(
            f"ways={spec.ways} exceeds the {num_classes} classes available; "
            f"allowed: 1..{num_classes}")
    if drawings is not None and spec.drawings_per_class > drawings:
        raise ValueError(
            f"shots + queries = {spec.shots} + {spec.queries} = {spec.drawings_per_class} "
            f"exceeds the {drawings} drawings per class; allowed: at most {drawings}")
    if spec.rotate and image_shape is not None and image_shape[0] != image_shape[1]:
        raise ValueError(f"rotate=True needs square images, got {image_shape[0]}x{image_shape[1]}")
    if num_replicas <= 0:
        raise ValueError(f"num_replicas must be positive, got {num_replicas}")
    if global_batch_size is not None:
        if global_batch_size <= 0:
            raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
        if global_batch_size % num_replicas:
            raise ValueError(
                f"global_batch_size={global_batch_size} is not divisible by the "
                f"{num_replicas} replicas; allowed: a multiple of {num_replicas}")


def _pipeline_seed(seed: int, pipeline_id: Any) -> tf.Tensor:
    base = tf.constant([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF], tf.int64)
    return tf.random.experimental.stateless_fold_in(base, tf.cast(pipeline_id, tf.int64))


def episode_seed(seed: int, pipeline_id: Any, index: Any) -> tf.Tensor:
    """Returns the stateless seed (int64 [2]) of episode ``index`` of a pipeline.

    This is the seed ``episode_dataset`` uses, so
    ``sample_episode(images, spec, episode_seed(seed, p, i))`` reproduces
    episode ``i`` of pipeline ``p`` on its own.
    """
    return tf.random.experimental.stateless_fold_in(
        _pipeline_seed(seed, pipeline_id), tf.cast(index, tf.int64))


def _sample_indices(seed: tf.Tensor, pool: Pool, spec: EpisodeSpec) -> dict[str, tf.Tensor]:
    """The random part of one episode: classes, images, rotations (and crops and flips).

    One uniform draw is sliced three ways (few ops: this stage runs once per
    episode, so op count is its cost). top_k of i.i.d. uniforms is a
    uniformly random ordered k-subset, which gives distinct classes in random
    label order and K + Q distinct images per class; a class with fewer images
    than the largest has the draws of its missing images masked out. The
    layout of the draw is fixed (Omniglot's episodes for a seed never change);
    augmentation draws from a seed of its own.
    """
    n, d, m = spec.ways, int(pool.counts.max()), spec.drawings_per_class
    num_classes = pool.num_classes
    u = tf.random.stateless_uniform([num_classes + n * d + n], seed)
    classes = tf.math.top_k(u[:num_classes], k=n).indices
    scores = tf.reshape(u[num_classes:num_classes + n * d], [n, d])
    if int(pool.counts.min()) != d:
        counts = tf.gather(tf.constant(pool.counts, tf.int32), classes)
        scores = tf.where(tf.range(d)[None, :] < counts[:, None], scores, -1.0)
    draws = tf.math.top_k(scores, k=m).indices
    if spec.rotate:
        rotations = tf.cast(u[num_classes + n * d:] * 4.0, tf.int32)
    else:
        rotations = tf.zeros([n], tf.int32)
    indices = {"classes": classes, "drawings": draws, "rotations": rotations}
    if spec.augment:
        a = tf.random.stateless_uniform(
            [3, n, m], tf.random.experimental.stateless_fold_in(seed, 1))
        span = 2 * spec.crop_padding + 1
        indices["crop"] = tf.minimum(tf.cast(a[:2] * span, tf.int32), span - 1)  # [2, n, m]
        indices["flip"] = a[2] < 0.5
    return indices


def _four_rotations(x: tf.Tensor) -> tf.Tensor:
    """[..., S, S, C] -> [..., 4, S, S, C]: counter-clockwise by 0, 90, 180, 270 degrees."""
    rank = x.shape.rank
    perm = list(range(rank - 3)) + [rank - 2, rank - 3, rank - 1]
    transposed = tf.transpose(x, perm)
    return tf.stack([
        x,
        tf.reverse(transposed, [-3]),  # == np.rot90(x, 1, axes=(-3, -2))
        tf.reverse(x, [-3, -2]),
        tf.reverse(transposed, [-2]),
    ], axis=-4)


def _rotate(x: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
    """Rotates images [..., S, S, C] counter-clockwise by k[...] * 90 degrees."""
    # All four rotations then one gather per image: static shapes and no
    # per-image control flow.
    return tf.gather(_four_rotations(x), k, axis=k.shape.rank, batch_dims=k.shape.rank)


def _crop_and_flip(x: tf.Tensor, crop: tf.Tensor, flip: tf.Tensor, padding: int) -> tf.Tensor:
    """Random crops of zero-padded images and left-right flips, as two gathers.

    Args:
      x: uint8 ``[M, H, W, C]``.
      crop: int ``[2, M]``: row and column offsets into the padded image, in 0..2*padding.
      flip: bool ``[M]``.
    """
    h, w = x.shape[1], x.shape[2]
    padded = tf.pad(x, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    rows = crop[0][:, None] + tf.range(h)[None, :]
    cols = tf.where(flip[:, None], tf.range(w - 1, -1, -1)[None, :], tf.range(w)[None, :])
    cols = crop[1][:, None] + cols
    x = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(x, cols, axis=2, batch_dims=1)


def _flat_pool(images: tf.Tensor, prerotate: bool) -> tf.Tensor:
    """The pool's images as [T * R, H, W, C] for one flat gather (R = 4 if prerotate).

    Pre-rotating makes augmentation part of the gather: on 2 CPU cores this is
    about 6x faster than rotating every batch, at 4x the pool's memory.
    """
    images = tf.convert_to_tensor(images, tf.uint8)
    if prerotate:
        images = _four_rotations(images)
    return tf.reshape(images, [-1] + images.shape[-3:].as_list())


def _read_records(pool: ShardPool, class_ids: tf.Tensor, image_ids: tf.Tensor) -> tf.Tensor:
    """Reads images ``image_ids`` of classes ``class_ids`` (int [M] each) from the shards."""
    files = tf.constant(list(pool.files))
    first = tf.gather(tf.constant(pool.first_shard, tf.int64), tf.cast(class_ids, tf.int64))
    image_ids = tf.cast(image_ids, tf.int64)
    shard = first + image_ids // pool.records_per_shard
    offset = (image_ids % pool.records_per_shard) * pool.record_bytes

    def read(args: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        file, start = args
        return tf.strings.substr(tf.io.read_file(tf.gather(files, file)), start, pool.record_bytes)

    records = tf.map_fn(read, (shard, offset), fn_output_signature=tf.string,
                        parallel_iterations=_PARALLEL_READS)
    return tf.reshape(tf.io.decode_raw(records, tf.uint8), [-1, *pool.image_shape])


def _gather_images(pool: Pool, flat: tf.Tensor | None, prerotated: bool,
                   indices: dict[str, tf.Tensor], spec: EpisodeSpec) -> tf.Tensor:
    """uint8 [..., N, K+Q, H, W, C] of (optionally batched) episode indices."""
    classes, drawings = indices["classes"], indices["drawings"]
    class_ids = tf.broadcast_to(classes[..., None], tf.shape(drawings))
    rotations = tf.broadcast_to(indices["rotations"][..., None], tf.shape(drawings))
    if isinstance(pool, ShardPool):
        x = _read_records(pool, tf.reshape(class_ids, [-1]), tf.reshape(drawings, [-1]))
        x = tf.reshape(x, drawings.shape.as_list() + list(pool.image_shape))
        return _rotate(x, rotations) if spec.rotate else x
    offsets = tf.constant(np.concatenate([[0], np.cumsum(pool.counts)[:-1]]), tf.int32)
    image_ids = tf.gather(offsets, class_ids) + drawings
    if prerotated:
        return tf.gather(flat, image_ids * 4 + rotations)
    x = tf.gather(flat, image_ids)
    return _rotate(x, rotations) if spec.rotate else x


Normalization = tuple[Sequence[float], Sequence[float]]


def _materialize(pool: Pool, flat: tf.Tensor | None, prerotated: bool,
                 indices: dict[str, tf.Tensor], spec: EpisodeSpec,
                 normalization: Normalization | None) -> Episode:
    """The images and labels of (optionally batched) episode indices."""
    x = _gather_images(pool, flat, prerotated, indices, spec)  # [..., N, K+Q, H, W, C] uint8
    image_shape = x.shape[-3:].as_list()
    if spec.augment:
        lead = x.shape[:-3].as_list()
        crop = tf.reshape(tf.experimental.numpy.moveaxis(indices["crop"], -3, 0), [2, -1])
        x = _crop_and_flip(tf.reshape(x, [-1] + image_shape), crop,
                           tf.reshape(indices["flip"], [-1]), spec.crop_padding)
        x = tf.reshape(x, lead + image_shape)
    x = tf.cast(x, tf.float32) * (1.0 / 255.0)
    if normalization is not None:
        mean, std = normalization
        x = (x - tf.constant(mean, tf.float32)) * tf.constant([1.0 / s for s in std], tf.float32)
    batch = indices["classes"].shape[:-1].as_list()

    def examples(part: tf.Tensor, per_class: int) -> tuple[tf.Tensor, tf.Tensor]:
        images = tf.reshape(part, batch + [spec.ways * per_class] + image_shape)
        labels = tf.repeat(tf.range(spec.ways, dtype=tf.int32), per_class)
        return images, tf.broadcast_to(labels, batch + [spec.ways * per_class])

    support_x, support_y = examples(x[..., :spec.shots, :, :, :], spec.shots)
    query_x, query_y = examples(x[..., spec.shots:, :, :, :], spec.queries)
    return {"support_x": support_x, "support_y": support_y,
            "query_x": query_x, "query_y": query_y}


def _checked_pool(images: Any, spec: EpisodeSpec) -> Pool:
    validate(images, spec)
    return as_pool(images)


def sample_episode(images: Any, spec: EpisodeSpec, seed: Any, *,
                   normalization: Normalization | None = None) -> Episode:
    """Samples one episode; a pure function of (images, spec, seed).

    Args:
        images: Pool: an ImagePool, a ShardPool or Omniglot's uint8 [C, D, S, S].
        spec: The episode shape.
        seed: Stateless seed, int [2] (e.g. ``episode_seed(seed, 0, i)``).
        normalization: Per-channel ``(mean, std)`` of pixels / 255 to normalise with, or None.

    Returns:
        The episode dict (see module docstring).

    Raises:
        ValueError: If ``validate`` rejects images/spec.
    """
    pool = _checked_pool(images, spec)
    seed = tf.convert_to_tensor(seed)
    if seed.shape != (2,):
        raise ValueError(f"seed must have shape [2], got {seed.shape}")
    indices = _sample_indices(seed, pool, spec)
    flat = _flat_pool(pool.images, False) if isinstance(pool, ImagePool) else None
    return _materialize(pool, flat, False, indices, spec, normalization)


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = True
    options.experimental_optimization.map_parallelization = True
    return options


def episode_dataset(
    images: Any,
    spec: EpisodeSpec,
    *,
    seed: int,
    pipeline_id: int = 0,
    start_index: int = 0,
    batch_size: int | None = None,
    normalization: Normalization | None = None,
) -> tf.data.Dataset:
    """Infinite, deterministic stream of episodes (or batches of episodes).

    Episode ``i`` of pipeline ``p`` depends only on (images, spec, seed, p, i),
    not on batching, and not on whether the pool is in memory or streamed: with
    ``batch_size=B`` batch ``j`` holds episodes
    ``start_index + j*B ... start_index + (j+1)*B - 1``.

    Args:
        images: Pool: an ImagePool, a ShardPool or Omniglot's uint8 [C, D, S, S].
        spec: The episode shape.
        seed: Base seed of the stream.
        pipeline_id: Input pipeline (host / worker) index; pipelines draw
            independent streams.
        start_index: First episode index, to resume a stream.
        batch_size: If set, batches of this many tasks, static leading dim.
        normalization: Per-channel ``(mean, std)`` of pixels / 255 to normalise with, or None.

    Returns:
        A ``tf.data.Dataset`` of episode dicts, each tensor with a leading
        ``batch_size`` dim when batching.

    Raises:
        ValueError: Invalid pool/spec, negative start_index or non-positive
            batch_size.
    """
    pool = _checked_pool(images, spec)
    if start_index < 0:
        raise ValueError(f"start_index must be >= 0, got {start_index}")
    if batch_size is not None:
        validate(pool, spec, global_batch_size=batch_size)

    pipeline_seed = _pipeline_seed(seed, pipeline_id)

    def indices_of(index):
        episode = tf.random.experimental.stateless_fold_in(pipeline_seed, index)
        return _sample_indices(episode, pool, spec)

    ds = tf.data.Dataset.counter(start_index, dtype=tf.int64)
    ds = ds.map(indices_of, num_parallel_calls=_AUTOTUNE)
    if batch_size is not None:
        ds = ds.batch(batch_size, drop_remainder=True)
    flat, prerotate = None, False
    if isinstance(pool, ImagePool):
        prerotate = spec.rotate and 4 * np.prod(pool.images.shape) <= MAX_PREROTATED_POOL_BYTES
        flat = _flat_pool(tf.convert_to_tensor(pool.images, tf.uint8), prerotate)
    ds = ds.map(lambda idx: _materialize(pool, flat, prerotate, idx, spec, normalization),
                num_parallel_calls=_AUTOTUNE)
    return ds.prefetch(_AUTOTUNE).with_options(_options())


def distributed_dataset(
    strategy: tf.distribute.Strategy,
    images: Any,
    spec: EpisodeSpec,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    normalization: Normalization | None = None,
) -> tf.distribute.DistributedDataset:
    """Per-replica episode batches for ``strategy``, resumable at a step.

    Each input pipeline ``p`` reads ``episode_dataset(pipeline_id=p)`` with
    the per-replica batch size. A step consumes
    ``num_replicas_in_sync / num_input_pipelines`` batches from each
    pipeline, so resuming at ``start_step`` starts each pipeline after the
    episodes the earlier steps consumed.

    Args:
        strategy: Any ``tf.distribute`` strategy.
        images: Pool: an ImagePool, a ShardPool or Omniglot's uint8 [C, D, S, S].
        spec: The episode shape.
        global_batch_size: Tasks per step over all replicas.
        seed: Base seed.
        start_step: Number of steps already taken.
        normalization: Per-channel ``(mean, std)`` to normalise with, or None.

    Returns:
        The distributed dataset; iterate it and pass elements to ``strategy.run``.

    Raises:
        ValueError: Invalid pool/spec, or a global batch not divisible by the
            number of replicas.
    """
    validate(images, spec, global_batch_size, strategy.num_replicas_in_sync)
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")

    return distribute.per_replica_dataset(
        strategy,
        lambda pipeline, batch, start: episode_dataset(
            images, spec, seed=seed, pipeline_id=pipeline, start_index=start, batch_size=batch,
            normalization=normalization),
        global_batch_size=global_batch_size, start_step=start_step)
