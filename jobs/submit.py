"""`loom submit SPEC --address http://HOST:8265`: run a job spec on a Ray cluster through
the Ray Jobs API.

The runtime environment carries loom itself: its packages inside one `loom` folder as a
`py_module` (source only: no virtualenv, data or caches) and a working_dir holding just the spec, so a cluster whose image
has loom's dependencies runs the submitter's loom. The job runs `loom run` there; its last
log line is `loom run`'s JSON object, which becomes `result` here. Exit code: 0 when the job
succeeds, the job's own code (2 bad spec, 3 budget) when its message names one, else 1.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

PACKAGES = ("schemas", "transforms", "synth", "models", "pipelines", "jobs")
EXCLUDES = ["__pycache__", "*.pyc", ".venv", "data", ".loom-demo", "*.parquet", ".git"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
SPEC_NAME = "spec.yaml"


class JobFailed(RuntimeError):
    """The cluster ran the job and it did not succeed; `code` is the exit code to use."""

    def __init__(self, payload: dict, code: int):
        self.payload, self.code = payload, code
        super().__init__(f"job {payload['job_id']} {payload['status']}: "
                         f"{payload.get('message') or ''}".strip())


def package_dirs() -> list[str]:
    """The source folders of loom's packages (`loom.schemas`, ...), wherever installed."""
    return [str(Path(importlib.import_module(f"loom.{p}").__file__).parent) for p in PACKAGES]


def stage_loom(staging: str) -> str:
    """`<staging>/loom/<package>`: loom's source as one importable `loom` folder.

    `loom` is a namespace package (its folders install under one name), so the packages
    travel inside a `loom` folder: a py_module is imported by its folder's name."""
    root = os.path.join(staging, "loom")
    for src in package_dirs():
        shutil.copytree(src, os.path.join(root, Path(src).name),
                        ignore=shutil.ignore_patterns(*EXCLUDES))
    return root


# A job's runtime_env is job metadata: the dashboard and `ray job list` show it to anyone
# who can reach the cluster. Credentials reach a cluster through its own secret store (a
# Kubernetes Secret, workload identity, ADC), never through here.
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)


def check_env_vars(env_vars: dict[str, str]) -> None:
    """Refuses variables that look like credentials (raises BadInput: exit 2)."""
    from loom.pipelines.common import BadInput

    for name in env_vars:
        if _SECRET_NAME.search(name) and name != "RAY_AUTH_MODE":
            raise BadInput(f"--env {name}=...: credentials are not passed in job metadata "
                           "(the Ray dashboard shows it); give the cluster a secret instead")


def runtime_env(spec_dir: str, env_vars: dict[str, str] | None = None,
                modules_dir: str | None = None) -> dict:
    """`modules_dir`: where the staged `loom` folder goes (a fresh temp dir by default)."""
    check_env_vars(env_vars or {})
    loom_dir = stage_loom(modules_dir or tempfile.mkdtemp(prefix="loom-modules-"))
    return {"working_dir": spec_dir, "py_modules": [loom_dir], "excludes": EXCLUDES,
            "env_vars": {"RAY_AUTH_MODE": "disabled", **(env_vars or {})}}


def entrypoint(python: str = "python") -> str:
    return f"{python} -m loom.jobs.cli run {SPEC_NAME}"


def _exit_code(message: str | None) -> int:
    m = re.search(r"exit code (\d+)", message or "")
    code = int(m.group(1)) if m else 1
    return code if code in (2, 3) else 1


def _last_json(logs: str) -> dict | None:
    import json

    for line in reversed(logs.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def submit(spec_path: str, address: str, wait: bool = True, timeout_s: float = 3600,
           python: str = "python", env_vars: dict[str, str] | None = None,
           log=None, poll_s: float = 2.0, shared_fs: bool = False) -> dict:
    """`shared_fs`: every node mounts the same filesystem at the spec's local paths
    (LOOM_SHARED_FS=1 for the job); otherwise a multi-node cluster's address refuses them
    here, before anything reaches the cluster (the job checks again for itself)."""
    from loom.jobs.logs import say
    from loom.jobs.spec import load_spec
    from ray.job_submission import JobSubmissionClient

    log = log or say  # progress lines carry job_id / status as fields under --log-json
    from loom.pipelines.cluster import SHARED_FS_ENV, check_spec_paths

    spec = load_spec(spec_path)  # a bad spec stops here, before the cluster
    check_spec_paths(spec, address=address, shared=shared_fs)
    if shared_fs:
        env_vars = {**(env_vars or {}), SHARED_FS_ENV: "1"}
    client = JobSubmissionClient(address)
    staging = tempfile.mkdtemp(prefix="loom-submit-")
    modules = tempfile.mkdtemp(prefix="loom-modules-")
    try:
        shutil.copyfile(spec_path, os.path.join(staging, SPEC_NAME))
        job_id = client.submit_job(entrypoint=entrypoint(python),
                                   runtime_env=runtime_env(staging, env_vars, modules),
                                   metadata={"loom_spec": spec.name})
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # uploaded at submit time
        shutil.rmtree(modules, ignore_errors=True)
    log(f"[loom submit] {spec.name}: job {job_id} on {address}", job_id=job_id)
    out = {"stage": "submit", "version": None, "name": spec.name, "job_id": job_id,
           "address": address, "datasets": {}, "counts": {}, "reused": False}
    if not wait:
        return out | {"status": str(client.get_job_status(job_id).value)}
    deadline, last = time.monotonic() + timeout_s, None
    while True:
        info = client.get_job_info(job_id)
        status = str(info.status.value)
        if status != last:
            log(f"[loom submit] job {job_id}: {status}", job_id=job_id, status=status)
            last = status
        if status in TERMINAL:
            break
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise TimeoutError(f"job {job_id} still {status} after {timeout_s:.0f}s (stopped)")
        time.sleep(poll_s)
    logs = client.get_job_logs(job_id)
    result = _last_json(logs)
    out |= {"status": status, "message": info.message, "result": result}
    if result:
        out |= {"reused": result.get("reused", []), "stages": result.get("stages", {}),
                "eval": result.get("eval"), "report": result.get("report")}
    if status != "SUCCEEDED":
        out["logs_tail"] = logs[-2000:]
        raise JobFailed(out, _exit_code(info.message) if status == "FAILED" else 1)
    return out
