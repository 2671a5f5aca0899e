"""Killing a CLI run mid-way, for resume tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable


def sigkill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout_s: float,
                 what: str) -> None:
    """SIGKILL `proc` as soon as `ready()`; fails if it ends first or `what` never happens."""
    deadline = time.monotonic() + timeout_s
    try:
        while not ready():
            assert proc.poll() is None, "the run finished before it could be killed"
            assert time.monotonic() < deadline, f"no {what} within {timeout_s:g} s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
        # The killed run's children (a decoder process still importing, a Beam worker) may
        # hold the pipes' write ends for a while: waiting for EOF would wait for them, so
        # close our ends instead (a late write gets EPIPE).
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert proc.returncode == -signal.SIGKILL
