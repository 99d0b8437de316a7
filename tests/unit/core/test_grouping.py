"""Which tasks run together (tasks_in_parallel), decided in one place, and the loop over groups."""

from __future__ import annotations

import pytest
import tensorflow as tf

from tfmeta.core import batched, maml, models


def test_all_needs_a_static_number_of_tasks():
    model = models.sinusoid_mlp(hidden=(4,), seed=0)
    algo = maml.MAML(model, inner_lr=0.1, inner_steps=1, loss="mse", tasks_in_parallel="all")
    spec = tf.TensorSpec([None, 5, 1], tf.float32)

    @tf.function(input_signature=[spec] * 4)
    def step(sx, sy, qx, qy):
        return algo.meta_step({"support_x": sx, "support_y": sy, "query_x": qx, "query_y": qy},
                              global_batch_size=4).grads

    with pytest.raises(ValueError, match="tasks_in_parallel='all' needs a static number"):
        step.get_concrete_function()


def test_auto_rule_is_documented_and_bounded():
    from tfmeta.core import grouping

    assert grouping.auto_tasks_in_parallel(32, 2) == min(grouping.CPU_GROUP, 32)
    assert grouping.auto_tasks_in_parallel(16, 400) == 16
    assert grouping.auto_tasks_in_parallel(16, 4, second_order=False) == 1
    assert grouping.auto_tasks_in_parallel(16, 400, grouped_conv=False) == 1
    algo = maml.MAML(models.omniglot_conv4(5, filters=4, seed=0), inner_lr=0.4, inner_steps=1)
    assert algo.tasks_in_parallel == "auto"
    # A CPU build without grouped-convolution gradients (no oneDNN) computes conv tasks one at a
    # time; models without convolutions are grouped either way.
    grouped = batched.cpu_grouped_conv_gradients()
    assert algo.group_size(3, examples_per_task=2) == (3 if grouped else 1)
    assert algo.group_size(32, examples_per_task=80) == (32 if grouped else 1)
    assert algo.group_size(32, examples_per_task=80, second_order=False) == 1
    mlp = maml.MAML(models.sinusoid_mlp(hidden=(4,), seed=0), inner_lr=0.1, inner_steps=1,
                    loss="mse")
    assert mlp.group_size(32, examples_per_task=80) == 32


def test_group_size_is_decided_in_one_place():
    from tfmeta.core import grouping

    # A model that cannot run batched: one task at a time, whatever was asked.
    assert grouping.group_size("all", 8, batched=False) == 1
    assert grouping.group_size(3, 8) == 3 and grouping.group_size(3, 2) == 2
    assert grouping.group_size("all", 8) == 8
    assert grouping.group_size(3, None) == 3
    # Serving: a fixed integer is kept; otherwise every task of the request together.
    assert grouping.group_size(3, 8, serving=True) == 3
    assert grouping.group_size("auto", 8, serving=True) is None
    assert grouping.group_size("all", None, serving=True) is None
    with pytest.raises(ValueError, match="tasks_in_parallel='all' needs a static number"):
        grouping.group_size("all", None)
    for bad in (0, -1, "some", 2.5, True):
        with pytest.raises(ValueError, match="tasks_in_parallel must be a positive integer"):
            grouping.check_tasks_in_parallel(bad)
    assert grouping.check_tasks_in_parallel("4") == 4


@pytest.mark.parametrize("group", [None, 1, 2, 3, 5])
def test_over_groups_sums_and_stacks_like_one_pass(group):
    import numpy as np
    import tensorflow as tf

    from tfmeta.core import grouping

    batch = {"x": tf.constant(np.arange(5 * 2, dtype="float32").reshape(5, 2))}

    def fn(task):
        return {"total": tf.reduce_sum(task["x"])}, {"double": 2 * task["x"]}

    specs = {"double": tf.TensorSpec([2], tf.float32)}
    eager = grouping.over_groups(fn, batch, group=group, sum_init={"total": tf.constant(0.0)},
                                 stack_specs=specs)
    graph = tf.function(lambda b: grouping.over_groups(
        fn, b, group=group, sum_init={"total": tf.constant(0.0)}, stack_specs=specs))(batch)
    for total, stacked in (eager, graph):
        assert float(total["total"]) == 45.0
        np.testing.assert_array_equal(stacked["double"], 2 * batch["x"].numpy())


