"""Distribution strategies by name, and the small amount of cluster logic the trainer needs.

Models and algorithms never see a strategy; only the trainer calls ``strategy.run``.
"""

from __future__ import annotations

import os
from typing import Callable

import tensorflow as tf

from tfmeta.base import errors
from tfmeta.base.choices import STRATEGIES


class StrategyError(errors.UserError, RuntimeError):
    """The strategy asked for cannot be set up here (its devices or cluster are not there)."""


class TPUUnavailableError(StrategyError):
    """``--strategy=tpu`` was asked for but no TPU could be reached."""


class ClusterConfigError(StrategyError):
    """``--strategy=multiworker`` without a usable ``TF_CONFIG`` cluster description."""


_TF_CONFIG_HELP = (
    'it should hold JSON like {"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
    '"task": {"type": "worker", "index": 0}}: the same cluster on every worker and each '
    "worker's own index (launch/local_cluster.sh builds it for one machine); or use another "
    "--strategy")


# The jobs of a MultiWorkerMirroredStrategy cluster.
_JOBS = ("chief", "worker")


def _check_tf_config() -> None:
    """Checks ``TF_CONFIG`` before TensorFlow silently falls back to a one-worker 'cluster'."""
    import json

    text = os.environ.get("TF_CONFIG", "")
    if not text.strip():
        raise ClusterConfigError("--strategy=multiworker needs the TF_CONFIG environment "
                                 f"variable, which is not set; {_TF_CONFIG_HELP}")
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise ClusterConfigError(f"TF_CONFIG is not valid JSON ({e.msg} at column {e.colno}); "
                                 f"{_TF_CONFIG_HELP}") from e
    if not (isinstance(spec, dict) and isinstance(spec.get("cluster"), dict)
            and spec["cluster"] and isinstance(spec.get("task"), dict)):
        raise ClusterConfigError(f"TF_CONFIG={text!r} lacks a \"cluster\" or \"task\"; "
                                 f"{_TF_CONFIG_HELP}")
    _check_cluster(spec["cluster"])
    _check_task(spec["task"], spec["cluster"])


def _check_cluster(cluster: dict) -> None:
    """Each job of the cluster is a known job with a non-empty list of "host:port" addresses."""
    for job, addresses in cluster.items():
        if job not in _JOBS:
            raise ClusterConfigError(f"TF_CONFIG's cluster has the job {job!r}; "
                                     f"--strategy=multiworker takes {list(_JOBS)}; "
                                     f"{_TF_CONFIG_HELP}")
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) and ":" in a for a in addresses)):
            raise ClusterConfigError(f"TF_CONFIG's cluster job {job!r} is {addresses!r}; it must "
                                     f"be a non-empty list of \"host:port\" strings; "
                                     f"{_TF_CONFIG_HELP}")
    if len(cluster.get("chief", [])) > 1:
        raise ClusterConfigError(f"TF_CONFIG's cluster has {len(cluster['chief'])} chiefs; at "
                                 f"most one; {_TF_CONFIG_HELP}")


def _check_task(task: dict, cluster: dict) -> None:
    """The task names a job of the cluster and an index of one of its addresses."""
    kind, index = task.get("type"), task.get("index")
    if kind not in cluster:
        raise ClusterConfigError(f"TF_CONFIG's task type is {kind!r}, which is not a job of its "
                                 f"cluster {sorted(cluster)}; {_TF_CONFIG_HELP}")
    size = len(cluster[kind])
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < size:
        raise ClusterConfigError(f"TF_CONFIG's task index is {index!r}; the cluster's job "
                                 f"{kind!r} has {size} task(s), so it must be an integer from 0 "
                                 f"to {size - 1}; {_TF_CONFIG_HELP}")


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
      ClusterConfigError: ``multiworker`` without a usable ``TF_CONFIG``.
      TPUUnavailableError: ``tpu`` when no TPU can be reached.
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
        _check_tf_config()
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
