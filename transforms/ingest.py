"""The ingest stage: listed files to Examples or Rejected rows, one each, never a crash.

Pure: no engine. `hash_file` and `pick_canonical` run before the stage to drop exact
duplicates; `IngestStage` reads, sniffs and decodes the canonical files.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from schemas import storage
from schemas.records import EXAMPLE, REJECTED, Modality, Reason, empty_part, to_table
from schemas.spec import PreprocessingSpec
from transforms.image import decode_image
from transforms.sniff import DecodeError, sniff
from transforms.stage import BaseStage
from transforms.text import decode_text
from transforms.tokenizer import TextTokenizer

MiB = 1 << 20


def hash_file(uri: str) -> dict:
    """{uri, size, id}: id is the sha256 hex of the file's bytes."""
    data = storage.read_bytes(uri)
    return {"uri": uri, "size": len(data), "id": hashlib.sha256(data).hexdigest()}


def pick_canonical(hashes: list[dict]) -> tuple[list[dict], list[dict]]:
    """Per content id keep the smallest uri; the others become {uri, duplicate_of}.

    Empty files are never deduplicated: each stays canonical so the stage rejects it.
    """
    best: dict[str, dict] = {}
    canonical: list[dict] = []
    for h in hashes:
        if not h.get("size"):
            canonical.append(h)
        elif h["id"] not in best or h["uri"] < best[h["id"]]["uri"]:
            best[h["id"]] = h
    canonical.extend(best.values())
    kept = {id(h) for h in canonical}
    duplicates = [{"uri": h["uri"], "duplicate_of": h["id"]} for h in hashes if id(h) not in kept]
    return sorted(canonical, key=lambda h: h["uri"]), sorted(duplicates, key=lambda d: d["uri"])


class IngestConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    spec: PreprocessingSpec
    max_file_bytes: int = 256 * MiB


class IngestStage(BaseStage):
    name: ClassVar[str] = "ingest"
    input_schema: ClassVar[pa.Schema] = pa.schema([("uri", pa.string()), ("id", pa.string())])
    output_schemas: ClassVar[dict[str, pa.Schema]] = {"examples": EXAMPLE, "rejected": REJECTED}

    def __init__(self, config: IngestConfig):
        self.config = config
        self._tokenizer: TextTokenizer | None = None

    def setup(self) -> None:
        if self.config.spec.tokenizer_json and self._tokenizer is None:
            self._tokenizer = TextTokenizer.from_json(self.config.spec.tokenizer_json)

    def process_batch(self, batch: pa.RecordBatch | pa.Table) -> dict[str, pa.Table]:
        self.setup()
        examples, rejected = [], []
        for uri, file_id in zip(batch.column("uri").to_pylist(), batch.column("id").to_pylist(), strict=False):
            try:
                examples.append(self._process(uri, file_id))
            except DecodeError as e:
                rejected.append(self._reject(uri, file_id, e.reason, e.message))
            except Exception as e:  # noqa: BLE001 - any file must end as a row, not a crash
                rejected.append(self._reject(uri, file_id, Reason.DECODE_ERROR,
                                             f"{type(e).__name__}: {e}"))
        return {"examples": to_table(examples, EXAMPLE), "rejected": to_table(rejected, REJECTED)}

    def _reject(self, uri: str, file_id: str | None, reason: Reason, message: str) -> dict:
        return {"uri": uri, "stage": self.name, "reason": Reason(reason).value,
                "message": message, "record_id": file_id}

    def _process(self, uri: str, file_id: str) -> dict:
        spec, limit = self.config.spec, self.config.max_file_bytes
        try:
            data = storage.read_bytes(uri, limit=limit + 1)
        except Exception as e:  # noqa: BLE001
            raise DecodeError(Reason.UNREADABLE, f"{type(e).__name__}: {e}") from None
        if len(data) > limit:
            raise DecodeError(Reason.TOO_LARGE, f"file is larger than {limit} bytes")
        if not data:
            raise DecodeError(Reason.EMPTY, "empty file")
        if hashlib.sha256(data).hexdigest() != file_id:
            raise DecodeError(Reason.DECODE_ERROR, "content changed during ingest (hash mismatch)")
        modality, mime = sniff(data, uri)
        if modality == Modality.IMAGE:
            part = decode_image(data, spec)
            mime = part["mime"] or mime
        elif modality == Modality.TEXT:
            text = decode_text(data, spec)
            part = empty_part(Modality.TEXT.value)
            part["text"] = text
            if self._tokenizer is not None:
                part["tokens"] = self._tokenizer.encode(text, spec.max_text_tokens)
        elif modality is None:
            raise DecodeError(Reason.UNSUPPORTED_FORMAT, "unrecognized content type")
        else:
            raise DecodeError(Reason.UNSUPPORTED_FORMAT,
                              f"{modality.value} ({mime}) is not supported by ingest yet")
        part.update(source_uri=uri, mime=mime)
        return {"id": file_id, "modality": modality.value, "parts": [part],
                "source_uris": [uri], "mime": mime, "size_bytes": len(data), "metadata": "{}"}
