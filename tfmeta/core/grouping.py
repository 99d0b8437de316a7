"""Which tasks of a meta-batch are computed together, and the loop over those groups.

``tasks_in_parallel``, decided here and only here (:func:`group_size`):
  * ``1``: one task at a time, each through ``keras.Layer.stateless_call``;
  * ``k``: ``k`` tasks per iteration of a loop over groups (the last group may be smaller), each
    group in one task-batched forward pass (:class:`tfmeta.core.batched.BatchedModel`); memory grows
    with ``k``, not with the meta-batch;
  * ``"all"``: the whole local meta-batch in one computation (its size must be static);
  * ``"auto"`` (default): see :func:`auto_tasks_in_parallel`.
A model with a layer that cannot run batched is computed one task at a time.

:func:`over_groups` runs a function on each group inside one ``tf.while_loop`` whose shapes are all
static (XLA, TPUs); it knows nothing of meta-learning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tfmeta.core import functional as F
from tfmeta.base.choices import TASKS_IN_PARALLEL

# The CPU side of the "auto" rule, measured with benchmarks/train_throughput.py
# (docs/performance.md): see auto_tasks_in_parallel.
CPU_GROUP_MAX_EXAMPLES = 40
CPU_GROUP = 4

Batch = Mapping[str, tf.Tensor]


def check_tasks_in_parallel(value: Any) -> int | str:
    """Validates ``tasks_in_parallel``: a positive int (or its digits), ``"all"`` or ``"auto"``.

    Raises:
      ValueError: naming the value and what is allowed.
    """
    if isinstance(value, str) and value in TASKS_IN_PARALLEL:
        return value
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"tasks_in_parallel must be a positive integer, 'all' or 'auto', "
                         f"got {value!r}")
    return int(value)


def on_accelerator() -> bool:
    """Whether TensorFlow sees a GPU or TPU (where grouping all tasks is the right default)."""
    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def auto_tasks_in_parallel(num_tasks: int, examples_per_task: int, *,
                           second_order: bool = True, grouped_conv: bool = True) -> int:
    """The ``"auto"`` rule: how many tasks to compute together.

    On a GPU or TPU every task of the local meta-batch at once: there the loop over tasks is what
    leaves the chip idle. On CPU, where oneDNN's kernels are already efficient one task at a
    time, what was measured fastest (``benchmarks/train_throughput.py``, 2-core x86 CPU):

    * second-order meta-gradients: groups of :data:`CPU_GROUP` tasks when a task has at most
      :data:`CPU_GROUP_MAX_EXAMPLES` support + query examples, else all at once (larger tasks
      amortise the grouped convolutions' overhead);
    * first order (first-order MAML, Reptile, evaluation): one task at a time;
    * one task at a time, too, for a convolutional model on a CPU build that cannot differentiate
      grouped convolutions (no oneDNN): the batched pass would then use im2col, measured 2-4x
      slower than the loop.

    Args:
      num_tasks: tasks in the local meta-batch.
      examples_per_task: support plus query examples of one task.
      second_order: whether the computation differentiates through the inner loop.
      grouped_conv: whether the batched pass runs the model's convolutions as grouped
        convolutions (:func:`tfmeta.core.batched.conv_implementation`); True for models without any.
    """
    if on_accelerator():
        return num_tasks
    if not second_order or not grouped_conv:
        return 1
    if examples_per_task <= CPU_GROUP_MAX_EXAMPLES:
        return min(CPU_GROUP, num_tasks)
    return num_tasks


def group_size(tasks_in_parallel: int | str, num_tasks: int | None,
               examples_per_task: int | None = None, *, batched: bool = True,
               second_order: bool = True, serving: bool = False,
               grouped_conv: bool = True) -> int | None:
    """Tasks computed together for a batch of ``num_tasks`` tasks (None: all, however many).

    Args:
      tasks_in_parallel: the learner's setting (checked by :func:`check_tasks_in_parallel`).
      num_tasks: tasks in the local batch; None when only known at run time.
      examples_per_task: support plus query examples of one task (for ``"auto"``).
      batched: whether the model can run tasks batched; if not, one task at a time.
      second_order: whether the computation differentiates through the inner loop.
      serving: adaptation for predictions (no meta-gradient, no metrics): a fixed integer
        setting is kept, anything else computes every task of the request together.
      grouped_conv: see :func:`auto_tasks_in_parallel`.

    Raises:
      ValueError: ``"all"`` with a number of tasks unknown when the graph is built.
    """
    if not batched:
        return 1
    k = tasks_in_parallel
    if serving:
        return k if isinstance(k, int) and num_tasks else None
    if k == "auto":
        if num_tasks is None:
            return None if on_accelerator() else 1
        k = auto_tasks_in_parallel(num_tasks, examples_per_task or 0, second_order=second_order,
                                   grouped_conv=grouped_conv)
    if k == "all":
        if num_tasks is None:
            raise ValueError(
                "tasks_in_parallel='all' needs a static number of tasks per replica; this "
                "batch's task axis is unknown when the graph is built (use a fixed batch "
                "size, or an integer tasks_in_parallel)")
        return num_tasks
    return k if num_tasks is None else min(k, num_tasks)


def static_count(t: tf.Tensor, axis: int) -> int | None:
    """The static size of ``t``'s ``axis``, or None when unknown."""
    shape = t.shape
    return shape[axis] if shape.rank is not None and shape.rank > axis else None


def over_groups(fn: Callable[[dict[str, tf.Tensor]], tuple[Any, Any]], batch: Batch, *,
                group: int | None, sum_init: Any, stack_specs: Any,
                one_at_a_time: bool = False) -> tuple[Any, Any]:
    """Runs ``fn`` on groups of ``group`` tasks of ``batch`` (None: all at once).

    ``fn(group_batch) -> (to_sum, to_stack)``: ``to_sum`` is accumulated into ``sum_init``
    (floating entries added; others replaced), ``to_stack`` has a leading task axis and is
    concatenated over groups. Groups run in a ``tf.while_loop`` (a Python loop eagerly) that
    holds one group's activations at a time; no gradient flows through the loop. A last,
    smaller group is computed after the loop, so every shape stays static (XLA, TPUs).

    Args:
      fn: what one group computes.
      batch: tensors with a leading task axis (the first key's gives the number of tasks).
      group: tasks per group, or None for one computation over every task.
      sum_init: zeros (and initial non-floating values) of ``to_sum``'s structure.
      stack_specs: ``tf.TensorSpec`` structure of one task's ``to_stack``.
      one_at_a_time: never run two groups at once (``parallel_iterations=1``), so that only one
        group's activations are alive; by default the executor may overlap them.

    Returns:
      ``(sum, stacked)``.
    """
    first = next(iter(batch.values()))
    n = static_count(first, 0)

    def add(acc: Any, to_sum: Any) -> Any:
        return tf.nest.map_structure(
            lambda a, x: a + tf.cast(x, a.dtype) if F.is_floating(a) else x, acc, to_sum)

    def concat(*parts: Any) -> Any:
        return tf.nest.map_structure(lambda _, *xs: tf.concat(xs, 0), stack_specs, *parts)

    if group is None or (n is not None and group >= n):
        to_sum, to_stack = fn(dict(batch))
        return add(sum_init, to_sum), to_stack
    if n is None:  # one task at a time over a run-time number of tasks
        full, rest = tf.shape(first)[0], 0
    else:
        full, rest = divmod(n, group)

    def take(start: Any, size: int) -> dict[str, tf.Tensor]:
        return {k: tf.gather(v, start + tf.range(size)) for k, v in batch.items()}

    if tf.executing_eagerly() and n is not None:
        acc, stacked = sum_init, []
        for start in range(0, n, group):
            to_sum, to_stack = fn({k: v[start: start + group] for k, v in batch.items()})
            acc, stacked = add(acc, to_sum), stacked + [to_stack]
        return acc, concat(*stacked)

    arrays = tf.nest.map_structure(
        lambda s: tf.TensorArray(s.dtype, size=full, element_shape=[group, *s.shape]),
        stack_specs)

    def body(i, acc, arrays):
        to_sum, to_stack = fn(take(i * group, group))
        arrays = tf.nest.map_structure(lambda ta, x: ta.write(i, x), arrays, to_stack)
        return i + 1, add(acc, to_sum), arrays

    # The groups are independent until the sum, so by default the executor may run several at
    # once (faster on a CPU's cores) and hold their activations together; where memory is the
    # point (rematerialised meta-gradients), one group at a time.
    _, acc, arrays = tf.while_loop(lambda i, *_: i < full, body,
                                   (tf.constant(0), sum_init, arrays),
                                   maximum_iterations=full,
                                   parallel_iterations=1 if one_at_a_time else 10)
    stacked = tf.nest.map_structure(lambda ta, s: _merge_groups(ta.stack(), s), arrays,
                                    stack_specs)
    if rest:
        to_sum, to_stack = fn(take(full * group, rest))
        acc, stacked = add(acc, to_sum), concat(stacked, to_stack)
    return acc, stacked


def _merge_groups(x: tf.Tensor, spec: Any) -> tf.Tensor:
    """``[groups, group, *shape]`` to ``[groups * group, *shape]``.

    A size known only at run time (a serving request's query count) comes from the tensor, as
    the static shape cannot hold it.
    """
    if spec.shape.is_fully_defined():
        return tf.reshape(x, [-1, *spec.shape])
    return tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))


