"""Media by reference: what does not fit a request inline goes as a file URI.

Gemini refuses a request with more than about 20 MB of inline data, so each request is
sized before it is sent: parts go inline while the request stays under
`LLMConfig.inline_limit_bytes` (base64 counted, as it travels); the largest others go by
reference. On the `gemini` backend (and the offline server, which speaks the same Files
API) a part is uploaded through the Files API once per content hash: the upload is
recorded next to the response cache and reused until shortly before it expires (Gemini
keeps uploads 48 hours), then uploaded again. On `vertex` a part is its Example's own
`gs://` source, else a copy staged under the run's prefix (deleted with the run's work
folder). A part that cannot be referenced makes the call Unsendable (a Rejected row):
nothing over the limit is ever sent inline.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import math
import threading

import tenacity
from google.genai import types
from loom.schemas import storage
from loom.schemas.records import Reason
from loom.synth.calls import Unsendable

EXPIRY_MARGIN = dt.timedelta(hours=1)  # re-upload a file this close to its expiry


@dataclasses.dataclass(frozen=True)
class Media:
    """A source file's bytes, not yet placed: inline or by reference, per request."""

    data: bytes
    mime: str
    source_uri: str | None = None  # the Example's own file (vertex sends a gs:// one as is)


def inline_size(part: object) -> int:
    """Bytes a part adds to a request body when sent inline (base64 for bytes)."""
    if isinstance(part, Media):
        return 4 * math.ceil(len(part.data) / 3)
    if isinstance(part, types.Part):
        if part.inline_data is not None and part.inline_data.data is not None:
            return 4 * math.ceil(len(part.inline_data.data) / 3)
        if part.text is not None:
            return len(part.text.encode("utf-8"))
    return 0


def _blob(part: object) -> Media | None:
    if isinstance(part, Media):
        return part
    if isinstance(part, types.Part) and part.inline_data is not None and part.inline_data.data:
        return Media(part.inline_data.data, part.inline_data.mime_type or "")
    return None


def as_part(part: object) -> types.Part:
    return (types.Part.from_bytes(data=part.data, mime_type=part.mime)
            if isinstance(part, Media) else part)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class References:
    """Places one request's parts: inline under the limit, the largest by reference.

    `client` is the run's google-genai client; `registry_uri` holds one JSON record per
    uploaded content hash; `staging_uri` is where vertex copies non-gs:// sources."""

    def __init__(self, client, backend: str, limit: int, registry_uri: str,
                 staging_uri: str | None = None):
        self.client, self.backend, self.limit = client, backend, limit
        self.registry_uri, self.staging_uri = registry_uri, staging_uri
        self.uploads = 0  # Files API uploads this instance made (re-uploads included)
        self._memo: dict[str, dict] = {}
        self._lock = threading.Lock()

    def place(self, parts: list, prompt: str = "") -> list[types.Part]:
        """The parts as sent. Raises Unsendable when the request cannot fit the limit."""
        sizes = [inline_size(p) for p in parts]
        total = len(prompt.encode("utf-8")) + sum(sizes)
        out = list(parts)
        for i in sorted(range(len(parts)), key=lambda j: -sizes[j]):
            if total <= self.limit:
                break
            media = _blob(parts[i])
            if media is None:
                continue
            out[i] = self.reference(media)
            total -= sizes[i]
        if total > self.limit:
            raise Unsendable(Reason.TOO_LARGE, f"request text alone is {total} bytes, over the "
                             f"{self.limit}-byte inline limit")
        return [as_part(p) for p in out]

    def reference(self, media: Media) -> types.Part:
        if self.backend == "vertex":
            return types.Part.from_uri(file_uri=self._gcs_uri(media), mime_type=media.mime)
        record = self._uploaded(media)
        return types.Part.from_uri(file_uri=record["uri"], mime_type=record["mime"])

    def _gcs_uri(self, media: Media) -> str:
        if media.source_uri and media.source_uri.startswith("gs://"):
            return media.source_uri
        if not (self.staging_uri or "").startswith("gs://"):
            raise Unsendable(Reason.TOO_LARGE, f"a {media.mime} part of {len(media.data)} bytes "
                             "is over the inline limit and Vertex AI reads references only "
                             "from gs:// (the source is not on gs:// and the run's output is "
                             "not either)")
        digest = hashlib.sha256(media.data).hexdigest()
        uri = storage.join(self.staging_uri, digest)
        if not storage.exists(uri):
            storage.write_bytes(uri, media.data)
        return uri

    def _uploaded(self, media: Media) -> dict:
        """The Files API record of these bytes: the last upload unless (nearly) expired."""
        digest = hashlib.sha256(media.data).hexdigest()
        path = storage.join(self.registry_uri, f"{digest}.json")
        with self._lock:
            record = self._memo.get(digest)
        if record is None and storage.exists(path):
            try:
                record = json.loads(storage.read_bytes(path))
            except ValueError:
                record = None
        if record is not None and dt.datetime.fromisoformat(record["expires"]) > _now() + EXPIRY_MARGIN:
            with self._lock:
                self._memo[digest] = record
            return record
        record = self._upload(media, digest)
        storage.write_atomic(path, json.dumps(record).encode())
        with self._lock:
            self._memo[digest] = record
            self.uploads += 1
        return record

    def _upload(self, media: Media, digest: str) -> dict:
        try:
            f = self.client.files.upload(file=io.BytesIO(media.data), config=types.UploadFileConfig(
                mime_type=media.mime, display_name=f"loom-{digest[:16]}"))
            f = self._active(f)
        except Unsendable:
            raise
        except Exception as exc:  # noqa: BLE001 - an upload that failed is a Rejected row
            raise Unsendable(Reason.TOO_LARGE, f"a {media.mime} part of {len(media.data)} bytes "
                             f"is over the inline limit and its upload failed: "
                             f"{type(exc).__name__}: {str(exc)[:300]}") from None
        expires = f.expiration_time or (_now() + dt.timedelta(hours=47))
        return {"name": f.name, "uri": f.uri, "mime": f.mime_type or media.mime,
                "expires": expires.isoformat(), "sha256": digest}

    def _active(self, f: types.File) -> types.File:
        """Wait (with backoff) while Gemini processes an upload (video: seconds)."""
        @tenacity.retry(stop=tenacity.stop_after_delay(600), reraise=True,
                        wait=tenacity.wait_exponential(multiplier=0.5, max=10),
                        retry=tenacity.retry_if_result(
                            lambda x: getattr(x.state, "value", x.state) == "PROCESSING"))
        def poll() -> types.File:
            return self.client.files.get(name=f.name)

        state = getattr(f.state, "value", f.state)
        if state == "PROCESSING":
            f = poll()
            state = getattr(f.state, "value", f.state)
        if state == "FAILED":
            raise Unsendable(Reason.UNSUPPORTED_FORMAT, f"the Files API could not process "
                             f"{f.name}: {f.error}")
        return f
