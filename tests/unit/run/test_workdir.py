"""Work directories a second run cannot corrupt: lock, config history, damaged checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import REPO, file_tree, subprocess_env
from tfmeta.run import experiment, trainer, workdir

SINE = os.path.join(REPO, "configs", "sinusoid_maml.py")
_SMALL = {"train.iterations": 6, "train.steps_per_loop": 3, "train.meta_batch_size": 4,
          "train.eval_every": 0, "train.eval_episodes": 0, "train.log_every": 3,
          "train.checkpoint_every": 3, "train.keep_checkpoints": 3, "eval.episodes": 5}


def _config(**overrides):
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from distributed_driver import load_config

    config = load_config(f"{SINE}:smoke")
    config.update_from_flattened_dict(dict(_SMALL, **overrides))
    return config


# ------------------------------------------------------------------------------------- lock
def test_lock_names_the_holder_and_is_released(tmp_path):
    lock = workdir.WorkdirLock(str(tmp_path)).acquire()
    with pytest.raises(workdir.WorkdirLockedError) as info:
        workdir.WorkdirLock(str(tmp_path)).acquire()
    message = str(info.value)
    assert f"pid {os.getpid()}" in message and "in use by another training run" in message
    lock.release()
    assert not os.path.exists(tmp_path / workdir.LOCK_FILE)
    workdir.WorkdirLock(str(tmp_path)).acquire().release()


def test_stale_locks_are_taken_over(tmp_path, caplog):
    path = tmp_path / workdir.LOCK_FILE
    # A dead process on this host (a pid that does not exist).
    dead = {"token": "x", "host": os.uname().nodename, "pid": 2**22 + 7, "started": 0,
            "heartbeat": time.time(), "command": "tfmeta.train (killed)"}
    path.write_text(json.dumps(dead))
    with caplog.at_level("WARNING"):
        workdir.WorkdirLock(str(tmp_path)).acquire().release()
    assert "no longer alive" in caplog.text and str(2**22 + 7) in caplog.text
    # A live pid whose start time differs: the pid was recycled by another process.
    recycled = dict(dead, pid=os.getpid(), pid_start_time="1")
    path.write_text(json.dumps(recycled))
    workdir.WorkdirLock(str(tmp_path)).acquire().release()
    # Another host: stale only once its heartbeat is old.
    remote = dict(dead, host="elsewhere", heartbeat=time.time())
    path.write_text(json.dumps(remote))
    with pytest.raises(workdir.WorkdirLockedError, match="elsewhere"):
        workdir.WorkdirLock(str(tmp_path)).acquire()
    path.write_text(json.dumps(dict(remote, heartbeat=time.time() - 2 * workdir.STALE_SECONDS)))
    workdir.WorkdirLock(str(tmp_path)).acquire().release()
    # A half-written lock file is stale too.
    path.write_text("{")
    workdir.WorkdirLock(str(tmp_path)).acquire().release()


def _train_cmd(run_dir, *extra):
    return [sys.executable, "-m", "tfmeta.train", f"--config={SINE}:smoke",
            f"--workdir={run_dir}", "--noexport", "--config.train.eval_every=0",
            "--config.train.eval_episodes=0", "--config.eval.episodes=5", *extra]


def test_second_training_is_refused_and_a_killed_holder_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.Popen(_train_cmd(run_dir, "--config.train.iterations=1000000"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=subprocess_env(), cwd=REPO)
    try:
        deadline = time.time() + 300
        while not (run_dir / "checkpoints").exists():
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.time() < deadline
            time.sleep(0.2)
        second = subprocess.run(_train_cmd(run_dir), capture_output=True, text=True,
                                env=subprocess_env(), cwd=REPO, timeout=300)
        assert second.returncode == 2
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"pid {first.pid}" in errors[0], second.stderr[-2000:]
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    # The killed run's lock is stale: the same command resumes.
    third = subprocess.run(_train_cmd(run_dir, "--config.train.iterations=1000000",
                                      "--config.train.max_minutes=0.02"),
                           capture_output=True, text=True, env=subprocess_env(), cwd=REPO,
                           timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "no longer alive" in third.stderr and "Resumed from" in third.stderr
    assert not (run_dir / workdir.LOCK_FILE).exists()


# ----------------------------------------------------------------------------------- config
def test_incompatible_config_is_refused_before_anything_is_written(tmp_path):
    run_dir = str(tmp_path / "run")
    trainer.train(_config(), run_dir, final_evaluation=False)
    before = file_tree(run_dir)
    for overrides, field in [({"model.name": "mlp", "inner.lr": 0.5}, "inner.lr"),
                             ({"algorithm": "fomaml"}, "algorithm"),
                             ({"train.meta_batch_size": 8}, "train.meta_batch_size")]:
        with pytest.raises(workdir.IncompatibleConfigError, match=field) as info:
            trainer.train(_config(**overrides), run_dir, final_evaluation=False)
        assert "saved -> now" in str(info.value)
        assert file_tree(run_dir) == before, "a refused run must not write anything"
    # The binary says it in one line with exit status 2.
    proc = subprocess.run(_train_cmd(run_dir, "--config.inner.lr=0.5"), capture_output=True,
                          text=True, env=subprocess_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "inner.lr: 0.01 -> 0.5" in errors[0]
    assert file_tree(run_dir) == before


def test_compatible_changes_are_recorded_and_the_original_config_kept(tmp_path):
    run_dir = str(tmp_path / "run")
    trainer.train(_config(), run_dir, final_evaluation=False)
    original = (tmp_path / "run" / "config.json").read_text()
    summary = trainer.train(_config(**{"train.iterations": 9, "eval.episodes": 7}), run_dir)
    assert summary["step"] == 9
    assert (tmp_path / "run" / "config.json").read_text() == original
    history = json.loads((tmp_path / "run" / workdir.CONFIG_CHANGES_FILE).read_text())
    assert history[-1]["changes"] == {"eval.episodes": [5, 7], "train.iterations": [6, 9]}
    config = workdir.load_config(run_dir)
    assert config.train.iterations == 9 and config.eval.episodes == 7
    assert json.loads((tmp_path / "run" / "eval_test.json").read_text())["episodes"] == 7


def test_unwritable_workdir_is_one_line_exit_2():
    proc = subprocess.run(_train_cmd("/proc/tfmeta-run"), capture_output=True, text=True,
                          env=subprocess_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "/proc/tfmeta-run" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------ checkpoints
def _damage(prefix: str, how: str, needle: np.ndarray | None = None) -> None:
    data = f"{prefix}.data-00000-of-00001"
    if how == "truncated":
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) // 2)
    elif how == "deleted":
        os.remove(data)
    else:  # one flipped bit inside the tensor `needle` (a model variable, found by its bytes)
        with open(data, "rb") as f:
            content = bytearray(f.read())
        offset = bytes(content).find(needle.tobytes())
        assert offset >= 0
        content[offset + needle.nbytes // 2] ^= 0x10
        with open(data, "wb") as f:
            f.write(content)


def _params(exp) -> list[np.ndarray]:
    return [v.numpy() for v in exp.model.trainable_variables]


@pytest.mark.parametrize("how", ["truncated", "deleted", "bitflip"])
def test_damaged_latest_checkpoint_falls_back_to_the_newest_readable(tmp_path, how, caplog):
    run_dir = str(tmp_path / "run")
    trainer.train(_config(), run_dir, final_evaluation=False)
    ckpts = os.path.join(run_dir, "checkpoints")
    good = experiment.restore(run_dir)
    assert int(good.step.numpy()) == 6
    reference = experiment.build_experiment(_config(), tf.distribute.get_strategy(),
                                         check_data=False)
    tf.train.Checkpoint(model=reference.model).restore(
        os.path.join(ckpts, "ckpt-3")).expect_partial()
    _damage(os.path.join(ckpts, "ckpt-6"), how,
            needle=max(_params(good), key=lambda p: p.nbytes))

    with caplog.at_level("WARNING"):
        exp = experiment.restore(run_dir)  # what evaluate and export use
    assert int(exp.step.numpy()) == 3
    assert "ckpt-6" in caplog.text and "cannot be read" in caplog.text
    for got, want in zip(_params(exp), _params(reference)):
        np.testing.assert_array_equal(got, want)
    assert not all(np.array_equal(a, b) for a, b in zip(_params(exp), _params(good)))

    # Training continues from ckpt-3 and reaches the end again.
    caplog.clear()
    with caplog.at_level("INFO", logger="absl"):  # absl may have been set higher
        summary = trainer.train(_config(), run_dir, final_evaluation=False)
    assert summary["step"] == 6 and "Resumed from" in caplog.text and "ckpt-3" in caplog.text
    assert int(experiment.restore(run_dir).step.numpy()) == 6


def test_no_readable_checkpoint_names_each_one(tmp_path):
    run_dir = str(tmp_path / "run")
    trainer.train(_config(**{"train.keep_checkpoints": 2}), run_dir, final_evaluation=False)
    ckpts = os.path.join(run_dir, "checkpoints")
    for n in (3, 6):
        _damage(os.path.join(ckpts, f"ckpt-{n}"), "truncated")
    with pytest.raises(workdir.CheckpointError, match="ckpt-6.*ckpt-3"):
        experiment.restore(run_dir)
    proc = subprocess.run([sys.executable, "-m", "tfmeta.export", f"--workdir={run_dir}"],
                          capture_output=True, text=True, env=subprocess_env(), cwd=REPO,
                          timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ckpt-6" in errors[0] and "ckpt-3" in errors[0]


# ------------------------------------------------------------------------------------ paths
def _errors(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def test_normalize_makes_local_paths_absolute_and_leaves_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert workdir.normalize("runs/rel1") == str(tmp_path / "runs" / "rel1")
    assert workdir.normalize("./runs/../runs/rel1/") == str(tmp_path / "runs" / "rel1")
    assert workdir.normalize(".") == str(tmp_path)
    assert workdir.normalize("~/run") == str(tmp_path / "home" / "run")
    for url in ("gs://bucket/run", "gs://bucket/run/", "ram://x/../y"):
        assert workdir.normalize(url) == url
    for empty in ("", "  "):
        with pytest.raises(workdir.WorkdirError, match="work directory path is empty"):
            workdir.normalize(empty)


def test_relative_and_home_workdirs_train_resume_restore_and_export(tmp_path, monkeypatch,
                                                                     caplog):
    from tfmeta.run import exporter, reporting

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    trainer.train(_config(**{"train.iterations": 3}), "runs/rel1", final_evaluation=False)
    assert int(experiment.restore("runs/rel1").step.numpy()) == 3
    with caplog.at_level("INFO", logger="absl"):
        summary = trainer.train(_config(), "~/runs/rel1/")  # the same directory, resumed
    assert summary["step"] == 6 and "Resumed from" in caplog.text
    assert "cannot be read" not in caplog.text
    # From another directory, the absolute path means the same run.
    monkeypatch.chdir(tmp_path / "runs")
    assert int(experiment.restore(str(tmp_path / "runs" / "rel1")).step.numpy()) == 6
    assert int(experiment.restore("rel1").step.numpy()) == 6
    assert reporting.load_run("~/runs/rel1").workdir == str(tmp_path / "runs" / "rel1")
    assert not (tmp_path / "runs" / "~").exists()
    for call in (lambda: trainer.train(_config(), ""), lambda: experiment.restore(""),
                 lambda: exporter.export_from_workdir("")):
        with pytest.raises(workdir.WorkdirError, match="empty"):
            call()


def test_checkpoint_state_files_of_older_runs_still_resume(tmp_path, monkeypatch):
    """State files hold paths as they were given; only the checkpoint's name counts."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "rel1"
    trainer.train(_config(), str(run_dir), final_evaluation=False)
    state = run_dir / "checkpoints" / "checkpoint"
    # As a run given --workdir=runs/rel1 wrote it, relative to the directory or to its cwd, and
    # as a moved directory's absolute paths read.
    for written in ["ckpt-{n}", "runs/rel1/checkpoints/ckpt-{n}",
                    "/elsewhere/checkpoints/ckpt-{n}"]:
        state.write_text("".join([f'model_checkpoint_path: "{written.format(n=6)}"\n'] + [
            f'all_model_checkpoint_paths: "{written.format(n=n)}"\n' for n in (3, 6)]))
        for given in ("runs/rel1", str(run_dir), "runs/rel1/"):
            ckpts = os.path.join(given, "checkpoints")
            assert workdir.checkpoint_candidates(ckpts)[:2] == [
                os.path.join(ckpts, "ckpt-6"), os.path.join(ckpts, "ckpt-3")]
            assert int(experiment.restore(given).step.numpy()) == 6


