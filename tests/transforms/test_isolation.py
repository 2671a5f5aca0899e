"""The isolated decoder: queued calls, timeouts and crashes, and limits on every worker."""

from __future__ import annotations

import ctypes
import resource
import time

import pytest
from loom.transforms.isolation import IsolatedDecoder
from loom.transforms.sniff import DecodeError


def work(x: str) -> str:
    """Runs in the worker: 'hang' sleeps past any timeout here, 'crash' reads address 0."""
    if x == "hang":
        time.sleep(30)
    if x == "crash":
        ctypes.string_at(0)
    return x.upper()


def address_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_AS)[0]


def test_queued_calls_survive_a_timeout_and_a_crash_ahead_of_them():
    iso = IsolatedDecoder(timeout_s=10.0, memory_mb=512)
    try:
        iso.start()
        items = ["a", "hang", "b", "crash", "c"]
        outcomes = []
        ticket = iso.submit(work, items[0])
        for j, x in enumerate(items):  # as the ingest stage drives it: one call queued ahead
            current = ticket
            if j + 1 < len(items):
                ticket = iso.submit(work, items[j + 1])
            try:
                outcomes.append(iso.collect(current, work, x, timeout_s=1.0 if x == "hang"
                                            else 20.0))
            except DecodeError as e:
                outcomes.append(e.reason.value)
        assert outcomes == ["A", "decode_timeout", "B", "decode_error", "C"]
        # the hang, the crash and its retry; "b" (resubmitted behind the crash once the hang
        # replaced its worker) may lose its worker to the crash too, and is retried
        assert 3 <= iso.restarts <= 4
    finally:
        iso.close()


def test_every_worker_is_memory_capped_including_replacements():
    iso = IsolatedDecoder(timeout_s=20.0, memory_mb=512)
    try:
        first = iso.run(address_limit)
        with pytest.raises(DecodeError):
            iso.run(work, "crash")
        again = iso.run(address_limit)
        assert first != resource.RLIM_INFINITY and again != resource.RLIM_INFINITY
        assert abs(again - first) < 512 << 20  # same budget on top of a similar start-up size
    finally:
        iso.close()


def installed_len(key: str) -> int:
    from loom.transforms import isolation

    return len(isolation.installed(key))


def test_an_installed_value_reaches_every_worker_and_no_call_carries_it():
    """The ingest stage's config travels once per worker, not with every chunk: each call
    here pickles a few bytes, and a worker replaced after a crash has the value too."""

    import multiprocessing.reduction as red

    iso = IsolatedDecoder(timeout_s=20.0, memory_mb=512)
    big = "x" * 2_000_000
    sent: list[int] = []
    try:
        iso.install("cfg", big)
        assert iso.run(installed_len, "cfg") == len(big)
        with pytest.raises(DecodeError):
            iso.run(work, "crash")
        assert iso.restarts >= 1
        assert iso.run(installed_len, "cfg") == len(big)  # the replacement has it
        iso.install("late", "abc")  # installed on a running worker
        orig = red.ForkingPickler.dumps
        red.ForkingPickler.dumps = classmethod(
            lambda cls, obj, protocol=None: sent.append(len(orig(obj, protocol))) or
            orig(obj, protocol))
        try:
            assert iso.run(installed_len, "cfg") == len(big)
            assert iso.run(installed_len, "late") == 3
        finally:
            red.ForkingPickler.dumps = orig
        assert sent and max(sent) < 10_000, sent  # the calls, not the value
    finally:
        iso.close()


def _gone(pid: int, within_s: float) -> bool:
    import psutil

    end = time.monotonic() + within_s
    while time.monotonic() < end:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_the_decoder_process_ends_when_its_parent_is_killed():
    """A SIGKILLed engine worker leaves no decoder behind (each holds ~300 MB)."""
    import subprocess
    import sys

    code = ("from loom.transforms.isolation import IsolatedDecoder\n"
            "import time\n"
            "d = IsolatedDecoder(timeout_s=5, memory_mb=0)\n"
            "d.start()\n"
            "print(*d._pool._processes, flush=True)\n"
            "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        assert not _gone(worker, 1.0)  # alive while its parent is
        parent.kill()
        parent.wait()
        assert _gone(worker, 10.0), "the decoder outlived its killed parent"
    finally:
        parent.kill()


def test_a_decoder_whose_parent_died_before_it_started_watching_still_ends():
    """The race the watch had: a parent killed while the decoder was starting. The
    decoder is told its parent's pid; one that is already gone ends it at once."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    code = ("from loom.transforms.isolation import _init_worker\n"
            "import time\n"
            f"_init_worker({dead.pid})\n"
            "time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        assert child.wait(timeout=20) == 0
    finally:
        child.kill()
