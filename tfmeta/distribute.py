"""Distribution strategies by name, and the small amount of cluster logic the trainer needs.

Models and algorithms never see a strategy; only the trainer calls ``strategy.run``.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multiworker", "tpu")


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
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if tpu != "local":
            # A remote TPU (TPU Node, or a pod slice driven from worker 0) is reached over gRPC;
            # on a single TPU VM the devices are local and there is nothing to connect to.
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {name!r}; allowed: {list(STRATEGIES)}")


def is_tpu(strategy: tf.distribute.Strategy) -> bool:
    """Whether ``strategy`` runs on TPUs (which need XLA and static shapes)."""
    return isinstance(strategy, (tf.distribute.TPUStrategy,))


def worker_index_and_count() -> tuple[int, int]:
    """This process's index among the workers of a ``TF_CONFIG`` cluster, and their number."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    workers = tf_config.get("cluster", {}).get("worker", [])
    task = tf_config.get("task", {})
    if not workers or task.get("type") != "worker":
        return 0, 1
    return int(task.get("index", 0)), len(workers)


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