def sum_tasks(values: list[tf.Tensor]) -> list[tf.Tensor]:
    """Sums floating values over the leading task axis; keeps the last task's other values."""
    return [tf.reduce_sum(v, axis=0) if F.is_floating(v) else v[-1] for v in values]


def memory_group_size(num_tasks: int, task_peak_bytes: float, budget_bytes: float | None, *,
                      speed_group: int | None = None) -> tuple[int, str]:
    """The largest group of tasks whose meta-gradient fits a memory budget, and why.

    A group of ``k`` tasks holds ``k`` times one task's activations (every tensor of the
    task-batched pass has the tasks on one axis), so it is taken to peak at ``k *
    task_peak_bytes`` above what is held anyway (weights, optimiser slots, the graph). Kernels'
    scratch space and allocator fragmentation are not in that estimate: leave headroom in the
    budget.

    Args:
      num_tasks: tasks in the local meta-batch (the largest group).
      task_peak_bytes: measured peak of one task's meta-gradient above what was held before it.
      budget_bytes: memory available for the activations; None or <= 0: no limit.
      speed_group: the group the speed rule (:func:`auto_tasks_in_parallel`) chose; the result
        is never larger. Defaults to ``num_tasks``.

    Returns:
      ``(group size, reason)``, the reason one sentence naming the figures.
    """
    num_tasks = max(int(num_tasks), 1)
    speed = num_tasks if speed_group is None else max(1, min(int(speed_group), num_tasks))
    mb = 2.0 ** 20
    if not budget_bytes or budget_bytes <= 0:
        return speed, f"no memory budget: {speed} of {num_tasks} tasks together (speed rule)"
    if task_peak_bytes <= 0:
        return speed, (f"one task's peak was not measurable: {speed} of {num_tasks} tasks "
                       "together (speed rule)")
    fits = int(budget_bytes // task_peak_bytes)
    if fits < 1:
        return 1, (f"one task needs {task_peak_bytes / mb:.0f} MB, more than the "
                   f"{budget_bytes / mb:.0f} MB budget: one task at a time (it may not fit)")
    group = min(fits, speed)
    if fits < speed:
        limit = "memory"
    elif speed < num_tasks:
        limit = "the speed rule"
    else:
        limit = "the meta-batch"
    return group, (f"{group} of {num_tasks} tasks together: {fits} task(s) of "
                   f"{task_peak_bytes / mb:.0f} MB fit the {budget_bytes / mb:.0f} MB budget "
                   f"(limited by {limit})")