MB = 2 ** 20


@pytest.mark.parametrize("tasks,peak_mb,budget_mb,speed,group,why", [
    (8, 1000, 3500, None, 3, "3 task(s) of 1000 MB fit the 3500 MB budget (limited by memory)"),
    (8, 1000, 20000, None, 8, "(limited by the meta-batch)"),
    (8, 1000, 20000, 4, 4, "(limited by the speed rule)"),
    (8, 1000, 2500, 4, 2, "(limited by memory)"),
    (2, 5000, 4000, None, 1, "one task needs 5000 MB, more than the 4000 MB budget"),
    (8, 1000, None, 4, 4, "no memory budget: 4 of 8 tasks together"),
    (8, 1000, 0, None, 8, "no memory budget"),
    (8, 0, 4000, 2, 2, "not measurable"),
])
def test_memory_group_size(tasks, peak_mb, budget_mb, speed, group, why):
    from tfmeta.core import grouping

    budget = None if budget_mb is None else budget_mb * MB
    got, reason = grouping.memory_group_size(tasks, peak_mb * MB, budget, speed_group=speed)
    assert got == group
    assert why in reason


def test_memory_budget_caps_the_auto_group(monkeypatch):
    """train.memory_budget_mb: one task's measured peak decides how many fit (logged)."""
    from absl import logging as absl_logging

    from tfmeta.run import config as config_lib
    from tfmeta.run import experiment, memory_budget

    config = config_lib.base_config()
    config.algorithm, config.task, config.model.name = "maml", "sinusoid", "mlp"
    config.train.meta_batch_size, config.train.memory_budget_mb = 8, 250
    config_lib.validate(config)
    model = models.sinusoid_mlp(hidden=(4,), seed=0)
    algo = experiment.build_algorithm(config, model, classification=False)
    measured = []

    def peak(algorithm, batch):
        measured.append({k: tuple(v.shape) for k, v in batch.items()})
        return 100 * MB

    logged = []
    monkeypatch.setattr(memory_budget, "measure_task_peak", peak)
    monkeypatch.setattr(absl_logging, "info", lambda msg, *args: logged.append(msg % args))
    assert memory_budget.apply(config, algo, classification=False) == 2
    assert algo.tasks_in_parallel == 2
    assert measured == [{"support_x": (1, config.data.k_support, 1),
                         "query_x": (1, config.data.k_query, 1),
                         "support_y": (1, config.data.k_support, 1),
                         "query_y": (1, config.data.k_query, 1)}]
    assert logged == ["tasks_in_parallel='auto' (budget from train.memory_budget_mb): 2 of 8 "
                      "tasks together: 2 task(s) of 100 MB fit the 250 MB budget (limited by "
                      "memory)"]
    # No budget on CPU: nothing measured, the speed rule stays.
    config.train.memory_budget_mb = 0
    algo.tasks_in_parallel = "auto"
    if not tf.config.list_physical_devices("GPU"):
        assert memory_budget.apply(config, algo, classification=False) is None
        assert algo.tasks_in_parallel == "auto" and len(measured) == 1


def test_memory_budget_measures_one_task_on_cpu():
    """The real measurement: a positive peak for a convolutional task (peak RSS on Linux)."""
    import os

    from tfmeta.run import memory_budget

    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's peak-RSS reset")
    model = models.conv4(5, 28, 1, 32)
    algo = maml.MAML(model, inner_lr=0.1, inner_steps=2, tasks_in_parallel="auto")
    batch = {"support_x": tf.random.normal([1, 25, 28, 28, 1]),
             "query_x": tf.random.normal([1, 75, 28, 28, 1]),
             "support_y": tf.zeros([1, 25], tf.int32), "query_y": tf.zeros([1, 75], tf.int32)}
    assert memory_budget.measure_task_peak(algo, batch) > 1 * MB
