"""Storage failures end in one line: exit 1, `loom: <stage>: cannot write <uri>: <os error>`
on stderr, a JSON line (stage, exit_code, error) last on stdout, the traceback in a log.

The read-only and full disks are real: small tmpfs mounts in a private mount namespace
(`unshare --user --map-root-user --mount`: no root needed, nothing to unmount after).
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
LOOM = f"{shlex.quote(sys.executable)} -m loom.jobs.cli"


def _media(tmp_path: pathlib.Path) -> pathlib.Path:
    media = tmp_path / "media"
    media.mkdir()
    for i in range(3):
        (media / f"t{i}.txt").write_text(f"a caption about a red circle number {i}")
    return media


def _run(script: str, tmp_path: pathlib.Path, mount: bool) -> subprocess.CompletedProcess:
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "LOOM_LOG_DIR": str(tmp_path / "logs")}
    env.pop("LOOM_DEBUG", None)
    cmd = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-ec", script] if mount \
        else ["sh", "-ec", script]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _check(res: subprocess.CompletedProcess, uri_prefix: str, os_error: str) -> dict:
    assert res.returncode == 1, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    # one line, even when the disk fills inside a Beam worker (whose SDK harness prints the
    # bundle's traceback straight to stderr: that goes to the log)
    assert len(lines) == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert lines[0].startswith(f"loom: ingest: cannot write {uri_prefix}"), lines[0]
    assert lines[0].endswith(os_error), lines[0]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["stage"] == "ingest" and out["exit_code"] == 1
    assert out["error"] == lines[0].removeprefix("loom: ingest: ")
    assert "Traceback" in pathlib.Path(out["log"]).read_text()  # kept, off the terminal
    return out


def test_output_is_a_file(tmp_path):
    media, target = _media(tmp_path), tmp_path / "a-file"
    target.write_text("not a folder")
    res = _run(f"{LOOM} ingest --input {media} --output {target}", tmp_path, mount=False)
    _check(res, str(target), "[Errno 20] Not a directory")


def _mounted(tmp_path: pathlib.Path, opts: str, then: str) -> subprocess.CompletedProcess:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    return _run(f"mount -t tmpfs -o {opts} tmpfs {mnt}; {then}", tmp_path, mount=True)


def test_read_only_output(tmp_path):
    media, mnt = _media(tmp_path), tmp_path / "mnt"
    res = _mounted(tmp_path, "size=1m,ro", f"{LOOM} ingest --input {media} --output {mnt}/out")
    _check(res, str(mnt), "[Errno 30] Read-only file system")


@pytest.mark.parametrize("free_kb", [0, 24])  # full before the run, and full mid-run
def test_full_disk(tmp_path, free_kb):
    media, mnt = _media(tmp_path), tmp_path / "mnt"
    fill = f"dd if=/dev/zero of={mnt}/fill bs=1k count={1024 - free_kb} 2>/dev/null || true"
    res = _mounted(tmp_path, "size=1m", f"{fill}; {LOOM} ingest --input {media} "
                                        f"--output {mnt}/out")
    _check(res, str(mnt), "[Errno 28] No space left on device")


def test_bad_input_still_exits_2_with_json(tmp_path):
    res = _run(f"{LOOM} ingest --input {tmp_path}/missing --output {tmp_path}/out", tmp_path,
               mount=False)
    assert res.returncode == 2, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"stage": "ingest", "exit_code": 2, "error": out["error"]}
    assert f"{tmp_path}/missing" in out["error"]
