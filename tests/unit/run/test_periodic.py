"""The training loop's periodic actions, one at a time: made-up steps and clocks, no training."""

import json
import os

import pytest

from tfmeta.run import periodic, workdir


class _Writer:
    """A summary writer that records the step it is used at."""

    def __init__(self):
        self.steps = []

    def as_default(self, step):
        import contextlib

        self.steps.append(step)
        return contextlib.nullcontext()


def _writes(step=7, newest=None):
    return periodic.Writes(lambda: step, newest=newest)


def test_interval_is_due_on_its_multiples_the_last_step_and_when_ending():
    every = periodic.Interval(50, 120)
    assert [s for s in range(1, 121) if every.due(s, 0.0)] == [50, 100, 120]
    assert every.due(7, 0.0, ending=True)
    assert every.next_due(0) == 50 and every.next_due(50) == 100 and every.next_due(99) == 100
    never = periodic.Interval(0, 120)  # 0: only at the end
    assert not never.due(50, 0.0) and never.due(120, 0.0) and never.next_due(10) is None


def test_progress_log_line(caplog):
    import logging

    log = periodic.ProgressLog(10, 30)
    assert log.due(10, 0.0) and not log.due(11, 0.0) and log.due(11, 0.0, ending=True)
    with caplog.at_level(logging.INFO, logger="absl"):
        log.run(20, {"loss": 0.5, "accuracy": 0.25}, 12.34, "00:00:05")
    assert "iteration 20/30  accuracy 0.2500  loss 0.5000  12.3 tasks/s  remaining 00:00:05" \
        in caplog.text


def test_checkpoints_save_at_the_step_and_keep_the_newest(tmp_path):
    saved = []

    class Manager:
        def save(self, checkpoint_number):
            saved.append(checkpoint_number)

    writes = _writes()
    real = str(tmp_path / "checkpoints")
    ckpt = periodic.Checkpoints(100, 250, manager=Manager(), directory=real, real_dir=real,
                                chief=True, writes=writes)
    assert ckpt.due(200, 0.0) and ckpt.due(250, 0.0) and not ckpt.due(201, 0.0)
    assert ckpt.due(201, 0.0, ending=True)  # a stop or the end of the budget saves too
    ckpt.run(200)
    assert saved == [200] and writes.newest == os.path.join(real, "ckpt-200")


def test_a_failed_write_names_the_path_and_the_newest_checkpoint(tmp_path):
    writes = _writes(step=12, newest="/w/checkpoints/ckpt-10")
    with pytest.raises(workdir.WorkdirWriteError) as info:
        with writes("/w/train"):
            raise OSError(28, "No space left on device")
    text = str(info.value)
    assert text.startswith("cannot write /w/train: ")
    assert "meta-iteration 12" in text and "/w/checkpoints/ckpt-10 is intact" in text
    with pytest.raises(workdir.WorkdirWriteError, match="no checkpoint had been saved yet"):
        with _writes()("/w/train"):
            raise OSError(28, "No space left on device")


def test_validation_evaluates_writes_its_summary_and_history(tmp_path):
    entries = []
    asked = []

    def evaluate(episodes):
        asked.append(episodes)
        return {"metric": "accuracy", "accuracy": 0.75, "ci95": 0.1}

    writer = _Writer()
    validation = periodic.Validation(
        5, 12, episodes=40, evaluate=evaluate, writer=writer, workdir=str(tmp_path),
        record=entries.append, writes=_writes())
    assert [s for s in range(1, 13) if validation.due(s, 0.0)] == [5, 10, 12]
    result = validation.run(10, wall_seconds=3.14159, train_seconds=2.0)
    assert asked == [40] and writer.steps == [10] and result["accuracy"] == 0.75
    assert entries == [{"metric": "accuracy", "accuracy": 0.75, "ci95": 0.1,
                        "wall_seconds": 3.142, "train_seconds": 2.0}]
    # No validation episodes: never due, not even at the end.
    off = periodic.Validation(5, 12, episodes=0, evaluate=evaluate, writer=writer,
                              workdir=str(tmp_path), record=None, writes=_writes())
    assert not off.due(5, 0.0) and not off.due(12, 0.0, ending=True)


def test_history_file_is_appended(tmp_path):
    periodic.append_history(str(tmp_path), {"step": 1})
    periodic.append_history(str(tmp_path), {"step": 2})
    with open(tmp_path / workdir.HISTORY_FILE) as f:
        assert [json.loads(line) for line in f] == [{"step": 1}, {"step": 2}]


def test_train_summaries_are_written_after_every_call(monkeypatch):
    import tensorflow as tf

    written = []
    monkeypatch.setattr(tf.summary, "scalar", lambda name, value: written.append((name, value)))
    writer = _Writer()
    summaries = periodic.TrainSummaries(writer, "/w/train", _writes())
    assert summaries.due(1, 0.0) and summaries.due(13, 99.0)
    summaries.run(13, {"loss": 0.5}, learning_rate=0.01, tasks_per_second=8.0)
    assert writer.steps == [13]
    assert written == [("loss", 0.5), ("learning_rate", 0.01), ("tasks_per_second", 8.0)]


def test_time_budget_on_a_fake_clock():
    budget = periodic.TimeBudget(0.5)  # 30 seconds
    assert budget and not budget.due(3, 29.9) and budget.due(3, 30.0)
    assert budget.steps(now=10.0, seconds_per_step=None, planned=100) == 1  # measure one first
    assert budget.steps(now=10.0, seconds_per_step=1.0, planned=100) == 20
    assert budget.steps(now=29.5, seconds_per_step=1.0, planned=100) == 1  # at least one
    assert budget.steps(now=0.0, seconds_per_step=0.1, planned=100) == 100
    none = periodic.TimeBudget(0)
    assert not none and not none.due(10, 1e9)


def test_preemption_is_due_when_a_stop_is_requested(caplog):
    import logging

    requests = iter([False, True])
    stop = periodic.Preemption(lambda: next(requests))
    assert not stop.due(1, 0.0)
    assert stop.due(2, 0.0)
    with caplog.at_level(logging.INFO, logger="absl"):
        stop.run(2)
    assert "Stop requested: saved a checkpoint at iteration 2" in caplog.text


def test_clock_reports_throughput_and_time_left():
    clock = periodic.Clock(tasks_per_step=4)
    clock.add(10, 2.0)
    assert clock.tasks_per_second() == 20.0
    assert clock.remaining(30) == "00:00:06"
    assert clock.remaining(10**7) == "556h"
