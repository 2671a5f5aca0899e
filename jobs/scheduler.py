"""`loom scheduler SCHEDULES.yaml`: cron schedules on one machine, for users without Kubernetes.

    state: .loom-scheduler            # optional; default: .loom-scheduler beside the file
    schedules:
      - {name: nightly, spec: nightly.yaml, cron: "0 3 * * *"}

Each tick, a schedule whose latest cron slot (at or before now, and not before the schedule
was first seen) has no run yet gets one. The slot is *claimed* first: a row inserted into the
SQLite state file under a unique (schedule, slot) key, in its own transaction, before anything
starts. So a restarted scheduler never runs a slot twice (at most once: a crash between the
claim and the start leaves the slot claimed, not rerun). Slots missed while the scheduler was
down are not replayed one by one; the latest due slot runs.

A run is `loom run SPEC` in a subprocess, started through `loom scheduler-exec`, which takes
the schedule's lock (flock on `<state>/<name>.lock`) for as long as the job runs and records
the outcome (exit code, times, log file) itself: a run whose previous run still holds the lock
is recorded `skipped_overlap` instead of starting, and the outcome is recorded even if the
scheduler restarted meanwhile. Nothing listens on the network.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator

UTC = dt.timezone.utc
# jobs.spec.ID_PATTERN, not imported: `python -m loom.jobs.scheduler` stays free of torch and Beam
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class Schedule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    spec: str
    cron: str

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        if len(v.split()) != 5 or not croniter.is_valid(v):
            raise ValueError(f"{v!r} is not a 5-field cron expression")
        return v


class SchedulesFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    state: str | None = None
    schedules: list[Schedule] = Field(min_length=1)

    @field_validator("schedules")
    @classmethod
    def _unique(cls, v: list[Schedule]) -> list[Schedule]:
        names = [s.name for s in v]
        if len(names) != len(set(names)):
            raise ValueError("schedule names must be unique")
        return v


def load_schedules(path: str) -> tuple[SchedulesFile, Path, Path]:
    """(schedules, their folder: relative spec paths start there, state folder)."""
    base = Path(path).resolve().parent
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    sf = SchedulesFile.model_validate(data)
    state = Path(sf.state) if sf.state else Path(".loom-scheduler")
    return sf, base, state if state.is_absolute() else base / state


SCHEMA = """
CREATE TABLE IF NOT EXISTS schedules (name TEXT PRIMARY KEY, since TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    name TEXT NOT NULL, slot TEXT NOT NULL, status TEXT NOT NULL,
    claimed_at TEXT NOT NULL, started_at TEXT, finished_at TEXT, exit_code INTEGER,
    pid INTEGER, log TEXT, PRIMARY KEY (name, slot));
"""


@contextlib.contextmanager
def connect(state_dir: Path) -> Iterator[sqlite3.Connection]:
    state_dir.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(state_dir / "state.sqlite", timeout=30, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.executescript(SCHEMA)
        yield con
    finally:
        con.close()


def _iso(t: dt.datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds")


def latest_slot(cron: str, now: dt.datetime) -> dt.datetime:
    """The newest cron tick at or before now."""
    it = croniter(cron, now + dt.timedelta(seconds=1))
    return it.get_prev(dt.datetime)


def claim(con: sqlite3.Connection, name: str, slot: str, now: dt.datetime) -> bool:
    """True if this call claimed the slot; False if any run (now or before a restart) had."""
    try:
        con.execute("INSERT INTO runs (name, slot, status, claimed_at) VALUES (?, ?, ?, ?)",
                    (name, slot, "claimed", _iso(now)))
        return True
    except sqlite3.IntegrityError:
        return False


def default_command(spec: str) -> list[str]:
    return [sys.executable, "-m", "loom.jobs.cli", "run", spec]


def tick(path: str, now: dt.datetime | None = None,
         command: Callable[[str], list[str]] = default_command) -> list[subprocess.Popen]:
    """One pass: claims and starts every due slot; returns the started processes."""
    now = now or dt.datetime.now(UTC)
    sf, base, state = load_schedules(path)
    started = []
    with connect(state) as con:
        for s in sf.schedules:
            con.execute("INSERT OR IGNORE INTO schedules (name, since) VALUES (?, ?)",
                        (s.name, _iso(now)))
            since = dt.datetime.fromisoformat(
                con.execute("SELECT since FROM schedules WHERE name = ?", (s.name,))
                .fetchone()[0])
            slot = latest_slot(s.cron, now)
            if slot < since or not claim(con, s.name, _iso(slot), now):
                continue
            spec = str((base / s.spec).resolve())
            log = state / "logs" / f"{s.name}-{slot.strftime('%Y%m%dT%H%M%S')}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            con.execute("UPDATE runs SET log = ? WHERE name = ? AND slot = ?",
                        (str(log), s.name, _iso(slot)))
            argv = [sys.executable, "-m", "loom.jobs.scheduler", str(state), s.name, _iso(slot),
                    str(log), "--", *command(spec)]
            started.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True))
    return started


def execute(state: Path, name: str, slot: str, log: str, argv: list[str]) -> int:
    """Runs one claimed slot under the schedule's lock and records its outcome."""
    lock = open(state / f"{name}.lock", "a")  # noqa: SIM115 - held for the whole run
    with connect(state) as con:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            con.execute("UPDATE runs SET status = 'skipped_overlap', finished_at = ? "
                        "WHERE name = ? AND slot = ?", (_iso(dt.datetime.now(UTC)), name, slot))
            return 0
        con.execute("UPDATE runs SET status = 'running', started_at = ?, pid = ? "
                    "WHERE name = ? AND slot = ?",
                    (_iso(dt.datetime.now(UTC)), os.getpid(), name, slot))
    with open(log, "ab") as out:
        code = subprocess.call(argv, stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    with connect(state) as con:
        con.execute("UPDATE runs SET status = ?, exit_code = ?, finished_at = ? "
                    "WHERE name = ? AND slot = ?",
                    ("succeeded" if code == 0 else "failed", code,
                     _iso(dt.datetime.now(UTC)), name, slot))
    lock.close()
    return code


def runs(path: str) -> list[dict]:
    _, _, state = load_schedules(path)
    with connect(state) as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT * FROM runs ORDER BY claimed_at, name")]


def serve(path: str, once: bool = False, now: dt.datetime | None = None, wait: bool = False,
          poll_s: float = 30.0, log=print) -> dict:
    """`loom scheduler`: ticks until stopped (or once); returns the runs recorded."""
    running: list[subprocess.Popen] = []
    while True:
        procs = tick(path, now)
        for p in procs:
            log(f"[loom scheduler] started run pid {p.pid}")
        if wait:
            for p in procs:
                p.wait()
        if once:
            break
        running = [p for p in running + procs if p.poll() is None]  # reap finished runs
        time.sleep(poll_s)
    recorded = runs(path)
    by_status: dict[str, int] = {}
    for r in recorded:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    return {"stage": "scheduler", "version": None, "datasets": {}, "reused": False,
            "started": len(procs), "counts": by_status, "runs": recorded}


if __name__ == "__main__":  # scheduler-exec: STATE NAME SLOT LOG -- ARGV...
    args = sys.argv[1:]
    sep = args.index("--")
    state_dir, name_, slot_, log_ = args[:sep]
    sys.exit(execute(Path(state_dir), name_, slot_, log_, args[sep + 1:]))
