"""A local GCS emulator for tests: `gcp-storage-emulator` in its own process.

It must run as a separate process: run in-process as a thread, pyarrow and polars
reads against it hang. Nothing global is changed here; callers put `env()` into
os.environ (or a child's environment) themselves.

    with GcsEmulator(bucket="loom-test") as gcs:
        os.environ.update(gcs.env())
        ... gs://loom-test/... ...
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["GcsEmulator", "emulator_available", "free_port"]

_EXE = "gcp-storage-emulator"


def _command() -> list[str] | None:
    # The console script lives beside the interpreter in the venv's bin dir; a venv that
    # reuses another's site-packages has the module without the script.
    beside = Path(sys.executable).parent / _EXE
    if beside.exists():
        return [str(beside)]
    if shutil.which(_EXE):
        return [shutil.which(_EXE)]
    if importlib.util.find_spec("gcp_storage_emulator") is not None:
        return [sys.executable, "-m", "gcp_storage_emulator"]
    return None


def emulator_available() -> bool:
    return _command() is not None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class GcsEmulator:
    """Context manager: starts the emulator, ensures the bucket exists, stops it on exit."""

    def __init__(self, bucket: str = "loom-test", port: int | None = None,
                 startup_timeout: float = 20.0, host: str = "127.0.0.1"):
        """`host`: the address it binds (a cluster's bridge address, so nodes reach it)."""
        self.bucket, self.bind = bucket, host
        self.port = port
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def host(self) -> str:
        if self.port is None:
            raise RuntimeError("emulator not started")
        return f"http://{self.bind}:{self.port}"

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.host}

    def client(self):
        """An official google-cloud-storage client aimed at this emulator (anonymous)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="loom-test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.host},
        )

    def start(self) -> GcsEmulator:
        exe = _command()
        if exe is None:
            raise RuntimeError(f"{_EXE} is not installed (pip install gcp-storage-emulator)")
        last_error: str = ""
        for _ in range(3):  # a free port can be taken between probe and bind; retry
            port = self.port or free_port(self.bind)
            self._log = tempfile.TemporaryFile()
            self._proc = subprocess.Popen(  # generation preconditions honoured, as on GCS
                [sys.executable, str(Path(__file__).with_name("gcs_preconditions.py")),
                 "start", "--host", self.bind, "--port", str(port), "--in-memory",
                 "--default-bucket", self.bucket],
                stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"},
            )
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    break
                if _port_open(port, self.bind):
                    self.port = port
                    self._ensure_bucket()
                    return self
                time.sleep(0.1)
            last_error = self._output()
            self._terminate()
            if self.port is not None:
                break  # a fixed port: do not retry another
        raise RuntimeError(f"GCS emulator did not start within {self.startup_timeout}s:\n"
                           f"{last_error}")

    def _ensure_bucket(self) -> None:
        from google.api_core import exceptions

        client = self.client()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                if client.lookup_bucket(self.bucket) is None:
                    client.create_bucket(self.bucket)
                return
            except exceptions.Conflict:
                return
            except Exception:  # the HTTP server can accept before it serves
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def downloads(self) -> dict[str, int]:
        """Content downloads so far per `bucket/object` (the launcher logs each one)."""
        if self._log is None:
            return {}
        self._log.seek(0)
        counts: dict[str, int] = {}
        for line in self._log.read().decode(errors="replace").splitlines():
            if line.startswith("loom-download "):
                key = line.removeprefix("loom-download ")
                counts[key] = counts.get(key, 0) + 1
        return counts

    def _output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        self._terminate()

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
