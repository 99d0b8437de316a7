"""Sinusoid regression tasks (Finn et al., 2017, section 5.1).

A task is y = A sin(x - phi) with amplitude A ~ U[0.1, 5], phase
phi ~ U[0, pi] and inputs x ~ U[-5, 5]. Sampling is stateless: the same seed
always gives the same tasks, on any device and under XLA.
"""

from __future__ import annotations

import math

import tensorflow as tf

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
X_RANGE = (-5.0, 5.0)


def _as_seed(seed: int | tf.Tensor) -> tf.Tensor:
    seed = tf.convert_to_tensor(seed)
    if seed.shape.rank == 0:
        return tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
    return tf.cast(seed, tf.int64)


def sample_tasks(
    batch_size: int, k_support: int, k_query: int, seed: int | tf.Tensor
) -> dict[str, tf.Tensor]:
    """Samples a batch of sinusoid tasks.

    Args:
      batch_size: number of tasks B.
      k_support: support points per task.
      k_query: query points per task.
      seed: an int or a shape-[2] integer tensor (stateless RNG seed).

    Returns:
      ``{"support_x", "support_y": [B, k_support, 1], "query_x", "query_y":
      [B, k_query, 1]}`` float32, plus ``"amplitude"`` and ``"phase"`` [B].
    """
    seeds = tf.random.experimental.stateless_split(_as_seed(seed), 3)
    amp = tf.random.stateless_uniform([batch_size], seeds[0], *AMPLITUDE)
    phase = tf.random.stateless_uniform([batch_size], seeds[1], *PHASE)
    x = tf.random.stateless_uniform([batch_size, k_support + k_query, 1], seeds[2], *X_RANGE)
    y = amp[:, None, None] * tf.sin(x - phase[:, None, None])
    return {
        "support_x": x[:, :k_support],
        "support_y": y[:, :k_support],
        "query_x": x[:, k_support:],
        "query_y": y[:, k_support:],
        "amplitude": amp,
        "phase": phase,
    }


def element_seed(seed: int, pipeline_id: int, index: tf.Tensor) -> tf.Tensor:
    """The stateless seed of stream element ``index`` of pipeline ``pipeline_id``."""
    key = tf.random.experimental.stateless_fold_in(_as_seed(seed), pipeline_id)
    return tf.random.experimental.stateless_fold_in(key, tf.cast(index, tf.int64))


def task_dataset(
    *,
    k_support: int,
    k_query: int,
    seed: int,
    pipeline_id: int = 0,
    start_index: int = 0,
    batch_size: int | None = None,
) -> tf.data.Dataset:
    """An infinite, deterministic stream of sinusoid tasks.

    Task ``i`` depends only on ``(seed, pipeline_id, i)``, not on batching: with ``batch_size=B``
    batch ``j`` holds tasks ``start_index + j*B ... start_index + (j+1)*B - 1``. A run resumed
    with ``start_index`` equal to the number of tasks already consumed continues the same stream,
    a batch of 2B tasks equals two consecutive batches of B (so a global batch splits across
    replicas without changing), and pipelines with different ``pipeline_id`` (e.g. one per input
    worker) draw different tasks.

    Args:
      k_support: support points per task.
      k_query: query points per task.
      seed: base seed.
      pipeline_id: identifies this pipeline (e.g. the input worker index).
      start_index: index of the first task produced.
      batch_size: if set, every element is a batch of that many tasks (static leading
        dimension); otherwise every element is one task.

    Returns:
      A ``tf.data.Dataset`` of dicts as from :func:`sample_tasks` (without
      the leading task axis when ``batch_size`` is None).
    """

    def make(index: tf.Tensor) -> dict[str, tf.Tensor]:
        tasks = sample_tasks(1, k_support, k_query, element_seed(seed, pipeline_id, index))
        return {k: v[0] for k, v in tasks.items()}

    ds = tf.data.Dataset.counter(start_index, dtype=tf.int64).map(
        make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    if batch_size is not None:
        ds = ds.batch(batch_size, drop_remainder=True)
    return ds
