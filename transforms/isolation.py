"""Decoding in a persistent, memory-capped worker process, with a per-file timeout.

A hostile file can hang a decoder, exhaust memory or crash a C library. The stage sends
each file's bytes to one long-lived worker process (not a process per file); when a call
times out or the worker dies, the worker is replaced and only that file is rejected
(`decode_timeout` or `decode_error`), never its batch or the engine's worker.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import resource
import threading
import time
from collections.abc import Callable
from typing import Any

from loom.schemas.records import Reason
from loom.transforms.sniff import DecodeError


def _init_worker(parent: int) -> None:
    """End the worker if its parent dies (even by SIGKILL): nobody would read its results.
    `parent` is the pid of the process that started it, passed in rather than read here:
    a parent killed while the worker was still starting left it re-parented before it
    looked, and it watched its new parent (init) for ever."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)  # orphaned: nobody will read our results

    threading.Thread(target=watch, daemon=True, name="loom-parent-watch").start()


def _call(fn: Callable, args: tuple) -> tuple[str, Any]:
    """Runs in the worker: DecodeErrors come back as values (they pickle poorly)."""
    try:
        return "ok", fn(*args)
    except DecodeError as e:
        return "reject", (e.reason.value, e.message)
    except MemoryError:
        return "reject", (Reason.TOO_LARGE.value, "decoder ran out of its memory bound")


_INSTALLED: dict[str, Any] = {}  # in the worker: values sent once per worker process


def _install(key: str, value: Any) -> None:
    _INSTALLED[key] = value


def installed(key: str) -> Any:
    """In the worker: a value the parent `install`ed (the same object every call)."""
    return _INSTALLED[key]


def _warm(budget_bytes: int) -> None:
    """Import the decoders, then cap the address space at what they take + the budget."""
    import loom.transforms.ingest  # noqa: F401 - pay the decoders' imports at start-up

    if budget_bytes > 0:
        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (size + budget_bytes, size + budget_bytes))


class IsolatedDecoder:
    """`run(fn, *args)` in the worker; fn must be a module-level (picklable) function."""

    def __init__(self, timeout_s: float, memory_mb: int):
        self.timeout_s = timeout_s
        self.memory_bytes = memory_mb * 1024 * 1024
        self._pool: cf.ProcessPoolExecutor | None = None
        self._installs: dict[str, Any] = {}
        self.restarts = 0

    def install(self, key: str, value: Any) -> None:
        """Send `value` to the worker once (and to every replacement), for calls to read
        with `installed(key)` instead of taking it as an argument: an argument is pickled,
        sent and unpickled on every call (a stage's config with a real tokenizer: ~1 MB)."""
        self._installs[key] = value
        if self._pool is not None:
            self._pool.submit(_call, _install, (key, value)).result()

    def _ensure(self) -> cf.ProcessPoolExecutor:
        """The worker, started and warmed (imports paid, memory capped) before any call,
        so neither a first start nor a replacement counts against a file's timeout."""
        if self._pool is None:
            # spawn: forking a multi-threaded engine worker (Beam threads, Ray) is unsafe
            pool = cf.ProcessPoolExecutor(
                max_workers=1, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                initargs=(os.getpid(),))
            pool.submit(_call, _warm, (self.memory_bytes,)).result()
            for key, value in self._installs.items():
                pool.submit(_call, _install, (key, value)).result()
            self._pool = pool
        return self._pool

    def start(self) -> None:
        """Start the worker now rather than on the first call."""
        self._ensure()

    def _replace(self) -> None:
        pool, self._pool = self._pool, None
        self.restarts += 1
        if pool is not None:
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.kill()  # a hung decoder never returns: stop it, don't wait for it
            pool.shutdown(wait=False, cancel_futures=True)

    def submit(self, fn: Callable, *args: Any) -> tuple[cf.Future, int]:
        """Queue a call; collect() it later. Submitting the next call before collecting
        the current one lets the worker start on it at once, while this process unpickles
        the previous results (one worker: calls still run one at a time, in order)."""
        return self._ensure().submit(_call, fn, args), self.restarts

    def collect(self, ticket: tuple[cf.Future, int], fn: Callable, *args: Any,
                timeout_s: float | None = None, _retry: bool = False) -> Any:
        """The result of a submitted call, waiting at most timeout_s from now."""
        timeout_s = timeout_s or self.timeout_s
        future, generation = ticket
        if generation != self.restarts:  # queued on a worker replaced since: not its fault
            return self.collect(self.submit(fn, *args), fn, *args, timeout_s=timeout_s,
                                _retry=_retry)
        try:
            status, value = future.result(timeout=timeout_s)
        except cf.TimeoutError:
            self._replace()
            raise DecodeError(Reason.DECODE_TIMEOUT,
                              f"decoding took longer than {timeout_s:g} s") from None
        except cf.process.BrokenProcessPool:
            self._replace()
            if not _retry:  # once more on a fresh worker: was it this file, or bad luck?
                return self.collect(self.submit(fn, *args), fn, *args, timeout_s=timeout_s,
                                    _retry=True)
            raise DecodeError(Reason.DECODE_ERROR,
                              "the decoder process died on this file (twice)") from None
        if status == "reject":
            raise DecodeError(Reason(value[0]), value[1])
        return value

    def run(self, fn: Callable, *args: Any, timeout_s: float | None = None) -> Any:
        return self.collect(self.submit(fn, *args), fn, *args, timeout_s=timeout_s)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
