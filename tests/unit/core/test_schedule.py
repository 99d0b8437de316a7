"""The phase schedule (derivative-order annealing, MAML++'s multi-step loss) and apply_meta_step."""

import numpy as np
import pytest

import tfmeta
from tfmeta.core.schedule import Phase, PhaseSchedule, apply_meta_step, assign_state


def _conv4():
    return tfmeta.omniglot_conv4(3, image_size=8, filters=2, seed=0)


def test_phases_at_the_boundary_iterations():
    schedule = PhaseSchedule(maml=True, first_order_until=4, multi_step_loss_until=6)
    assert schedule.boundaries() == (4, 6)
    assert schedule.phase_starts() == (0, 4, 6)
    expected = {0: (True, True, 4), 3: (True, True, 4), 4: (False, True, 6),
                5: (False, True, 6), 6: (False, False, 10), 9: (False, False, 10)}
    for step, (first_order, msl, switch) in expected.items():
        phase = schedule.phase(step)
        assert phase == Phase(first_order=first_order, multi_step_loss=msl), step
        assert schedule.next_switch(step, 10) == switch, step
    # The end of the run comes first when a switch is after it.
    assert schedule.next_switch(0, 3) == 3


def test_phase_arguments_and_description():
    phase = Phase(first_order=False, multi_step_loss=True)
    assert phase.kwargs() == {"first_order": False, "multi_step_loss": True}
    assert phase.kwargs(7) == {"first_order": False, "multi_step_loss": True, "iteration": 7}
    assert phase.describe() == "first_order=False, multi_step_loss=True"
    # The iteration goes with the multi-step loss only: plain MAML's phases take none.
    assert Phase(first_order=True).kwargs(7) == {"first_order": True}
    assert Phase().kwargs(7) == {} and Phase().describe() == ""


def test_first_order_maml_and_algorithms_without_phases():
    fomaml = PhaseSchedule(maml=True, first_order_until=None)
    assert fomaml.boundaries() == ()
    assert fomaml.phase(10**9).kwargs() == {"first_order": True}
    second = PhaseSchedule(maml=True)
    assert second.boundaries() == () and second.phase(0).kwargs() == {"first_order": False}
    reptile = PhaseSchedule()
    assert reptile.boundaries() == () and reptile.phase(5).kwargs() == {}
    assert reptile.next_switch(5, 100) == 100


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_bad_boundaries_are_refused(bad):
    with pytest.raises(ValueError, match="first_order_until must be an integer >= 0"):
        PhaseSchedule(maml=True, first_order_until=bad)


def test_schedule_of_an_algorithm_object():
    maml = tfmeta.MAML(_conv4(), inner_lr=0.1, inner_steps=1)
    assert PhaseSchedule.for_algorithm(maml, first_order_iterations=3) == PhaseSchedule(
        maml=True, first_order_until=3, multi_step_loss_until=None)
    fo = tfmeta.MAML(_conv4(), inner_lr=0.1, inner_steps=1, first_order=True)
    assert PhaseSchedule.for_algorithm(fo).phase(10**6).first_order is True
    pp = tfmeta.MAMLpp(_conv4(), inner_lr=0.1, inner_steps=2, msl_epochs=2,
                       iterations_per_epoch=3)
    schedule = PhaseSchedule.for_algorithm(pp, first_order_iterations=4)
    assert schedule.boundaries() == (4, 6)
    assert schedule.phase(5) == Phase(first_order=False, multi_step_loss=True)
    # MAML++ without the multi-step loss is told so, as the trainer tells it.
    off = tfmeta.MAMLpp(_conv4(), inner_lr=0.1, inner_steps=2, multi_step_loss=False)
    assert PhaseSchedule.for_algorithm(off).phase(0) == Phase(first_order=False,
                                                              multi_step_loss=False)
    reptile = tfmeta.Reptile(_conv4(), inner_lr=0.1, inner_steps=1)
    assert PhaseSchedule.for_algorithm(reptile) == PhaseSchedule()


def test_the_trainer_and_a_metamodel_get_the_same_schedule():
    """The config's schedule (trainer) and the algorithm's (MetaModel) of one MAML++ run."""
    from tests.distributed_driver import load_config
    from tfmeta.keras import MetaModel
    from tfmeta.run import experiment, specs
    import os
    import tensorflow as tf

    from tests.helpers import REPO as repo
    config = load_config(os.path.join(repo, "configs", "sinusoid_maml.py") + ":smoke")
    config.algorithm = "mamlpp"
    config.mamlpp.per_step_bn = False
    config.inner.steps = 2
    config.update_from_flattened_dict({"mamlpp.first_order_iterations": 4,
                                       "mamlpp.iterations_per_epoch": 3,
                                       "mamlpp.msl_epochs": 2})
    exp = experiment.build_experiment(config, tf.distribute.get_strategy())
    meta = MetaModel(exp.algorithm,
                     first_order_iterations=config.mamlpp.first_order_iterations)
    assert meta.schedule == specs.phase_schedule(config)


def test_apply_meta_step_with_an_optimizer_or_a_step_size():
    import keras
    import tensorflow as tf

    a = tf.Variable([1.0, 2.0])
    b = tf.Variable([1.0, 2.0])
    g = [tf.constant([0.5, -1.0])]
    apply_meta_step(g, [a], optimizer=keras.optimizers.SGD(0.5))
    apply_meta_step(g, [b], step_size=0.5)
    np.testing.assert_allclose(a.numpy(), [0.75, 2.5])
    np.testing.assert_allclose(b.numpy(), a.numpy())
    with pytest.raises(ValueError, match="exactly one"):
        apply_meta_step(g, [a])
    with pytest.raises(ValueError, match="exactly one"):
        apply_meta_step(g, [a], optimizer=keras.optimizers.SGD(0.5), step_size=0.5)


def test_assign_state_skips_integer_state():
    import tensorflow as tf

    stat = tf.Variable([0.0, 0.0])
    counter = tf.Variable(3, dtype=tf.int64)
    assign_state([stat, counter], [tf.constant([1.0, 2.0]), tf.constant(9, tf.int64)],
                 strategy=tf.distribute.get_strategy())
    np.testing.assert_allclose(stat.numpy(), [1.0, 2.0])
    assert int(counter.numpy()) == 3
