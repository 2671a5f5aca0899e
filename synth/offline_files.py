"""The offline server's Files API and Batch API state (synth.offline_server routes to it).

Files: a resumable upload (start, then `upload, finalize`) makes an ACTIVE file that
expires `file_ttl_s` after its upload (Gemini: 48 hours); an expired file is gone (get:
404; a request referencing it: 403, as on Gemini). Batches: `batchGenerateContent` with a
JSONL file (`{"key", "request"}` lines) or inlined requests; the job is PENDING for
`batch_delay_s`, then answers every line with the offline model into an output JSONL
file (`{"key", "response"}` or `{"key", "error"}` lines; a seeded `batch_line_failures`
share of lines fail) and SUCCEEDED; a job that would finish past `batch_ttl_s` EXPIRES.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import random
import threading
import time
import uuid
from collections.abc import Callable

STATES = ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING", "BATCH_STATE_SUCCEEDED",
          "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED")


class ApiError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat().replace("+00:00", "Z")


class Store:
    """Uploaded files and batch jobs, shared by the handler threads."""

    def __init__(self, file_ttl_s: float, batch_delay_s: float, batch_ttl_s: float,
                 line_failures: float, seed: int):
        self.file_ttl_s, self.batch_delay_s, self.batch_ttl_s = file_ttl_s, batch_delay_s, batch_ttl_s
        self.line_failures = line_failures
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.files: dict[str, dict] = {}  # id -> {"meta": File JSON, "data": bytes, "expires": t}
        self.sessions: dict[str, dict] = {}  # upload id -> File JSON (pending bytes)
        self.batches: dict[str, dict] = {}  # id -> Operation JSON
        self.counts = {"uploads": 0, "batches_created": 0, "batch_lines": 0,
                       "batch_lines_failed": 0}

    # --- files ---------------------------------------------------------------------------
    def start_upload(self, meta: dict) -> str:
        sid = uuid.uuid4().hex
        with self.lock:
            self.sessions[sid] = meta
        return sid

    def add_chunk(self, sid: str, data: bytes) -> None:
        with self.lock:
            if sid not in self.sessions:
                raise ApiError(404, "upload session not found")
            self.sessions[sid].setdefault("_chunks", []).append(data)

    def finish_upload(self, sid: str, data: bytes, base_url: str) -> dict:
        with self.lock:
            meta = self.sessions.pop(sid, None)
        if meta is None:
            raise ApiError(404, "upload session not found")
        data = b"".join([*meta.get("_chunks", []), data])
        return self.add_file(data, meta.get("mimeType") or "application/octet-stream",
                             meta.get("displayName"), base_url, count=True)

    def add_file(self, data: bytes, mime: str, display: str | None, base_url: str,
                 count: bool = False) -> dict:
        fid = uuid.uuid4().hex[:16]
        now = time.time()
        meta = {"name": f"files/{fid}", "mimeType": mime, "sizeBytes": str(len(data)),
                "createTime": _iso(now), "updateTime": _iso(now),
                "expirationTime": _iso(now + self.file_ttl_s),
                "sha256Hash": base64.b64encode(hashlib.sha256(data).digest()).decode(),
                "uri": f"{base_url}/v1beta/files/{fid}", "state": "ACTIVE", "source": "UPLOADED"}
        if display:
            meta["displayName"] = display
        with self.lock:
            self.files[fid] = {"meta": meta, "data": data, "expires": now + self.file_ttl_s}
            self.counts["uploads"] += int(count)
        return meta

    def file(self, fid: str) -> dict:
        """A live file; an expired one is deleted (as Gemini does after 48 hours)."""
        fid = fid.removeprefix("files/").split(":", 1)[0]
        with self.lock:
            f = self.files.get(fid)
            if f is not None and f["expires"] <= time.time():
                del self.files[fid]
                f = None
        if f is None:
            raise ApiError(404, f"File files/{fid} not found or expired.")
        return f

    def delete_file(self, fid: str) -> None:
        self.file(fid)
        with self.lock:
            self.files.pop(fid.removeprefix("files/"), None)

    def inline_files(self, request: dict) -> dict:
        """The request with each fileData part replaced by its bytes (403: gone)."""
        for content in request.get("contents") or []:
            for i, part in enumerate((content or {}).get("parts") or []):
                ref = part.get("fileData") or part.get("file_data") if isinstance(part, dict) else None
                if not ref:
                    continue
                uri = str(ref.get("fileUri") or ref.get("file_uri") or "")
                fid = uri.rstrip("/").rsplit("/", 1)[-1]
                try:
                    f = self.file(fid)
                except ApiError:
                    raise ApiError(403, f"You do not have permission to access the File {fid} "
                                        "or it may not exist.") from None
                content["parts"][i] = {"inlineData": {
                    "mimeType": ref.get("mimeType") or f["meta"]["mimeType"],
                    "data": base64.b64encode(f["data"]).decode()}}
        return request

    # --- batches -------------------------------------------------------------------------
    def create_batch(self, model: str, body: dict, base_url: str,
                     answer: Callable[[dict], dict]) -> dict:
        batch = body.get("batch") or {}
        source = batch.get("inputConfig") or {}
        if source.get("fileName"):
            data = self.file(source["fileName"])["data"]
            try:
                lines = [json.loads(x) for x in data.decode().splitlines() if x.strip()]
            except ValueError:
                raise ApiError(400, "the input file is not JSONL") from None
            inline = False
        elif (source.get("requests") or {}).get("requests") is not None:
            lines = [{"key": (r.get("metadata") or {}).get("key", str(i)), "request": r.get("request"),
                      "metadata": r.get("metadata")}
                     for i, r in enumerate(source["requests"]["requests"])]
            inline = True
        else:
            raise ApiError(400, "batch.input_config: fileName or requests is required")
        bid = uuid.uuid4().hex[:16]
        now = time.time()
        op = {"name": f"batches/{bid}", "metadata": {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch",
            "model": f"models/{model}", "displayName": batch.get("displayName") or bid,
            "state": "BATCH_STATE_PENDING", "createTime": _iso(now), "updateTime": _iso(now),
            "batchStats": {"requestCount": str(len(lines))}}}
        with self.lock:
            self.batches[bid] = op
            self.counts["batches_created"] += 1
        threading.Thread(target=self._process, args=(bid, lines, inline, base_url, answer),
                         daemon=True).start()
        return json.loads(json.dumps(op))

    def batch(self, bid: str) -> dict:
        with self.lock:
            op = self.batches.get(bid.removeprefix("batches/"))
            if op is None:
                raise ApiError(404, f"batches/{bid} not found")
            return json.loads(json.dumps(op))

    def list_batches(self) -> dict:
        with self.lock:
            return {"operations": [json.loads(json.dumps(op)) for op in self.batches.values()]}

    def _set(self, bid: str, state: str, **extra) -> None:
        with self.lock:
            op = self.batches[bid]
            op["metadata"] |= {"state": state, "updateTime": _iso(time.time())} | extra
            if state not in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING"):
                op["done"] = True
                op["metadata"]["endTime"] = op["metadata"]["updateTime"]

    def _process(self, bid: str, lines: list[dict], inline: bool, base_url: str,
                 answer: Callable[[dict], dict]) -> None:
        if self.batch_delay_s > self.batch_ttl_s:  # not run in time: Gemini expires it
            time.sleep(self.batch_ttl_s)
            self._set(bid, "BATCH_STATE_EXPIRED")
            return
        time.sleep(self.batch_delay_s)
        self._set(bid, "BATCH_STATE_RUNNING")
        out, failed = [], 0
        for line in lines:
            key = line.get("key")
            with self.lock:
                fail = self.rng.random() < self.line_failures
            try:
                if fail:
                    raise ApiError(500, "injected batch line failure")
                if not isinstance(line.get("request"), dict):
                    raise ApiError(400, "line has no request object")
                response = answer(self.inline_files(line["request"]))
                out.append({"key": key, "response": response})
            except ApiError as exc:
                failed += 1
                out.append({"key": key, "error": {"code": exc.code, "message": str(exc)}})
            except Exception as exc:  # noqa: BLE001 - a model bug fails the line, not the job
                failed += 1
                out.append({"key": key, "error": {"code": 500, "message": type(exc).__name__}})
        with self.lock:
            self.counts["batch_lines"] += len(lines)
            self.counts["batch_lines_failed"] += failed
        stats = {"requestCount": str(len(lines)), "successfulRequestCount": str(len(lines) - failed),
                 "failedRequestCount": str(failed)}
        if inline:
            output = {"inlinedResponses": {"inlinedResponses": [
                {"metadata": {"key": o["key"]}} | {k: v for k, v in o.items() if k != "key"}
                for o in out]}}
        else:
            data = "".join(json.dumps(o) + "\n" for o in out).encode()
            meta = self.add_file(data, "application/jsonl", f"{bid}-output", base_url)
            output = {"responsesFile": meta["name"]}
        self._set(bid, "BATCH_STATE_SUCCEEDED", output=output, batchStats=stats)
