"""One writer per dataset root at a time: a lock object with a lease, local or on gs://.

Two runs writing the same root (two ingests, a scheduled run overlapping a manual one)
would otherwise share a version's `_work/` folder: the first to finish deletes it under
the second. With the lock the second waits, then finds the version the first committed
and reuses it.

The lock is one small JSON object, `<root>/_loom.lock` (the `_` keeps it out of every
reader's listing; dataset listings only look at folders). Taking it is a create that
fails when it exists: `O_CREAT|O_EXCL` locally, a create-only precondition
(`if_generation_match=0`) on gs://. The holder renews a lease in the background; a lock
whose lease ran out, or whose holder process is gone (same host), is broken, so a
SIGKILLed run never blocks the next one for longer than the lease.

`session()` scopes locks to one command: inside it, `hold(root)` takes a root's lock once
(re-entrant), and the session's end releases them all. Outside a session `hold` does
nothing, so library calls and unit tests run unlocked. `RootLock` itself is public for
other callers (the scheduler, against overlapping runs of one schedule).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Protocol

from loom.schemas import storage

LOCK_FILE = "_loom.lock"
DEFAULT_LEASE_S = 60.0
DEFAULT_WAIT_S = float(os.environ.get("LOOM_LOCK_WAIT_S", 6 * 3600))
log = logging.getLogger("loom.lock")


class LockTimeout(RuntimeError):
    """Another writer held the root for longer than this run was willing to wait."""


class _Backend(Protocol):
    def create(self, body: bytes) -> str | None: ...
    def read(self) -> tuple[dict, str] | None: ...
    def replace_if(self, body: bytes, gen: str) -> str | None: ...
    def delete_if(self, gen: str) -> None: ...


class _LocalBackend:
    """Exclusive create on a local (or shared-mount) path; the owner token is the
    generation."""

    def __init__(self, path: str):
        self.path = path

    def create(self, body: bytes) -> str | None:
        root = os.path.dirname(self.path)
        if os.path.exists(root) and not os.path.isdir(root):  # "not a folder", not EEXIST
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), root)
        os.makedirs(root, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # a full disk: no half-written lock left behind
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise OSError(e.errno, e.strerror, self.path) from e
        return json.loads(body)["token"]

    def read(self) -> tuple[dict, str] | None:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        try:
            body = json.loads(raw)
        except ValueError:  # a holder killed between create and write: empty, so stale
            return {"token": "", "expires_at": 0}, ""
        return body, body.get("token", "")

    def replace_if(self, body: bytes, gen: str) -> str | None:
        now = self.read()
        if now is None or now[1] != gen:
            return None
        storage.write_atomic(self.path, body)
        return gen

    def delete_if(self, gen: str) -> None:
        """Move it aside, then check it was the one judged: a fresh lock moved by a
        racing breaker is put back (link fails rather than overwrite a newer one)."""
        aside = f"{self.path}.broken-{uuid.uuid4().hex}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            with open(aside, "rb") as f:
                token = json.loads(f.read() or b"{}").get("token", "")
        except ValueError:
            token = ""
        if token != gen:
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
        os.unlink(aside)


class _GcsBackend:
    """Create-only upload (`if_generation_match=0`); renew and release are conditional on
    the generation this holder wrote, so a broken-and-retaken lock is never clobbered."""

    def __init__(self, uri: str):
        bucket, _, key = uri[len("gs://"):].partition("/")
        client = storage._gcs_client(os.environ.get("STORAGE_EMULATOR_HOST"))
        self.blob_name, self.bucket = key, client.bucket(bucket)

    def _blob(self):
        return self.bucket.blob(self.blob_name)

    def create(self, body: bytes) -> str | None:
        from google.api_core import exceptions as gexc

        blob = self._blob()
        try:
            blob.upload_from_string(body, content_type="application/json",
                                    if_generation_match=0)
        except gexc.PreconditionFailed:
            return None
        return str(blob.generation)

    def read(self) -> tuple[dict, str] | None:
        from google.api_core import exceptions as gexc

        blob = self._blob()
        try:
            blob.reload()
            gen = str(blob.generation)
            raw = blob.download_as_bytes(if_generation_match=int(gen))
        except (gexc.NotFound, gexc.PreconditionFailed):
            return None
        try:
            return json.loads(raw), gen
        except ValueError:
            return {"token": "", "expires_at": 0}, gen

    def replace_if(self, body: bytes, gen: str) -> str | None:
        from google.api_core import exceptions as gexc

        blob = self._blob()
        try:
            blob.upload_from_string(body, content_type="application/json",
                                    if_generation_match=int(gen))
        except (gexc.PreconditionFailed, gexc.NotFound):
            return None
        return str(blob.generation)

    def delete_if(self, gen: str) -> None:
        from google.api_core import exceptions as gexc

        with contextlib.suppress(gexc.PreconditionFailed, gexc.NotFound):
            self._blob().delete(if_generation_match=int(gen))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(body: dict, now: float | None = None) -> bool:
    """Lease ran out, or the holder was on this host and its process is gone."""
    now = time.time() if now is None else now
    if float(body.get("expires_at", 0)) < now:
        return True
    return body.get("host") == socket.gethostname() and not _pid_alive(int(body.get("pid", 0)))


class RootLock:
    """The lock of one root. `acquire(wait_s)` waits up to wait_s (0: try once) and says
    whether it got the lock; as a context manager it waits `wait_s` or raises."""

    def __init__(self, root: str, purpose: str = "", lease_s: float = DEFAULT_LEASE_S,
                 wait_s: float = DEFAULT_WAIT_S, poll_s: float = 0.2):
        self.root, self.purpose = storage.absolute(root), purpose
        self.uri = storage.join(self.root, LOCK_FILE)
        self.lease_s, self.wait_s, self.poll_s = lease_s, wait_s, poll_s
        self.backend: _Backend = (_GcsBackend(self.uri) if storage.is_remote(self.uri)
                                  else _LocalBackend(self.uri))
        self.token = uuid.uuid4().hex
        self._gen: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.lost = False

    def _body(self) -> bytes:
        return json.dumps({"token": self.token, "host": socket.gethostname(),
                           "pid": os.getpid(), "purpose": self.purpose,
                           "expires_at": time.time() + self.lease_s}).encode()

    @property
    def held(self) -> bool:
        return self._gen is not None

    def holder(self) -> dict | None:
        got = self.backend.read()
        return got[0] if got else None

    def acquire(self, wait_s: float | None = None) -> bool:
        wait_s = self.wait_s if wait_s is None else wait_s
        deadline, told = time.monotonic() + wait_s, False
        while True:
            gen = self.backend.create(self._body())
            if gen is not None:
                self._gen, self.lost = gen, False
                self._stop.clear()
                self._beat = threading.Thread(target=self._renew, daemon=True,
                                              name=f"loom-lock-{self.root}")
                self._beat.start()
                return True
            got = self.backend.read()
            if got is not None and is_stale(got[0]):
                log.warning("breaking a stale lock on %s (held by %s)", self.root, got[0])
                self.backend.delete_if(got[1])
                continue
            if time.monotonic() >= deadline:
                return False
            if not told and got is not None:
                log.info("waiting for %s: another writer holds it (%s pid %s, %s)", self.root,
                         got[0].get("host"), got[0].get("pid"), got[0].get("purpose"))
                told = True
            time.sleep(self.poll_s)

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            gen = self.backend.replace_if(self._body(), self._gen or "")
            if gen is None:
                self.lost = True
                log.error("lost the lock on %s (lease expired and another writer took it)",
                          self.root)
                return
            self._gen = gen

    def release(self) -> None:
        if self._gen is None:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=10)
        self.backend.delete_if(self._gen)
        self._gen = None

    def __enter__(self) -> RootLock:
        if not self.acquire():
            raise LockTimeout(f"{self.root} is locked by another writer ({self.holder()}); "
                              f"waited {self.wait_s:g} s")
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_SESSION: dict[str, RootLock] | None = None
_SESSION_GUARD = threading.Lock()


@contextlib.contextmanager
def session() -> Iterator[None]:
    """Locks taken by `hold` inside are released when the block ends (however it ends)."""
    global _SESSION
    outer = _SESSION
    _SESSION = {} if outer is None else outer
    try:
        yield
    finally:
        if outer is None:
            held, _SESSION = _SESSION, None
            for lk in reversed(list(held.values())):
                lk.release()


def hold(root: str, purpose: str = "") -> RootLock | None:
    """Take root's lock for the rest of the session (waiting for another writer to end);
    outside a session, nothing."""
    if _SESSION is None:
        return None
    key = storage.absolute(root)
    with _SESSION_GUARD:
        if key in _SESSION:
            return _SESSION[key]
        lk = RootLock(key, purpose)
        if not lk.acquire():
            raise LockTimeout(f"{key} is locked by another writer ({lk.holder()}); "
                              f"waited {lk.wait_s:g} s")
        _SESSION[key] = lk
        return lk
