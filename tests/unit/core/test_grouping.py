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
