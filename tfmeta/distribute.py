"""Distribution strategies by name, and the small amount of cluster logic the trainer needs.

Models and algorithms never see a strategy; only the trainer calls ``strategy.run``.
"""

from __future__ import annotations

import os
from typing import Callable

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multiworker", "tpu")


class TPUUnavailableError(RuntimeError):
    """``--strategy=tpu`` was asked for but no TPU could be reached."""


def make_strategy(name: str, *, tpu: str = "") -> tf.distribute.Strategy:
    """Builds a distribution strategy.

    Args:
      name: ``default`` (one device), ``mirrored`` (all local GPUs, or all logical CPU devices),
        ``multiworker`` (``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``) or ``tpu``.
      tpu: for ``tpu``: the TPU name or gRPC address, ``local`` on a TPU VM, or empty to let the
        resolver find it from the environment.

    Returns:
      The strategy. For TPUs the cluster is connected and the TPU system initialised first.

    Raises:
      ValueError: for an unknown strategy name.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not devices:
            # Several logical CPU devices stand in for GPUs (this is how multi-device code is
            # tested on CPU-only machines); a single CPU gives one replica.
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multiworker needs the TF_CONFIG environment variable "
                             "(see launch/local_cluster.sh for how it is built)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
            if tpu != "local":
                # A remote TPU (TPU Node, or a pod slice driven from worker 0) is reached over
                # gRPC; on a single TPU VM the devices are local and there is nothing to connect to.
                tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as e:
            raise TPUUnavailableError(
                f"--strategy=tpu could not reach a TPU with --tpu={tpu!r} ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0]}). Use --tpu=local on a TPU VM, the TPU's name "
                "or grpc:// address otherwise (see launch/tpu_pod.sh), or another --strategy."
            ) from e
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {name!r}; allowed: {list(STRATEGIES)}")


def is_tpu(strategy: tf.distribute.Strategy) -> bool:
    """Whether ``strategy`` runs on TPUs (which need XLA and static shapes)."""
    return isinstance(strategy, (tf.distribute.TPUStrategy,))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, summaries and results.

    With ``MultiWorkerMirroredStrategy`` every worker takes part in saving (saving is collective)
    but only worker 0 writes to the real work directory.
    """
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return strategy.cluster_resolver.task_id == 0
    return True


def task_id(strategy: tf.distribute.Strategy) -> int:
    """Index of this worker (0 outside multi-worker runs)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return int(strategy.cluster_resolver.task_id)
    return 0


def per_replica_dataset(strategy: tf.distribute.Strategy,
                        make_dataset: Callable[[int, int, int], tf.data.Dataset], *,
                        global_batch_size: int, start_step: int = 0):
    """Distributes a resumable task stream: one input pipeline per worker, batched per replica.

    Args:
      strategy: any ``tf.distribute`` strategy.
      make_dataset: ``(pipeline_id, per_replica_batch_size, start_index) -> tf.data.Dataset`` of
        per-replica batches whose task ``i`` depends only on (pipeline, i).
      global_batch_size: tasks per step over all replicas.
      start_step: steps already taken; each pipeline starts after the tasks they consumed (a step
        takes ``replicas / pipelines`` per-replica batches from each pipeline).

    Returns:
      The distributed dataset; iterate it and pass its elements to ``strategy.run``.
    """

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = ctx.get_per_replica_batch_size(global_batch_size)
        batches_per_step = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        start_index = start_step * batches_per_step * per_replica
        return make_dataset(ctx.input_pipeline_id, per_replica, start_index)

    return strategy.distribute_datasets_from_function(dataset_fn)
