"""Stopping a long job on SIGTERM: at the next safe point, or within a grace period at the latest.

A training run asked to stop (a preempted VM, ``kill``, a scheduler's time limit) should save a
checkpoint and exit cleanly, which it can only do between two compiled training loops. Until then
the main thread may be busy for a long time where Python signal handlers cannot run: tracing a
large graph, or compiling it inside TensorFlow's C++ runtime. So a stop request is both

* a flag the training loop polls between compiled loops (it then saves and exits with status 0),
* and a deadline: a watcher thread, woken by the signal itself (``signal.set_wakeup_fd`` writes
  to a pipe from the C-level handler, even while the main thread is inside TensorFlow), ends the
  process with status 143 (128 + SIGTERM) if it is still running ``grace_seconds`` later.

Ending at the deadline loses no checkpoint: checkpoints are written to temporary files and
renamed into place, and a damaged newest one is skipped on restore
(:func:`tfmeta.run.workdir.restore_newest_readable`); at most the iterations since the last
checkpoint are computed again on resume. The work directory's lock names a process that no longer
exists, which the next run on the same host takes over at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from absl import logging

EXIT_STATUS = 128 + signal.SIGTERM


class StopRequest:
    """SIGTERM handling for a long-running binary; see the module docstring.

    Args:
      grace_seconds: how long after SIGTERM the process may still run before it is ended.
    """

    def __init__(self, grace_seconds: float = 30.0):
        if grace_seconds <= 0:
            raise ValueError(f"grace_seconds must be > 0, got {grace_seconds!r}")
        self.grace_seconds = float(grace_seconds)
        self._requested = threading.Event()

    def is_set(self) -> bool:
        """Whether a stop was requested (poll it between units of work)."""
        return self._requested.is_set()

    def install(self) -> "StopRequest":
        """Installs the SIGTERM handler and the watcher thread (main thread only)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd)
        threading.Thread(target=self._watch, args=(read_fd,), daemon=True,
                         name="sigterm-watcher").start()
        return self

    def _on_signal(self, signum, frame) -> None:  # pylint: disable=unused-argument
        # Runs in the main thread when it next executes Python code; the watcher already knows.
        self._requested.set()

    def _watch(self, read_fd: int) -> None:
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGTERM in data:
                break
        if not self._requested.is_set():
            self._requested.set()
            logging.warning("SIGTERM received: saving a checkpoint at the end of the current "
                            "training loop (at the latest in %g s).", self.grace_seconds)
        # A daemon thread: if the main thread finishes first, the process ends and so does this.
        time.sleep(self.grace_seconds)
        logging.warning("SIGTERM: still busy %g s later (building, tracing or compiling a graph, "
                        "or a long training loop); stopping now. Checkpoints already written are "
                        "kept; rerun the same command to resume from the newest one.",
                        self.grace_seconds)
        logging.flush()
        sys.stderr.flush()
        os._exit(EXIT_STATUS)  # pylint: disable=protected-access
