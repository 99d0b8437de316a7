"""Every error a user can cause is one line naming the value, exit status 2, in every binary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.helpers import OMNIGLOT_ARCHIVES, REPO, archives_dir, subprocess_env

SINE = os.path.join(REPO, "configs", "sinusoid_maml.py")
MAML = os.path.join(REPO, "configs", "omniglot_maml.py")


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=600, env=subprocess_env(**env), cwd=REPO)


def _one_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return errors[0]


def _train_config_error(*overrides: str) -> str:
    """The error ``tfmeta.train --config=SINE:smoke OVERRIDES`` reports, found in process.

    The binary's own steps on its config flag, in its order (check the argv, parse, check the
    load, settle the switched fields, validate), on a flag registry of the test's own. What the
    binary does with the error (one line, exit status 2) is checked once, in a subprocess, by
    test_bad_config_value_exits_2_with_one_line.
    """
    from absl import flags
    from ml_collections import config_flags

    from tfmeta.base import errors
    from tfmeta.run import config as config_lib

    argv = ["tfmeta.train", f"--config={SINE}:smoke", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    with pytest.raises((errors.UserError, flags.Error, AttributeError, KeyError, TypeError,
                        ValueError)) as caught:
        config_lib.check_config_argv(argv, "config")
        values(argv)
        config_lib.check_config_loaded(values["config"].value, "config")
        config = values["config"].value
        config_lib.settle_fields(config, config_lib.user_fields(argv))
        config_lib.validate(config)
    return " ".join(str(caught.value).split())


@pytest.mark.parametrize("override,expected", [
    ("--config.train.foo=1", "unknown config field 'train.foo'"),
    ("--config.foo=1", "unknown config field 'foo'"),
    ("--config.outer.lr=inf", "'outer.lr' is inf; it must be a finite number"),
    ("--config.inner.lr=nan", "'inner.lr' is nan; it must be a finite number"),
    ("--config.train.tasks_in_parallel=0", "'train.tasks_in_parallel' is '0'"),
    ("--config.train.iterations=abc", "--config.train.iterations=abc"),
    # Bounded before anything is traced: MAML unrolls every inner step into the training graph.
    ("--config.inner.steps=2000", "'inner.steps' is 2000; it must be an integer from 1 to 50"),
    ("--config.inner.eval_steps=1000000",
     "'inner.eval_steps' is 1000000; it must be an integer from 1 to 1000"),
    ("--config.model.filters=0", "'model.filters' is 0; it must be an integer >= 1"),
])
def test_bad_config_values_are_named(override, expected):
    error = _train_config_error(override)
    assert expected in error, error
    if "train.foo" in expected:
        assert "allowed fields in 'train'" in error and "iterations" in error


@pytest.mark.parametrize("override,expected", [
    # One refused at parsing, one by the validation that runs after TensorFlow has loaded.
    ("--config.train.foo=1", "unknown config field 'train.foo'"),
    ("--config.inner.steps=2000", "'inner.steps' is 2000; it must be an integer from 1 to 50"),
])
def test_bad_config_value_exits_2_with_one_line(tmp_path, override, expected):
    error = _one_error(_run("tfmeta.train", f"--config={SINE}:smoke",
                            f"--workdir={tmp_path / 'run'}", override))
    assert expected in error, error
    assert not (tmp_path / "run").exists(), "nothing may be created before the refusal"


def test_damaged_archive_is_one_line_naming_the_file(tmp_path):
    source = archives_dir()
    bad = tmp_path / "archives"
    bad.mkdir()
    for name in OMNIGLOT_ARCHIVES:
        shutil.copy(os.path.join(source, name), bad / name)
    with open(bad / "images_background_small1.zip", "r+b") as f:
        f.truncate(100_000)
    error = _one_error(_run("tfmeta.train", f"--config={MAML}:smoke",
                            f"--workdir={tmp_path / 'run'}",
                            f"--config.data.data_dir={tmp_path / 'tfds'}",
                            f"--config.data.archives_dir={bad}"))
    assert "images_background_small1.zip" in error


def test_unwritable_export_output_is_one_line(tmp_path):
    from tests.distributed_driver import load_config
    from tfmeta.run import trainer

    config = load_config(f"{SINE}:smoke")
    config.update_from_flattened_dict({"train.iterations": 2, "train.steps_per_loop": 2,
                                       "train.eval_every": 0, "train.eval_episodes": 0,
                                       "eval.episodes": 5})
    trainer.train(config, str(tmp_path / "run"), final_evaluation=False)
    error = _one_error(_run("tfmeta.export", f"--workdir={tmp_path / 'run'}",
                            "--output=/proc/tfmeta-export"))
    assert "/proc/tfmeta-export" in error
    error = _one_error(_run("tfmeta.export", f"--workdir={tmp_path / 'run'}",
                            "--max_inner_steps=5"))
    assert "max_inner_steps is 5; it must be >= the default inner_steps" in error


def test_class_labels_of_shape_s_1_are_accepted_and_others_named():
    from tfmeta.core import maml, models

    model = models.omniglot_conv4(3, image_size=8, filters=4, seed=0)
    algo = maml.MAML(model, inner_lr=0.4, inner_steps=1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 8, 8, 1)).astype("float32")
    y = np.tile(np.arange(3), 2).astype("int32")
    flat = algo.adapt(x, y)
    column = algo.adapt(x, y[:, None])  # [S, 1], as Keras accepts it
    for a, b in zip(flat, column):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises(ValueError, match=r"support_y must hold one integer class label per "
                                         r"example, shape \[examples\]; got shape \(6, 2\)"):
        algo.adapt(x, np.stack([y, y], 1))
    batch = {"support_x": x[None], "support_y": y[None, :, None], "query_x": x[None],
             "query_y": np.stack([y, y], 1)[None]}
    with pytest.raises(ValueError, match=r"query_y .* \[tasks, examples\]; got shape \(1, 6, 2\)"):
        algo.meta_gradients(batch)


BINARIES = ("tfmeta.train", "tfmeta.evaluate", "tfmeta.export", "tfmeta.adapt", "tfmeta.report",
            "tfmeta.demo")


@pytest.mark.parametrize("binary", BINARIES)
def test_help_exits_0_and_prints_the_flags(binary):
    proc = _run(binary, "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "flags:" in proc.stdout


# Runs each binary's --help in a fork of one process that has not imported TensorFlow, and
# reports per binary: exit status, whether it printed the flags, whether TensorFlow got loaded.
_HELP_IN_FORKS = textwrap.dedent("""
    import contextlib, io, json, os, runpy, sys
    for binary in sys.argv[1:]:
        pid = os.fork()
        if pid == 0:
            sys.argv, out, code = [binary, "--help"], io.StringIO(), None
            with contextlib.redirect_stdout(out):
                try:
                    runpy.run_module(binary, run_name="__main__", alter_sys=True)
                except SystemExit as e:
                    code = e.code
            print(json.dumps([binary, code, "flags:" in out.getvalue(),
                              "tensorflow" in sys.modules]), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
""")


def test_help_does_not_load_tensorflow():
    """--help answers in about a second: TensorFlow (5-20 s to import) loads after the flags."""
    proc = subprocess.run([sys.executable, "-c", _HELP_IN_FORKS, *BINARIES], capture_output=True,
                          text=True, timeout=300, env=subprocess_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]
    assert reports == [[binary, 0, True, False] for binary in BINARIES], proc.stderr[-3000:]


def test_stray_positional_argument_is_one_line(tmp_path):
    error = _one_error(_run("tfmeta.train", f"--config={SINE}:smoke",
                            f"--workdir={tmp_path / 'run'}", "stray"))
    assert "unexpected arguments: ['stray']" in error
    assert not (tmp_path / "run").exists()


def test_unknown_config_variant_is_one_line_without_traceback(tmp_path):
    error = _one_error(_run("tfmeta.train", f"--config={MAML}:nope",
                            f"--workdir={tmp_path / 'run'}"))
    assert "unknown variant 'nope'" in error and "smoke" in error
    assert "Traceback" not in error and 'File "' not in error


def test_missing_config_file_is_one_line_naming_it(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tfmeta.train", "--config=configs/nope.py",
                           f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True,
                          timeout=600, env=subprocess_env(), cwd=str(tmp_path))
    error = _one_error(proc)
    assert "config file 'configs/nope.py' not found" in error and str(tmp_path) in error
    assert not (tmp_path / "run").exists()


def test_evaluation_inner_steps_are_bounded(tmp_path):
    error = _one_error(_run("tfmeta.evaluate", f"--workdir={tmp_path / 'run'}",
                            "--inner_steps=1000000"))
    assert "--inner_steps=1000000" in error and "range [1, 1000]" in error, error


def test_demo_refuses_a_broken_config_file_before_any_work(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config():\n    return base_config(\n")
    error = _one_error(_run("tfmeta.demo", f"--workdir={tmp_path / 'demo'}",
                            f"--config={broken}"))
    assert f"config file '{broken}' line" in error and "SyntaxError" in error, error
    assert not (tmp_path / "demo").exists()
