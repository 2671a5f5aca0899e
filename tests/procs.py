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
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
