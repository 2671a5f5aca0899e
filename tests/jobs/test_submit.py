"""`loom submit`: the runtime env carries loom's source; a spec runs on a real `ray start
--head` (127.0.0.1, its own temp dir and ports, stopped by pid: never `ray stop`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from loom.jobs.cli import app
from loom.jobs.submit import PACKAGES, entrypoint, runtime_env
from typer.testing import CliRunner

VENV_BIN = Path(sys.executable).parent


def test_runtime_env_carries_loom_source_only(tmp_path):
    env = runtime_env(str(tmp_path / "spec"), modules_dir=str(tmp_path / "m"))
    assert env["working_dir"] == str(tmp_path / "spec")
    [loom_dir] = env["py_modules"]
    assert Path(loom_dir).name == "loom"  # imported as `loom.schemas`, ... on the cluster
    assert sorted(p.name for p in Path(loom_dir).iterdir()) == sorted(PACKAGES)
    assert all((Path(loom_dir, p) / "__init__.py").is_file() for p in PACKAGES)
    assert not list(Path(loom_dir).rglob("__pycache__"))
    assert {".venv", "__pycache__", "data"} <= set(env["excludes"])
    assert entrypoint() == "python -m loom.jobs.cli run spec.yaml"


def test_bad_spec_exits_2_before_contacting_a_cluster(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\nworkdir: w\nstages:\n  - {stage: nope, id: a}\n")
    res = CliRunner().invoke(app, ["submit", str(spec), "--address", "http://127.0.0.1:9"])
    assert res.exit_code == 2, res.output
    assert "line 4" in res.stderr


@pytest.mark.parametrize("name", ["GEMINI_API_KEY", "GOOGLE_APPLICATION_CREDENTIALS",
                                  "hf_token", "DB_PASSWORD"])
def test_credentials_never_go_into_job_metadata(tmp_path, name):
    spec = tmp_path / "ok.yaml"
    spec.write_text("name: x\nworkdir: w\nstages:\n  - {stage: corpus, id: c, images: 2}\n")
    planted = "AIzaPLANTED-not-a-real-key-1234"
    res = CliRunner().invoke(app, ["submit", str(spec), "--address", "http://127.0.0.1:9",
                                   "--env", f"{name}={planted}"])
    assert res.exit_code == 2, res.output
    assert name in res.stderr and planted not in res.output + res.stderr
    with pytest.raises(Exception, match="credentials"):
        runtime_env(str(tmp_path), {name: planted})
    assert runtime_env(str(tmp_path), {"LOOM_LOG_LEVEL": "debug"})["env_vars"][
        "LOOM_LOG_LEVEL"] == "debug"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_under(marker: str) -> list[int]:
    """Processes whose command line names our temp dir: this cluster's, nobody else's."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if marker in cmd and int(d) != os.getpid():
                out.append(int(d))
    return out


@pytest.fixture
def ray_head():
    """A standalone head with the dashboard (the Jobs API) on 127.0.0.1."""
    temp = tempfile.mkdtemp(prefix="lrh-", dir="/tmp")  # short: Unix socket paths
    dash = _free_port()
    ports = {"--port": _free_port(), "--dashboard-port": dash,
             "--ray-client-server-port": _free_port(), "--node-manager-port": _free_port(),
             "--object-manager-port": _free_port(), "--metrics-export-port": _free_port(),
             "--dashboard-agent-listen-port": _free_port(),
             "--dashboard-agent-grpc-port": _free_port(),
             "--runtime-env-agent-port": _free_port()}
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "PYTHONPATH", "STORAGE_EMULATOR_HOST")}
    env |= {"PATH": f"{VENV_BIN}:{env.get('PATH', '')}", "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--temp-dir={temp}",
           "--num-cpus=2", "--object-store-memory=200000000", "--disable-usage-stats",
           *[f"{k}={v}" for k, v in ports.items()]]
    log = open(os.path.join(temp, "ray-start.log"), "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=temp)
    address = f"http://127.0.0.1:{dash}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + 240
        # `ray start` writes its address under its own temp dir (not /tmp/ray, where a
        # plain ray.init() elsewhere would find it) once the node is up
        while not Path(temp, "ray_current_cluster").exists():
            assert proc.poll() is None, Path(temp, "ray-start.log").read_text()[-3000:]
            assert time.monotonic() < deadline, Path(temp, "ray-start.log").read_text()[-3000:]
            time.sleep(1)
        while True:
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:  # noqa: BLE001 - not up yet
                assert time.monotonic() < deadline, "the dashboard never came up"
                time.sleep(2)
        yield address
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        for pid in _pids_under(temp):  # anything that left the session
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()


@pytest.mark.slow
def test_submit_runs_a_spec_on_ray_start_head(ray_head, tmp_path):
    from loom.jobs.corpus import generate_corpus

    media = tmp_path / "corpus"
    generate_corpus(str(media), 4, 4, seed=0, bad_files=False)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(f"name: tiny\nworkdir: {tmp_path / 'work'}\nstages:\n"
                    f"  - {{stage: ingest, id: ingest, input: {media}}}\n")
    # one machine, so every node sees the spec's local paths: --shared-fs says so (the
    # job's RAY_ADDRESS is this host's own IP, which loom cannot tell from a remote node)
    res = CliRunner().invoke(app, ["submit", str(spec), "--address", ray_head,
                                   "--timeout", "600", "--shared-fs"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["status"] == "SUCCEEDED"
    ingest = out["stages"]["ingest"]
    assert ingest["counts"]["examples"] >= 8
    assert Path(ingest["uri"], "manifest.json").is_file()
    assert Path(out["result"]["report_html"]).is_file()

    # a job that fails on the cluster: its own exit code (2: bad input) comes back
    spec.write_text(f"name: tiny\nworkdir: {tmp_path / 'work'}\nstages:\n"
                    f"  - {{stage: ingest, id: ingest, input: {tmp_path / 'missing'}}}\n")
    res = CliRunner().invoke(app, ["submit", str(spec), "--address", ray_head, "--shared-fs"])
    assert res.exit_code == 2, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["status"] == "FAILED" and "missing" in out["logs_tail"]
