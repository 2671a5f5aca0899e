"""The per-root writer lock, on a local folder and on gs:// (the GCS emulator), and two
`loom ingest` runs into one root at once: the second waits, then reuses the first's version."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from loom.schemas import lock, storage
from loom.schemas import manifest as mf

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    gcs = request.getfixturevalue("gcs")
    return f"gs://{gcs.bucket}/lock-{uuid.uuid4().hex[:8]}"


def test_one_holder_at_a_time(root):
    first, second = lock.RootLock(root, "first"), lock.RootLock(root, "second")
    assert first.acquire(wait_s=0)
    assert not second.acquire(wait_s=0)  # taken: a create-only write fails
    assert second.holder()["purpose"] == "first"
    first.release()
    assert second.acquire(wait_s=0)
    second.release()
    assert second.holder() is None


def test_waiter_gets_it_after_release(root):
    first = lock.RootLock(root, "first")
    assert first.acquire(wait_s=0)
    got: list[float] = []

    def wait():
        with lock.RootLock(root, "second", wait_s=60, poll_s=0.05):
            got.append(time.monotonic())

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(1.0)
    assert not got  # still waiting while the first holds it
    released = time.monotonic()
    first.release()
    t.join(timeout=60)
    assert got and got[0] >= released


def test_expired_lease_is_broken_and_renewal_keeps_it(root):
    old = lock.RootLock(root, "old", lease_s=0.6)
    assert old.acquire(wait_s=0)
    old._stop.set()  # a holder that stopped renewing (hung or killed on another host)
    time.sleep(1.2)
    new = lock.RootLock(root, "new", lease_s=0.9)
    assert new.acquire(wait_s=5)
    time.sleep(2.0)  # several leases: the heartbeat renews it
    assert not lock.RootLock(root, "third").acquire(wait_s=0)
    assert not new.lost
    old.release()  # conditional on its own generation: the new holder keeps the lock
    assert lock.RootLock(root).holder()["purpose"] == "new"
    new.release()


def test_dead_local_holder_is_broken_at_once(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        body = {"token": "t", "host": os.uname().nodename, "pid": proc.pid, "purpose": "x",
                "expires_at": time.time() + 3600}
        path = tmp_path / "root" / lock.LOCK_FILE
        path.parent.mkdir()
        path.write_text(json.dumps(body))
        assert not lock.RootLock(str(tmp_path / "root")).acquire(wait_s=0)  # alive: wait
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    lk = lock.RootLock(str(tmp_path / "root"))
    assert lk.acquire(wait_s=0)  # SIGKILLed holder: no lease wait
    lk.release()


def test_session_holds_roots_of_version_writers(root):
    with lock.session():
        mf.VersionWriter(root, "ingest", "ingest-0000000000000000")
        mf.VersionWriter(root, "ingest", "ingest-1111111111111111")  # re-entrant
        assert not lock.RootLock(root).acquire(wait_s=0)
    assert lock.RootLock(root).acquire(wait_s=0)
    mf.VersionWriter(root, "ingest", "ingest-2222222222222222")  # outside: no lock taken


def _ingest(media: str, out: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "loom.jobs.cli", "ingest", "--input", media,
                             "--output", out], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "gcs"])
def test_two_ingests_into_one_root(tmp_path, where, request):
    media = tmp_path / "media"
    media.mkdir()
    for i in range(40):
        (media / f"t{i}.txt").write_text(f"a caption about a red circle number {i}")
    env = os.environ | {"RAY_AUTH_MODE": "disabled"}
    out = str(tmp_path / "out")
    if where == "gcs":
        gcs = request.getfixturevalue("gcs")
        env |= gcs.env()
        out = f"gs://{gcs.bucket}/race-{uuid.uuid4().hex[:8]}"
    first = _ingest(str(media), out, env)
    time.sleep(0.3)
    second = _ingest(str(media), out, env)
    results = []
    for proc in (first, second):
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    assert results[0]["version"] == results[1]["version"]
    assert sorted(r["reused"] for r in results) == [False, True]
    assert [d for d in storage.list_dirs(out)] == [results[0]["uri"]]
    assert not storage.exists(storage.join(out, lock.LOCK_FILE))  # released
