"""SIGTERM stops a job at the next safe point, or within the grace period when it is busy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time


from tests.helpers import REPO, file_tree, subprocess_env

SINE = os.path.join(REPO, "configs", "sinusoid_maml.py")

_CHILD = textwrap.dedent("""
    import sys, time
    from tfmeta.run import preemption
    stop = preemption.StopRequest(float(sys.argv[1])).install()
    print("ready", flush=True)
    while True:
        # Busy in work that never polls the request (like tracing or compiling a large graph).
        if sys.argv[2] == "poll" and stop.is_set():
            print("stopped cleanly", flush=True)
            sys.exit(0)
        sum(range(100000))
""")


def _child(grace: float, mode: str) -> tuple[subprocess.Popen, float]:
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(grace), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env())
    assert proc.stdout.readline().strip() == "ready"
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    return proc, time.monotonic() - start


def test_busy_process_stops_after_the_grace_period():
    proc, seconds = _child(1.0, "busy")
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read()
    assert 1.0 <= seconds < 30, seconds
    assert "stopping now" in proc.stderr.read()


def test_polling_process_stops_cleanly_at_its_safe_point():
    proc, seconds = _child(60.0, "poll")
    assert proc.returncode == 0
    assert "stopped cleanly" in proc.stdout.read()
    assert seconds < 30


def _train(workdir, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tfmeta.train", f"--config={SINE}:smoke",
            f"--workdir={workdir}", "--noexport", "--config.inner.steps=50",
            "--config.train.steps_per_loop=10", "--config.train.checkpoint_every=10",
            "--config.train.eval_every=0", "--config.train.eval_episodes=0",
            "--config.eval.episodes=5", *extra]


def test_sigterm_while_tracing_stops_promptly_and_keeps_checkpoints(tmp_path):
    """A resumed run is stopped while it traces its (50-step, second-order) training graph."""
    workdir = tmp_path / "run"
    first = subprocess.run(_train(workdir, "--config.train.iterations=10"), capture_output=True,
                           text=True, timeout=900, env=subprocess_env(), cwd=REPO)
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoints = workdir / "checkpoints"
    before = file_tree(checkpoints)

    proc = subprocess.Popen(_train(workdir, "--config.train.iterations=20",
                                   "--stop_grace_seconds=2"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env(), cwd=REPO)
    # The work directory's lock is taken right before the training graph is traced.
    deadline = time.monotonic() + 600
    while not (workdir / "lock.json").exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=600)
    seconds = time.monotonic() - start
    assert proc.returncode in (0, 128 + signal.SIGTERM), stderr[-3000:]
    assert seconds < 2 + 20, f"took {seconds:.1f} s to stop"
    assert "Traceback" not in stderr
    after = file_tree(checkpoints)
    # Nothing written before is lost or damaged (a clean stop may add its own checkpoint).
    assert {k: v for k, v in after.items() if k in before and k != "checkpoint"} == \
        {k: v for k, v in before.items() if k != "checkpoint"}

    resumed = subprocess.run(_train(workdir, "--config.train.iterations=20"),
                             capture_output=True, text=True, timeout=900, env=subprocess_env(),
                             cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stderr