def test_binaries_with_a_relative_workdir_after_cd(tmp_path):
    """Train (with its final export) in a relative directory, evaluate it from elsewhere via ~."""
    env = subprocess_env(HOME=str(tmp_path))
    # A cheap export: one inner step at most.
    proc = subprocess.run(_train_cmd("runs/rel1", "--export", "--config.train.iterations=4",
                                     "--config.inner.eval_steps=1",
                                     "--config.export.max_inner_steps=1"),
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "rel1"
    assert (run_dir / "export" / "saved_model.pb").exists()
    assert (run_dir / "checkpoints" / "ckpt-4.index").exists()
    (tmp_path / "elsewhere").mkdir()
    proc = subprocess.run([sys.executable, "-m", "tfmeta.evaluate", "--workdir=~/runs/rel1",
                           "--episodes=3"], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path / "elsewhere"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"written to {run_dir}{os.sep}eval_test_" in proc.stdout
    # An empty --workdir would have meant the current directory: one line, nothing written.
    proc = subprocess.run(_train_cmd(""), capture_output=True, text=True, env=env,
                          cwd=str(tmp_path / "elsewhere"), timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(_errors(proc)) == 1 and "work directory path is empty" in _errors(proc)[0]
    assert os.listdir(tmp_path / "elsewhere") == []


# ------------------------------------------------------------------------ work-directory state
def test_checkpoints_without_config_json_are_refused_before_anything_is_written(tmp_path):
    run_dir = str(tmp_path / "run")
    trainer.train(_config(), run_dir, final_evaluation=False)
    os.remove(os.path.join(run_dir, workdir.CONFIG_FILE))
    before = file_tree(run_dir)
    for call in (lambda: trainer.train(_config(), run_dir),
                 lambda: trainer.train(_config(**{"inner.lr": 0.5}), run_dir),
                 lambda: experiment.restore(run_dir)):
        with pytest.raises(workdir.WorkdirStateError) as info:
            call()
        message = str(info.value)
        assert "no config.json" in message and "checkpoints" in message
        assert "backup" in message and "new --workdir" in message
        assert file_tree(run_dir) == before, "nothing may be written to a directory not understood"
    proc = subprocess.run(_train_cmd(run_dir, "--config.inner.lr=0.5"), capture_output=True,
                          text=True, env=subprocess_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(_errors(proc)) == 1 and "no config.json" in _errors(proc)[0]
    assert file_tree(run_dir) == before
    # Unrelated files do not make a directory a training run's: it may be used for a new one.
    other = tmp_path / "notes"
    other.mkdir()
    (other / "README.txt").write_text("mine")
    assert workdir.check_state(str(other)) is None


_RANDOM_BYTES = bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8))

_DAMAGE = {
    "truncated config.json": (workdir.CONFIG_FILE, lambda text: text[: len(text) // 2],
                              "not valid JSON"),
    "config.json holding a list": (workdir.CONFIG_FILE, lambda text: "[]", "holds a list"),
    "empty config.json": (workdir.CONFIG_FILE, lambda text: "", "is empty"),
    "string for a number": (workdir.CONFIG_FILE,
                            lambda text: text.replace('"lr": 0.01,', '"lr": "fast",'),
                            "'inner.lr' holds 'fast'"),
    "invalid value": (workdir.CONFIG_FILE,
                      lambda text: text.replace('"algorithm": "maml"', '"algorithm": "xyz"'),
                      "not a valid config"),
    "truncated config_changes.json": (workdir.CONFIG_CHANGES_FILE,
                                      lambda text: text[: len(text) // 2], "not valid JSON"),
    "config_changes.json holding an object": (workdir.CONFIG_CHANGES_FILE,
                                              lambda text: "{}", "not a list"),
    "random bytes in config.json": (workdir.CONFIG_FILE, lambda text: _RANDOM_BYTES,
                                    "is not text (byte"),
    "random bytes in config_changes.json": (workdir.CONFIG_CHANGES_FILE,
                                            lambda text: _RANDOM_BYTES, "is not text (byte"),
    "wrong change": (workdir.CONFIG_CHANGES_FILE,
                     lambda text: text.replace("[\n        6,\n        9\n      ]", '"9"'),
                     "not a [saved, new] pair"),
}


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory) -> str:
    """A run with a recorded config change (``train.iterations`` 6 -> 9)."""
    run_dir = str(tmp_path_factory.mktemp("resumed") / "run")
    trainer.train(_config(), run_dir, final_evaluation=False)
    trainer.train(_config(**{"train.iterations": 9}), run_dir, final_evaluation=False)
    return run_dir


def _damaged_copy(resumed_run: str, dest, case: str) -> str:
    import shutil

    name, damage, _ = _DAMAGE[case]
    run_dir = str(dest / "run")
    shutil.copytree(resumed_run, run_dir)
    path = os.path.join(run_dir, name)
    with open(path) as f:
        damaged = damage(f.read())
    with open(path, "wb") as f:
        f.write(damaged if isinstance(damaged, bytes) else damaged.encode())
    return run_dir


@pytest.mark.parametrize("case", sorted(_DAMAGE))
def test_damaged_workdir_json_names_the_file(tmp_path, resumed_run, case):
    name, _, expected = _DAMAGE[case]
    run_dir = _damaged_copy(resumed_run, tmp_path, case)
    before = file_tree(run_dir)
    for call in (lambda: workdir.load_config(run_dir), lambda: experiment.restore(run_dir),
                 lambda: trainer.train(_config(**{"train.iterations": 9}), run_dir)):
        with pytest.raises(workdir.WorkdirStateError) as info:
            call()
        assert os.path.join(run_dir, name) in str(info.value) and expected in str(info.value)
        assert "\n" not in str(info.value)
    assert file_tree(run_dir) == before


@pytest.mark.parametrize("binary,case", [
    ("train", "truncated config.json"), ("evaluate", "random bytes in config.json"),
    ("export", "truncated config_changes.json")])
def test_damaged_workdir_json_is_one_line_exit_2_in_every_binary(tmp_path, resumed_run, binary,
                                                                 case):
    name, _, expected = _DAMAGE[case]
    run_dir = _damaged_copy(resumed_run, tmp_path, case)
    cmd = (_train_cmd(run_dir, "--config.train.iterations=9") if binary == "train" else
           [sys.executable, "-m", f"tfmeta.{binary}", f"--workdir={run_dir}"])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=REPO,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(_errors(proc)) == 1
    assert os.path.join(run_dir, name) in _errors(proc)[0] and expected in _errors(proc)[0]


# Files only a training run reads: damaged, each is refused before anything is written.
_TRAINING_FILES = {
    "lock pid of the wrong type": (workdir.LOCK_FILE, {"pid": "1234", "host": "h"},
                                   "the field 'pid' holds '1234' (a string) where an integer"),
    "lock heartbeat of the wrong type": (workdir.LOCK_FILE, {"pid": 1, "heartbeat": [1]},
                                         "the field 'heartbeat' holds [1]"),
    "lock holding a list": (workdir.LOCK_FILE, [1, 2], "holds a list, not a lock record"),
    "history line not JSON": (workdir.HISTORY_FILE, '{"step": 3}\n{"step": 6,\n',
                              "line 2 is not valid JSON"),
    "history in random bytes": (workdir.HISTORY_FILE, _RANDOM_BYTES, "is not text"),
    "input transform not JSON": ("input_transform.json", "{", "not valid JSON"),
    "input transform without a size": ("input_transform.json", {"channels": 1},
                                       "lacks the field 'image_size'"),
    "input transform of the wrong type": ("input_transform.json",
                                          {"image_size": "28", "channels": 1},
                                          "the field 'image_size' holds '28'"),
    "input transform with a bad std": ("input_transform.json",
                                       {"image_size": 28, "channels": 1, "mean": [0.5],
                                        "std": [0.0]}, "not a valid input transform"),
}


def _write(path: str, content) -> None:
    if not isinstance(content, (str, bytes)):
        content = json.dumps(content)
    with open(path, "wb") as f:
        f.write(content if isinstance(content, bytes) else content.encode())


@pytest.mark.parametrize("case", sorted(_TRAINING_FILES))
def test_damaged_training_files_are_refused_before_anything_is_written(tmp_path, resumed_run,
                                                                       case):
    import shutil

    name, content, expected = _TRAINING_FILES[case]
    run_dir = str(tmp_path / "run")
    shutil.copytree(resumed_run, run_dir)
    _write(os.path.join(run_dir, name), content)
    before = file_tree(run_dir)
    for call in (lambda: workdir.check_workdir(run_dir, _config(**{"train.iterations": 12})),
                 lambda: trainer.train(_config(**{"train.iterations": 12}), run_dir)):
        with pytest.raises(workdir.WorkdirStateError) as info:
            call()
        message = str(info.value)
        assert os.path.join(run_dir, name) in message and expected in message, message
        assert "\n" not in message
        assert file_tree(run_dir) == before, "nothing may be written before the refusal"


def test_lock_cut_short_while_written_is_still_taken_over(tmp_path):
    _write(os.path.join(tmp_path, workdir.LOCK_FILE), '{"pid": 12')
    workdir.check_lock_file(str(tmp_path))
    workdir.WorkdirLock(str(tmp_path)).acquire().release()
    _write(os.path.join(tmp_path, workdir.LOCK_FILE), {"pid": "x"})
    with pytest.raises(workdir.WorkdirStateError, match="the field 'pid' holds 'x'"):
        workdir.WorkdirLock(str(tmp_path)).acquire()


def test_damaged_input_transform_stops_a_resume_and_an_export_before_writing(tmp_path):
    from tests.distributed_driver import load_config, synthetic_omniglot
    from tfmeta.run import exporter

    def omniglot(**fields):
        return load_config(os.path.join(REPO, "configs", "omniglot_maml.py:smoke"),
                           {"data.image_size": 12, "model.filters": 4, **_SMALL, **fields})

    # A run's directory as training leaves it: config, input transform, a checkpoint.
    data = synthetic_omniglot(12, num_characters=300)
    run_dir = str(tmp_path / "run")
    exp = experiment.build_experiment(omniglot(), tf.distribute.get_strategy(), data=data)
    workdir.check_writable(run_dir)
    workdir.record_config(run_dir, exp.config)
    experiment.checkpoint(exp).write(os.path.join(run_dir, workdir.CHECKPOINT_DIR, "ckpt-6"))
    path = os.path.join(run_dir, "input_transform.json")
    _write(path, {"image_size": 12, "channels": 1, "invert": "yes"})
    before = file_tree(run_dir)
    for call in (lambda: trainer.train(omniglot(**{"train.iterations": 9}), run_dir, data=data),
                 lambda: exporter.export_from_workdir(run_dir)):
        with pytest.raises(workdir.WorkdirStateError,
                           match=f"{path}: the field 'invert' holds 'yes'"):
            call()
        assert file_tree(run_dir) == before  # no config_changes.json, no export
    # A transform of another size belongs to another run.
    _write(path, {"image_size": 28, "channels": 1, "invert": True})
    with pytest.raises(workdir.WorkdirStateError, match="has image_size 28 but the run's config "
                                                        "has 12"):
        trainer.train(omniglot(**{"train.iterations": 9}), run_dir, data=data)


def test_a_refused_run_creates_no_work_directory(tmp_path):
    run_dir = tmp_path / "new" / "run"
    assert workdir.check_workdir(str(run_dir), _config()) == str(run_dir)
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(workdir.WorkdirError, match="is a file, not a directory"):
        workdir.check_workdir(str(tmp_path / "file" / "run"))
