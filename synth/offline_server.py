"""A local HTTP server speaking enough of the Gemini REST protocol for google-genai.

POST /v1beta/models/{model}:generateContent (or /v1/...) answers a
GenerateContentResponse computed by `synth.offline_model`; the Files API (resumable
upload, get, delete, download) and the Batch API (batchGenerateContent, batches get and
list) are served from `synth.offline_files`. It speaks Vertex AI too (google-genai with
`vertexai=True`, any bearer token): POST /v1beta1/projects/{p}/locations/{l}/publishers/
google/models/{model}:generateContent, with gs:// fileData read through
`schemas.storage` (STORAGE_EMULATOR_HOST points it at the GCS emulator), and the
`batchPredictionJobs` create/get/list/cancel/delete of `synth.offline_vertex` (JSONL
in and out on gs://). A request body over `request_limit_bytes`
is refused with 400, as Gemini refuses one over 20 MB. It binds 127.0.0.1 only,
never logs request headers (an API key travels in one), and needs no network.

Fault injection (`Faults`): a seeded share of generateContent requests answers 429
(Retry-After header plus a RetryInfo `retryDelay` in the body, as Gemini does), 500,
503, a slow answer (past the client's timeout), a truncated JSON body, or a connection
cut mid-body. A request body is faulted at most `max_per_request` times, so a client
that retries enough always gets through. GET /loom/stats reports what was served.

    python -m loom.synth.offline_server --port 0 [--latency-ms 200] [--faults 0.3 --fault-seed 1]
        [--storage-emulator-host http://127.0.0.1:PORT]
    # prints: LOOM_OFFLINE_SERVER http://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydantic
from loom.synth import offline_model
from loom.synth.offline_files import ApiError, Store
from loom.synth.offline_vertex import VertexJobs, inline_gcs

HOST = "127.0.0.1"
BANNER = "LOOM_OFFLINE_SERVER"
_ROUTE = re.compile(r"^/(v1beta|v1)/models/([^/:]+):generateContent$")
_BATCH = re.compile(r"^/(v1beta|v1)/models/([^/:]+):batchGenerateContent$")
_FILE = re.compile(r"^/(?:download/)?(?:v1beta|v1)/files/([^/:]+)(:download)?$")
_BATCHES = re.compile(r"^/(?:v1beta|v1)/batches(?:/([^/:]+))?$")
# Vertex AI (google-genai with vertexai=True): publisher models and batch prediction jobs
_VERTEX = re.compile(r"^/(v1beta1|v1)/projects/[^/]+/locations/[^/]+/publishers/google/"
                     r"models/([^/:]+):generateContent$")
_VERTEX_JOBS = re.compile(r"^/(?:v1beta1|v1)/(projects/[^/]+/locations/[^/]+)/"
                          r"batchPredictionJobs(?:/([0-9]+))?(:cancel)?$")
REQUEST_LIMIT = 20 * 1024 * 1024
_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
           500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE"}
FAULT_KINDS = ("429", "500", "503", "slow", "truncated", "cut")


class Faults(pydantic.BaseModel):
    """What the server does besides answering: latency and injected faults."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    latency_s: float = 0.0  # added to every generateContent answer
    share: float = 0.0  # of generateContent requests that get a fault
    seed: int = 0
    kinds: tuple[str, ...] = FAULT_KINDS  # drawn uniformly
    retry_after_s: float = 1.0  # what a 429 asks the client to wait
    slow_s: float = 5.0  # a slow answer's delay (set it past the client's timeout)
    max_per_request: int = 3  # a request body is faulted at most this often
    # the Files and Batch APIs (synth.offline_files) and Gemini's request size limit
    request_limit_bytes: int = REQUEST_LIMIT
    file_ttl_s: float = 48 * 3600.0
    batch_delay_s: float = 0.0  # a job stays PENDING this long
    batch_ttl_s: float = 48 * 3600.0  # a job not done by then EXPIRES
    batch_line_failures: float = 0.0  # share of batch lines answered with an error

    @pydantic.field_validator("kinds")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = set(v) - set(FAULT_KINDS)
        if bad:
            raise ValueError(f"unknown fault kinds {sorted(bad)} (have {FAULT_KINDS})")
        return v


