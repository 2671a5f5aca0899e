"""How a failed command ends: one exit code, one line on stderr, one JSON line on stdout.

Exit codes: 1 failure (storage errors named: `loom: <stage>: cannot write <uri>: <os
error>`), 2 bad input or config, 3 stopped by a budget (resumable). The traceback never
reaches the terminal unless `--log-level debug` (or LOOM_DEBUG) asks: it goes to a log file
(`$LOOM_LOG_DIR`, default `<tmp>/loom-logs/`) whose path the JSON line names. Beam and Ray
log a failed worker's traceback themselves; while a command runs their records go to the
same file, not stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import io
import logging
import os
import re
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

# Storage conditions the user can act on (free space, fix permissions, pick a folder).
STORAGE_ERRNOS = {errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on device",
                  errno.EDQUOT: "disk quota exceeded", errno.ENOTDIR: "not a folder",
                  errno.EISDIR: "is a folder", errno.EACCES: "permission denied",
                  errno.EPERM: "operation not permitted"}
ENGINE_LOGGERS = ("apache_beam", "ray", "root_beam")
# "NotADirectoryError: [Errno 20] Not a directory: '/x'" as Beam and Ray re-raise it (text
# inside a RuntimeError), and pyarrow's "... local file '/x'. Detail: [errno 28] No space".
_ERRNO = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)
_QUOTED = re.compile(r"'((?:/|gs://|[A-Za-z]:\\)[^']*)'")


@dataclasses.dataclass(frozen=True)
class Failure:
    exit_code: int
    reason: str  # one line, without the "loom: <stage>: " prefix
    payload: dict | None = None  # a stage's own JSON (budget stop, cluster job)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def storage_error(exc: BaseException) -> tuple[str, str] | None:
    """(uri, os error) when exc is, wraps, or quotes a storage condition."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            where = e.filename or _quoted(str(e)) or "?"
            return str(where), f"[Errno {e.errno}] {os.strerror(e.errno)}"
    for e in _chain(exc):  # an engine re-raised the worker's error as text
        text = "".join(traceback.format_exception_only(type(e), e))
        for m in _ERRNO.finditer(text):
            code = int(m.group(1))
            if code in STORAGE_ERRNOS:
                line = next(ln for ln in text.splitlines() if m.group(0) in ln)
                return _quoted(line) or _quoted(text) or "?", f"[Errno {code}] {os.strerror(code)}"
    return None


def _quoted(text: str) -> str | None:
    m = _QUOTED.search(text)
    return m.group(1) if m else None


def classify(exc: BaseException) -> Failure:
    """The exit code and one-line reason for an exception a stage raised."""
    import pydantic
    from loom.jobs.submit import JobFailed
    from loom.pipelines.common import BadInput
    from loom.pipelines.synth import BudgetExceeded
    from loom.schemas.lock import LockTimeout

    if isinstance(exc, JobFailed):  # the cluster ran it: its own exit code, its JSON
        return Failure(exc.code, str(exc).splitlines()[0] if str(exc) else "job failed",
                       exc.payload)
    if isinstance(exc, BudgetExceeded):  # resumable: rerun to continue
        return Failure(3, str(exc).splitlines()[0] if str(exc) else "budget", exc.payload)
    if (found := storage_error(exc)) is not None:
        return Failure(1, f"cannot write {found[0]}: {found[1]}")
    if isinstance(exc, pydantic.ValidationError):
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"]))
        return Failure(2, f"bad config: {where}: {err['msg']}")
    if isinstance(exc, BadInput | FileNotFoundError | ValueError):
        return Failure(2, f"{type(exc).__name__}: {exc}".splitlines()[0])
    if isinstance(exc, LockTimeout):
        return Failure(1, str(exc).splitlines()[0])
    return Failure(1, f"failed: {type(exc).__name__}: {exc}".splitlines()[0])


