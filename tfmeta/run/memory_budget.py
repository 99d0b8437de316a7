"""Memory-aware ``tasks_in_parallel="auto"``: the largest group of tasks that fits.

Where memory is bounded (a GPU's, or ``train.memory_budget_mb``), the trainer measures the peak
of one task's meta-gradient once, before training, and caps the ``"auto"`` group at what the
budget holds (:func:`tfmeta.core.grouping.memory_group_size`; the rule and its limits are in
docs/tasks-in-parallel.md). On a CPU without a budget nothing is measured and the speed rule
alone decides, as before.
"""

from __future__ import annotations

import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from tfmeta.core import grouping
from tfmeta.core.meta_learner import MetaLearner
from tfmeta.run import config as config_lib

MB = 2 ** 20
# Share of a GPU's free memory the activations may take: the rest is headroom for kernels'
# scratch space and the allocator's fragmentation, which the per-task estimate does not see.
GPU_HEADROOM = 0.8


def _gpu_free_bytes() -> float | None:
    """The first GPU's allocator limit minus what it holds now; None without a GPU."""
    if not tf.config.list_physical_devices("GPU"):
        return None
    from tensorflow.python.client import device_lib  # the allocator's limit (no public API)

    limits = [d.memory_limit for d in device_lib.list_local_devices() if d.device_type == "GPU"]
    if not limits:
        return None
    return float(limits[0] - tf.config.experimental.get_memory_info("GPU:0")["current"])


def status_mb(field: str) -> float | None:
    """A field of /proc/self/status (``VmRSS``, ``VmHWM``) in MB; None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Resets the process's peak RSS (Linux: writing 5 to clear_refs); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def one_task_batch(config: ml_collections.ConfigDict, algorithm: MetaLearner,
                   classification: bool) -> dict[str, tf.Tensor]:
    """A batch of one task (zeros) with the shapes training uses."""
    model = algorithm.model
    if classification:
        ways = config.data.ways
        support, query = ways * (config.data.train_shots or config.data.shots), \
            ways * config.data.queries
    else:
        support, query = config.data.k_support, config.data.k_query
    x_shape = list(model.inputs[0].shape[1:])
    dtype = model.inputs[0].dtype
    batch = {"support_x": tf.zeros([1, support, *x_shape], dtype),
             "query_x": tf.zeros([1, query, *x_shape], dtype)}
    for name, n in (("support_y", support), ("query_y", query)):
        batch[name] = (tf.zeros([1, n], tf.int32) if classification
                       else tf.zeros([1, n, *model.outputs[0].shape[1:]], model.outputs[0].dtype))
    return batch


def measure_task_peak(algorithm: MetaLearner, batch: dict[str, tf.Tensor]) -> float:
    """Peak bytes one task's meta-gradient adds (GPU allocator peak, else peak RSS); 0 if unknown.

    The function is traced first, so that tracing's own memory is not counted.
    """
    step = tf.function(lambda b: algorithm.meta_gradients(b)[0])
    concrete = step.get_concrete_function(batch)
    if tf.config.list_physical_devices("GPU"):
        tf.config.experimental.reset_memory_stats("GPU:0")
        before = tf.config.experimental.get_memory_info("GPU:0")["current"]
        [g.numpy() for g in concrete(batch)]
        return float(tf.config.experimental.get_memory_info("GPU:0")["peak"] - before)
    if not reset_peak_rss():
        return 0.0
    before = status_mb("VmRSS")
    [g.numpy() for g in concrete(batch)]
    peak = status_mb("VmHWM")
    return 0.0 if before is None or peak is None else max(peak - before, 0.0) * MB


def apply(config: ml_collections.ConfigDict, algorithm: MetaLearner, *, classification: bool,
          num_replicas: int = 1) -> int | None:
    """Caps ``algorithm``'s ``"auto"`` group at what the memory budget holds; logs why.

    Does nothing (returns None) unless ``train.tasks_in_parallel`` is ``"auto"`` and there is a
    budget: ``train.memory_budget_mb``, or else a GPU's free memory (:data:`GPU_HEADROOM` of it).

    Returns:
      The group size set on ``algorithm``, or None when nothing was measured.
    """
    if config_lib.tasks_in_parallel(config) != "auto":
        return None
    if config.train.memory_budget_mb:
        budget, source = float(config.train.memory_budget_mb) * MB, "train.memory_budget_mb"
    else:
        free = _gpu_free_bytes()
        if free is None:
            return None
        budget, source = GPU_HEADROOM * free, f"{GPU_HEADROOM:.0%} of the GPU's free memory"
    batch = one_task_batch(config, algorithm, classification)
    tasks = max(config.train.meta_batch_size // max(num_replicas, 1), 1)
    examples = int(np.prod(batch["support_x"].shape[1:2])) + int(batch["query_x"].shape[1])
    speed = algorithm.group_size(tasks, examples)
    peak = measure_task_peak(algorithm, batch)
    group, reason = grouping.memory_group_size(tasks, peak, budget, speed_group=speed)
    algorithm.tasks_in_parallel = group
    logging.info("tasks_in_parallel='auto' (budget from %s): %s", source, reason)
    return group