class _State:
    """Counters and the seeded fault draw, shared by the handler threads."""

    def __init__(self, faults: Faults):
        self.faults = faults
        self.rng = random.Random(faults.seed)
        self.lock = threading.Lock()
        self.requests = 0
        self.answered = 0  # 200s with a model answer: what a real API bills
        self.in_flight = 0
        self.max_in_flight = 0
        self.fault_counts: Counter[str] = Counter()
        self.per_body: Counter[str] = Counter()
        self.answered_ids: list[str] = []
        self.times: list[float] = []
        self.store = Store(faults.file_ttl_s, faults.batch_delay_s, faults.batch_ttl_s,
                           faults.batch_line_failures, faults.seed)
        self.vertex = VertexJobs(faults.batch_delay_s, faults.batch_ttl_s,
                                 faults.batch_line_failures, faults.seed)

    def draw(self, digest: str) -> str | None:
        f = self.faults
        with self.lock:
            if f.share <= 0 or self.per_body[digest] >= f.max_per_request:
                return None
            if self.rng.random() >= f.share:
                return None
            kind = f.kinds[self.rng.randrange(len(f.kinds))]
            self.per_body[digest] += 1
            self.fault_counts[kind] += 1
            return kind

    def stats(self) -> dict:
        with self.lock:
            return {"requests": self.requests, "answered": self.answered,
                    "in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
                    "faults": dict(self.fault_counts), "answered_ids": list(self.answered_ids),
                    "times": list(self.times), "files": len(self.store.files)} \
                | self.store.counts | self.vertex.counts


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "loom-offline/1"

    @property
    def state(self) -> _State:
        return self.server.loom_state  # type: ignore[attr-defined]

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - silence; no headers logged
        pass

    def _send(self, code: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self._send_bytes(code, data, headers)

    def _send_bytes(self, code: int, data: bytes, headers: dict[str, str] | None = None,
                    length: int | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self._release()  # before the client can see the answer and send its next request
        try:
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
            self.close_connection = True

    def _error(self, code: int, message: str, details: list | None = None,
               headers: dict[str, str] | None = None) -> None:
        err = {"code": code, "message": message, "status": _STATUS.get(code, "UNKNOWN")}
        if details:
            err["details"] = details
        self._send(code, {"error": err}, headers)

    def _base_url(self) -> str:
        return f"http://{self.headers.get('Host') or HOST}"

    def _api(self, fn) -> None:
        """Answer a Files/Batch API call: its JSON, or its ApiError as Gemini's error body."""
        try:
            self._send(200, fn())
        except ApiError as exc:
            self._error(exc.code, str(exc))

    def _upload(self, raw: bytes) -> None:
        """The resumable protocol google-genai's files.upload speaks: start, then bytes."""
        store = self.state.store
        query = self.path.split("?", 1)[1] if "?" in self.path else ""
        sid = dict(q.split("=", 1) for q in query.split("&") if "=" in q).get("upload_id")
        if sid is None:
            body = (json.loads(raw or b"{}") or {}).get("file") or {}
            meta = {"mimeType": self.headers.get("X-Goog-Upload-Header-Content-Type")
                    or body.get("mimeType") or body.get("mime_type"),
                    "displayName": body.get("displayName") or body.get("display_name")}
            sid = store.start_upload(meta)
            self._send(200, {}, {"X-Goog-Upload-URL":
                                 f"{self._base_url()}/upload/v1beta/files?upload_id={sid}",
                                 "X-Goog-Upload-Status": "active"})
            return
        command = self.headers.get("X-Goog-Upload-Command") or "upload, finalize"
        try:
            if "finalize" not in command:  # one chunk of several (the SDK sends 8 MiB ones)
                store.add_chunk(sid, raw)
                self._send(200, {}, {"X-Goog-Upload-Status": "active"})
                return
            meta = store.finish_upload(sid, raw, self._base_url())
        except ApiError as exc:
            self._error(exc.code, str(exc))
            return
        self._send(200, {"file": meta}, {"X-Goog-Upload-Status": "final"})

    def do_DELETE(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if (job := _VERTEX_JOBS.match(path)) is not None and job.group(2) and not job.group(3):
            self._api(lambda: self.state.vertex.delete(job.group(2)))
            return
        m = _FILE.match(path)
        if not m:
            self._error(404, "not found")
            return
        self._api(lambda: self.state.store.delete_file(m.group(1)) or {})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        if path.startswith("/upload/") and path.endswith("/files"):
            self._upload(raw)
            return
        if (batch := _BATCH.match(path)) is not None:
            self._api(lambda: self.state.store.create_batch(
                batch.group(2), json.loads(raw or b"{}"), self._base_url(), answer_for(self.state)))
            return
        if (job := _VERTEX_JOBS.match(path)) is not None:
            self._vertex_jobs_post(job, raw)
            return
        route = _ROUTE.match(path) or _VERTEX.match(path)
        if not route:
            self._error(404 if ":" in self.path else 501,
                        "method not supported by the offline server")
            return
        vertex = route.re is _VERTEX
        st = self.state
        with st.lock:
            st.requests += 1
            st.in_flight += 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight)
            st.times.append(time.monotonic())
        self._counted = True
        try:
            if route.group(2) not in known_models():  # as Gemini answers an unknown model
                self._error(404, f"models/{route.group(2)} is not found for API version "
                                 f"{route.group(1)}, or is not supported for generateContent. "
                                 "Call ListModels to see the list of available models and "
                                 "their supported methods.")
                return
            if length > st.faults.request_limit_bytes:
                self._error(400, "Request payload size exceeds the limit: "
                                 f"{st.faults.request_limit_bytes} bytes.")
                return
            self._generate(raw, inline_gcs if vertex else None)
        finally:
            self._release()

    def _vertex_jobs_post(self, job: re.Match, raw: bytes) -> None:
        """batchPredictionJobs create (no id) and cancel (`{id}:cancel`)."""
        jobs = self.state.vertex
        if job.group(2) and job.group(3):
            self._api(lambda: jobs.cancel(job.group(2)))
        elif not job.group(2) and not job.group(3):
            self._api(lambda: jobs.create(job.group(1), json.loads(raw or b"{}"),
                                          known_models(), answer_for(self.state, inline_gcs)))
        else:
            self._error(404, "not found")

    def _release(self) -> None:
        """This request stops counting as in flight (once)."""
        if getattr(self, "_counted", False):
            self._counted = False
            with self.state.lock:
                self.state.in_flight -= 1

    def _generate(self, raw: bytes, resolve=None) -> None:
        st, f = self.state, self.state.faults
        fault = st.draw(hashlib.sha256(raw).hexdigest())
        if f.latency_s > 0:
            time.sleep(f.latency_s)
        if fault == "429":
            delay = f.retry_after_s
            self._error(429, "Resource has been exhausted (e.g. check quota).",
                        details=[{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                  "retryDelay": f"{delay:g}s"}],
                        headers={"Retry-After": str(math.ceil(delay))})
            return
        if fault in ("500", "503"):
            self._error(int(fault), "injected fault: try again")
            return
        if fault == "slow":
            time.sleep(f.slow_s)
        try:
            request = json.loads(raw or b"{}")
        except ValueError:
            self._error(400, "invalid JSON payload")
            return
        try:
            answer = answer_for(st, resolve)(request)
        except ApiError as exc:  # Gemini: 400 (never retried), 403 for a file gone
            self._error(exc.code, str(exc))
            return
        data = json.dumps(answer).encode()
        if fault == "truncated":  # a complete HTTP message whose JSON is cut short
            self._send_bytes(200, data[: len(data) // 2])
            return
        if fault == "cut":  # the connection drops mid-body
            self._send_bytes(200, data[: len(data) // 2], length=len(data))
            self.close_connection = True
            return
        self._send_bytes(200, data)
        with st.lock:
            st.answered += 1
            st.answered_ids.append(str(answer.get("responseId", "")))

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/loom/stats":
            self._send(200, self.state.stats())
            return
        path, store = self.path.split("?", 1)[0], self.state.store
        if (m := _FILE.match(path)) is not None:
            if m.group(2):  # :download?alt=media: the bytes
                try:
                    data = store.file(m.group(1))["data"]
                except ApiError as exc:
                    self._error(exc.code, str(exc))
                    return
                self._send_bytes(200, data)
                return
            self._api(lambda: store.file(m.group(1))["meta"])
            return
        if (m := _BATCHES.match(path)) is not None:
            self._api(lambda: store.batch(m.group(1)) if m.group(1) else store.list_batches())
            return
        if (m := _VERTEX_JOBS.match(path)) is not None and not m.group(3):
            jobs = self.state.vertex
            self._api(lambda: jobs.get(m.group(2)) if m.group(2) else jobs.list())
            return
        self._error(404, "not found")


def answer_for(state: _State, resolve=None):
    """One request's answer (REST JSON), or ApiError: generateContent and batch lines both.
    `resolve` turns file references into bytes: the Files API's (Gemini) by default,
    `offline_vertex.inline_gcs` (gs:// only) on the Vertex routes."""
    def answer(request: object) -> dict:
        if (problem := malformed(request)) is not None:  # Gemini: 400, never retried
            raise ApiError(400, problem)
        request = (resolve or state.store.inline_files)(request)
        try:
            return within_schema(offline_model.respond(request),
                                 (request.get("generationConfig") or {}))
        except offline_model.BadInput as exc:
            raise ApiError(400, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - a model bug is a 500, not a dead server
            raise ApiError(500, f"offline model failed: {type(exc).__name__}") from None
    return answer


def known_models() -> frozenset[str]:
    """Models the double answers for: those with a price (synth/prices.yaml), plus any in
    LOOM_OFFLINE_MODELS (comma-separated). Anything else is 404 NOT_FOUND, as on Gemini."""
    import yaml

    prices = yaml.safe_load((Path(__file__).with_name("prices.yaml")).read_text()) or {}
    extra = {m.strip() for m in os.environ.get("LOOM_OFFLINE_MODELS", "").split(",")}
    return frozenset(k for k in prices if not str(k).startswith("_")) | {m for m in extra if m}


def malformed(request: object) -> str | None:
    """Gemini's 400 INVALID_ARGUMENT reasons for a body that is not a GenerateContentRequest."""
    if not isinstance(request, dict):
        return "Invalid JSON payload received. Expected an object."
    contents = request.get("contents")
    if contents is None or contents == []:
        return "* GenerateContentRequest.contents: contents is not specified"
    if not isinstance(contents, list):
        return (f"Invalid value at 'contents' (type.googleapis.com/google.ai."
                f"generativelanguage.v1beta.Content), {json.dumps(contents)}")
    for i, content in enumerate(contents):
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts:
            return f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
        if not all(isinstance(p, dict) for p in parts):
            return f"Invalid value at 'contents[{i}].parts'"
    gen = request.get("generationConfig")
    if gen is not None and not isinstance(gen, dict):
        return "Invalid value at 'generation_config'"
    return None


def _schema_of(gen: dict) -> dict | None:
    schema = gen.get("responseJsonSchema") or gen.get("responseSchema") \
        or gen.get("response_json_schema") or gen.get("response_schema")
    return schema if isinstance(schema, dict) else None


def _prune(value: object, schema: dict) -> object:
    """Drop object properties the schema does not declare (recursively)."""
    if isinstance(value, dict) and isinstance(schema.get("properties"), dict):
        props = schema["properties"]
        return {k: _prune(v, props[k]) for k, v in value.items() if k in props}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_prune(v, schema["items"]) for v in value]
    return value


def within_schema(answer: dict, gen: dict) -> dict:
    """A constrained-decoding model never writes a property outside its response schema."""
    schema = _schema_of(gen)
    if schema is None or gen.get("responseMimeType") != "application/json":
        return answer
    for cand in answer.get("candidates") or []:
        for part in (cand.get("content") or {}).get("parts") or []:
            try:
                body = json.loads(part.get("text", ""))
            except ValueError:
                continue  # a cut-short answer (finishReason MAX_TOKENS) stays as it is
            part["text"] = json.dumps(_prune(body, schema))
    return answer


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return  # a client that hung up (a timeout, a killed worker) is not news
        super().handle_error(request, client_address)


def _make(port: int, faults: Faults | None) -> ThreadingHTTPServer:
    server = _Server((HOST, port), _Handler)
    server.daemon_threads = True
    server.request_queue_size = 256
    server.loom_state = _State(faults or Faults())  # type: ignore[attr-defined]
    return server


def start_server(port: int = 0, faults: Faults | None = None) -> tuple[ThreadingHTTPServer, str]:
    """Start the server in a daemon thread of this process; returns (server, base_url).

    Stop it with `server.shutdown(); server.server_close()`.
    """
    server = _make(port, faults)
    threading.Thread(target=server.serve_forever, name="loom-offline-llm", daemon=True).start()
    return server, f"http://{HOST}:{server.server_address[1]}"


def server_stats(base_url: str) -> dict:
    """GET /loom/stats of a running server (requests, answered, faults, max_in_flight)."""
    import urllib.request

    with urllib.request.urlopen(f"{base_url}/loom/stats", timeout=10) as resp:  # noqa: S310
        return json.loads(resp.read())


@contextlib.contextmanager
def offline_server(timeout_s: float = 30.0, faults: Faults | None = None) -> Iterator[str]:
    """Run the server as a subprocess; yields its base URL and stops it on exit."""
    root = str(Path(__file__).resolve().parent.parent)
    args = [sys.executable, "-m", "loom.synth.offline_server", "--port", "0",
            "--parent-pid", str(os.getpid())]
    if faults is not None:
        args += ["--faults-json", faults.model_dump_json()]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=root)
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


def _exit_with_parent(parent: int, server: ThreadingHTTPServer) -> None:
    """A parent killed with SIGKILL cannot stop its server: the server stops itself when
    it is reparented, instead of serving (and holding the parent's pipes) forever."""
    while os.getppid() == parent:
        time.sleep(0.5)
    server.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--faults", type=float, default=0.0, help="share of requests faulted")
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument("--faults-json", default=None, help="a full Faults object as JSON")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="exit when this process is gone (a SIGKILLed synth)")
    parser.add_argument("--storage-emulator-host", default=None,
                        help="where gs:// goes (Vertex fileData and batch JSONL), e.g. the "
                             "GCS emulator's http://127.0.0.1:PORT; default: "
                             "$STORAGE_EMULATOR_HOST, else Cloud Storage")
    args = parser.parse_args(argv)
    if args.storage_emulator_host:
        os.environ["STORAGE_EMULATOR_HOST"] = args.storage_emulator_host
    if args.faults_json:
        faults = Faults.model_validate_json(args.faults_json)
    else:
        faults = Faults(latency_s=args.latency_ms / 1000, share=args.faults, seed=args.fault_seed)
    server = _make(args.port, faults)
    print(f"{BANNER} http://{HOST}:{server.server_address[1]}", flush=True)
    if args.parent_pid:
        threading.Thread(target=_exit_with_parent, args=(args.parent_pid, server),
                         daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
