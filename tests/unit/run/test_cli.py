"""The binaries' shell: quiet start-up, --verbosity, and the one-line error contract's plumbing.

(Each binary's error cases are in test_cli_errors.py.)
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from tests.helpers import REPO, subprocess_env


def _export(tmp_path, *flags: str) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL")  # as a user's shell has it
    return subprocess.run([sys.executable, "-m", "tfmeta.export",
                           f"--workdir={tmp_path / 'no-run'}", *flags],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


def test_start_up_is_quiet_and_verbosity_brings_tensorflow_back(tmp_path):
    quiet = _export(tmp_path)
    assert quiet.returncode == 2
    # TensorFlow is loaded (the exporter needs it), yet the user sees only tfmeta's line.
    assert quiet.stderr.strip().splitlines() == [
        f"error: no config.json in '{tmp_path / 'no-run'}': is it a tfmeta work directory?"]
    verbose = _export(tmp_path, "--verbosity=1")
    assert verbose.returncode == 2
    lines = verbose.stderr.strip().splitlines()
    assert lines[-1] == quiet.stderr.strip()
    assert len(lines) > 1, "TensorFlow printed nothing at --verbosity=1"


def test_start_up_chatter_pattern_keeps_real_errors():
    from tfmeta.run import cli

    chatter = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796221960.183085   18462 port.cc:153] oneDNN custom operations are on.",
        "I0000 00:00:1796221960.265766   18462 cpu_feature_guard.cc:227] This TensorFlow binary",
        "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild",
    ]
    assert all(cli._START_UP_CHATTER.match(line) for line in chatter)
    for kept in ("ImportError: libcudart.so.12: cannot open shared object file",
                 "E0000 00:00:1796221960.1 1 port.cc:1] something failed",
                 "Traceback (most recent call last):"):
        assert not cli._START_UP_CHATTER.match(kept)


def test_only_tfmeta_info_lines_and_other_libraries_errors_pass():
    from tfmeta.run import cli

    own = os.path.join(REPO, "tfmeta", "trainer.py")
    other = os.path.join(os.path.dirname(logging.__file__), "tensorflow_datasets", "x.py")

    def record(path: str, level: int) -> logging.LogRecord:
        return logging.LogRecord("absl", level, path, 1, "message", (), None)

    keep = cli._OwnLinesOnly()
    assert keep.filter(record(own, logging.INFO))
    assert keep.filter(record(own, logging.WARNING))
    assert not keep.filter(record(other, logging.INFO))
    assert not keep.filter(record(other, logging.WARNING))
    assert keep.filter(record(other, logging.ERROR))


def test_user_errors_are_one_class_and_the_path_errors():
    from tfmeta.run import cli, config, exporter, workdir
    from tfmeta.base import distribute, errors
    from tfmeta.data import omniglot_builder

    for cls in (config.ConfigError, workdir.WorkdirError, distribute.StrategyError,
                omniglot_builder.OmniglotIntegrityError, omniglot_builder.OmniglotDownloadError,
                exporter.ExportError):
        assert issubclass(cls, errors.UserError), cls
    assert set(cli.user_errors()) >= {errors.UserError, FileNotFoundError, PermissionError}