def _debug() -> bool:
    return bool(os.environ.get("LOOM_DEBUG")) or logging.getLogger("loom").isEnabledFor(
        logging.DEBUG)


def log_path(stage: str) -> str:
    folder = os.environ.get("LOOM_LOG_DIR") or os.path.join(tempfile.gettempdir(), "loom-logs")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return os.path.join(folder, f"{stage}-{stamp}-{os.getpid()}.log")


@contextlib.contextmanager
def engine_logs_to(path: str) -> Iterator[None]:
    """Beam's and Ray's own error records (worker tracebacks) go to `path`, not stderr."""
    if _debug():
        yield
        return
    handler: logging.Handler | None = None
    saved = []
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handler = logging.FileHandler(path, delay=True)
    except OSError:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    saved_root = root.handlers[:]
    for name in ENGINE_LOGGERS:
        lg = logging.getLogger(name)
        saved.append((lg, lg.handlers[:], lg.propagate))
        lg.handlers[:] = [handler]
        lg.propagate = False
    root.handlers[:] = [handler]  # Beam's worker logs the traceback through the root logger
    real_stderr = sys.stderr
    sys.stderr = _WorkerTracebacks(real_stderr, handler)
    try:
        yield
    finally:
        sys.stderr = real_stderr
        for lg, handlers, propagate in saved:
            lg.handlers[:], lg.propagate = handlers, propagate
        root.handlers[:] = saved_root
        handler.close()


class _WorkerTracebacks(io.TextIOBase):
    """sys.stderr while a command runs. Beam's SDK worker prints a failed bundle's
    traceback straight to sys.stderr from its worker thread (besides logging it): such a
    print, and the newline after it, go to the log; every other write passes through."""

    HEAD = "Traceback (most recent call last):"

    def __init__(self, real: Any, log: logging.Handler):
        super().__init__()
        self.real, self.log = real, log
        self._diverting = threading.local()

    def write(self, text: str) -> int:
        worker = threading.current_thread() is not threading.main_thread()
        if worker and (text.lstrip().startswith(self.HEAD)
                       or (getattr(self._diverting, "on", False) and not text.strip())):
            self._diverting.on = True
            if text.strip():
                self.log.emit(logging.makeLogRecord(
                    {"name": "stderr", "levelname": "ERROR", "levelno": logging.ERROR,
                     "msg": text.rstrip("\n")}))
            return len(text)
        self._diverting.on = False
        return self.real.write(text)

    def flush(self) -> None:
        self.real.flush()

    def isatty(self) -> bool:
        return self.real.isatty()

    def fileno(self) -> int:
        return self.real.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.real, "encoding", "utf-8")


def write_traceback(path: str, exc: BaseException) -> str | None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            f.write("".join(traceback.format_exception(exc)))
        return path
    except OSError:
        return None


def run(fn: Callable[[], dict], stage: str, emit: Callable[[dict], None],
        say_error: Callable[..., None]) -> int:
    """Run a command's body; on failure emit the JSON line and say the one-line reason.
    Returns the exit code (0 on success)."""
    from loom.schemas import lock

    path = log_path(stage)
    try:
        with engine_logs_to(path), lock.session():
            out = fn()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - the CLI's one place that maps failures
        import typer

        if isinstance(exc, typer.Exit):
            raise
        failure = classify(exc)
        logged = write_traceback(path, exc) if failure.exit_code == 1 else None
        if _debug():
            traceback.print_exc()
        payload: dict[str, Any] = dict(failure.payload or {})
        payload.setdefault("stage", stage)
        payload |= {"exit_code": failure.exit_code, "error": failure.reason}
        if logged:
            payload["log"] = logged
        emit(payload)
        say_error(f"loom: {stage}: {failure.reason}", exit_code=failure.exit_code)
        return failure.exit_code
    with contextlib.suppress(OSError):  # engine chatter of a run that succeeded: not kept
        os.unlink(path)
    emit(out)
    return 0
