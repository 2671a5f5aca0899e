"""A local HTTP server speaking enough of the Gemini REST protocol for google-genai.

POST /v1beta/models/{model}:generateContent (or /v1/...) answers a
GenerateContentResponse computed by `synth.offline_model`. It binds 127.0.0.1 only,
never logs request headers (an API key travels in one), and needs no network.

    python -m synth.offline_server --port 0   # prints: LOOM_OFFLINE_SERVER http://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from synth import offline_model

HOST = "127.0.0.1"
BANNER = "LOOM_OFFLINE_SERVER"
_ROUTE = re.compile(r"^/(v1beta|v1)/models/([^/:]+):generateContent$")
_STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 500: "INTERNAL", 501: "UNIMPLEMENTED"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "loom-offline/1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - silence; no headers logged
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str) -> None:
        self._send(code, {"error": {"code": code, "message": message,
                                    "status": _STATUS.get(code, "UNKNOWN")}})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not _ROUTE.match(self.path.split("?", 1)[0]):
            self._error(404 if ":" in self.path else 501,
                        "method not supported by the offline server")
            return
        try:
            request = json.loads(raw or b"{}")
        except ValueError:
            self._error(400, "invalid JSON payload")
            return
        try:
            self._send(200, offline_model.respond(request))
        except offline_model.BadInput as exc:
            self._error(400, str(exc))
        except Exception as exc:  # noqa: BLE001 - a model bug is a 500, not a dead server
            self._error(500, f"offline model failed: {type(exc).__name__}")

    def do_GET(self) -> None:  # noqa: N802
        self._error(404, "not found")


def start_server(port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start the server in a daemon thread of this process; returns (server, base_url).

    Stop it with `server.shutdown(); server.server_close()`.
    """
    server = ThreadingHTTPServer((HOST, port), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="loom-offline-llm", daemon=True).start()
    return server, f"http://{HOST}:{server.server_address[1]}"


@contextlib.contextmanager
def offline_server(timeout_s: float = 30.0) -> Iterator[str]:
    """Run the server as a subprocess; yields its base URL and stops it on exit."""
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.Popen(
        [sys.executable, "-m", "synth.offline_server", "--port", "0"],
        stdout=subprocess.PIPE, text=True, cwd=root,
    )
    try:
        assert proc.stdout is not None
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            line = proc.stdout.readline().strip()
        finally:
            timer.cancel()
        if not line.startswith(BANNER + " "):
            raise RuntimeError(f"offline server failed to start (got {line!r})")
        yield line.split(" ", 1)[1]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((HOST, args.port), _Handler)
    server.daemon_threads = True
    print(f"{BANNER} http://{HOST}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
