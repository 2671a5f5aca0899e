"""Interleaved records from JSONL or Parquet manifests: parse, resolve references, build.

A record is {"id"?: str, "parts": [{"text": str} | {"image"|"audio"|"video"|"pdf": ref}]}.
References are resolved against the manifest's folder and confined to allowed roots:
a manifest is untrusted input, so it must not be able to read /etc/passwd, reach the
network, or climb out of its dataset through `..` or a symlink.

This module knows no decoder: `build_interleaved` takes a kind -> callable mapping.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import posixpath
import re
import stat
from collections.abc import Callable, Mapping
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
from loom.schemas import storage
from loom.schemas.records import Modality, Reason, empty_part
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.remote import RemoteConfig, check_remote, fetch
from loom.transforms.sniff import DecodeError
from loom.transforms.text import clean_text

REF_KINDS = ("image", "audio", "video", "pdf")
PART_KINDS = ("text", *REF_KINDS)
_ID_DOMAIN = b"loom/interleaved/v1\x00"  # never equal to a single asset's sha256 of bytes
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")

Decoder = Callable[[bytes, PreprocessingSpec], "dict | list[dict]"]


@dataclasses.dataclass(frozen=True)
class RecordError:
    """A manifest record that cannot be used; returned by parse_manifest, never raised."""

    record_index: int
    reason: Reason
    message: str


# ---------------------------------------------------------------------------- parsing


def _normalize(obj, index: int) -> dict:
    """A validated record {"index", "id", "parts": [{kind: value}]}; ValueError if malformed."""
    if not isinstance(obj, dict):
        raise ValueError(f"a record must be an object, got {type(obj).__name__}")
    rid = obj.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ValueError(f"'id' must be a string, got {type(rid).__name__}")
    parts = obj.get("parts")
    if isinstance(parts, str):  # Parquet manifests may carry parts as a JSON string
        try:
            parts = json.loads(parts)
        except json.JSONDecodeError as e:
            raise ValueError(f"'parts' is not valid JSON: {e}") from None
    if not isinstance(parts, list) or not parts:
        raise ValueError("'parts' must be a non-empty list")
    out = []
    for j, part in enumerate(parts):
        if not isinstance(part, dict):
            raise ValueError(f"part {j} must be an object, got {type(part).__name__}")
        present = {k: v for k, v in part.items() if v is not None}  # Parquet structs: nulls
        if len(present) != 1 or next(iter(present)) not in PART_KINDS:
            raise ValueError(f"part {j} must have exactly one of {', '.join(PART_KINDS)}; "
                             f"got keys {sorted(present)}")
        (kind, value), = present.items()
        if not isinstance(value, str):
            raise ValueError(f"part {j} {kind!r} must be a string, got {type(value).__name__}")
        if kind != "text" and (not value.strip() or "\x00" in value):
            raise ValueError(f"part {j} has an empty or invalid {kind} reference")
        out.append({kind: value})
    return {"index": index, "id": rid, "parts": out}


def _parse_jsonl(data: bytes) -> list[dict | RecordError]:
    out: list[dict | RecordError] = []
    for i, line in enumerate(data.split(b"\n")):  # index = 0-based line number
        if not line.strip():
            continue
        try:
            out.append(_normalize(json.loads(line.decode("utf-8-sig")), i))
        except UnicodeDecodeError as e:
            out.append(RecordError(i, Reason.BAD_RECORD, f"line {i + 1}: not UTF-8: {e}"))
        except (json.JSONDecodeError, RecursionError) as e:
            out.append(RecordError(i, Reason.BAD_RECORD, f"line {i + 1}: invalid JSON: {e}"))
        except ValueError as e:
            out.append(RecordError(i, Reason.BAD_RECORD, f"line {i + 1}: {e}"))
    return out


def _parse_parquet(data: bytes) -> list[dict | RecordError]:
    try:
        rows = pq.read_table(pa.BufferReader(data)).to_pylist()
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DecodeError(Reason.DECODE_ERROR, f"unreadable Parquet manifest: {e}") from None
    out: list[dict | RecordError] = []
    for i, row in enumerate(rows):  # index = 0-based row number
        try:
            out.append(_normalize(row, i))
        except ValueError as e:
            out.append(RecordError(i, Reason.BAD_RECORD, f"row {i}: {e}"))
    return out


def parse_manifest(data: bytes, fmt: str, manifest_uri: str) -> list[dict | RecordError]:
    """Records of a manifest, in order; a malformed record becomes a RecordError.

    A record is {"index": int, "id": str | None, "parts": [{kind: text-or-ref}]}, where
    index is the 0-based line (JSONL) or row (Parquet) number. Raises DecodeError only
    when the manifest as a whole is unusable (empty, unreadable Parquet, unknown format).
    """
    if not data:
        raise DecodeError(Reason.EMPTY, f"empty manifest {manifest_uri}")
    if fmt == "jsonl":
        return _parse_jsonl(data)
    if fmt == "parquet":
        return _parse_parquet(data)
    raise DecodeError(Reason.UNSUPPORTED_FORMAT, f"unknown manifest format {fmt!r}")


# ------------------------------------------------------------------ reference resolution


def _forbid(ref: str, why: str) -> DecodeError:
    return DecodeError(Reason.FORBIDDEN_REFERENCE, f"reference {ref!r} is forbidden: {why}")


def _gs_split(uri: str) -> tuple[str, str | None]:
    """gs://bucket/a/./b/../c -> (bucket, "a/c"); key None when `..` climbs out of the bucket."""
    bucket, _, key = uri[len("gs://"):].partition("/")
    stack: list[str] = []
    for seg in key.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if not stack:
                return bucket, None
            stack.pop()
        else:
            stack.append(seg)
    return bucket, "/".join(stack)


def _gs_within(bucket: str, key: str, root: str) -> bool:
    rb, rk = _gs_split(root)
    return rb == bucket and rk is not None and (not rk or key == rk or key.startswith(rk + "/"))


def _local_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def _resolve_gs(ref: str, manifest_uri: str, roots: list[str]) -> str:
    scheme = _SCHEME.match(ref)
    if scheme:
        if not ref.startswith("gs://"):
            raise _forbid(ref, f"scheme {scheme.group(1)}: (gs:// manifests allow gs:// only)")
        target = ref
    elif ref.startswith("/"):
        raise _forbid(ref, "absolute local path in a gs:// manifest")
    else:
        target = posixpath.dirname(manifest_uri) + "/" + ref
    bucket, key = _gs_split(target)
    if key is None or not bucket:
        raise _forbid(ref, "climbs out of its bucket")
    if not any(r.startswith("gs://") and _gs_within(bucket, key, r) for r in roots):
        raise _forbid(ref, f"outside the allowed roots {roots}")
    return f"gs://{bucket}/{key}"


def _resolve_local(ref: str, manifest_uri: str, roots: list[str]) -> str:
    scheme = _SCHEME.match(ref)
    if scheme:
        if scheme.group(1).lower() != "file":
            raise _forbid(ref, f"scheme {scheme.group(1)}: (local manifests allow paths "
                               "and file:// only)")
        parts = urlsplit(ref)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise _forbid(ref, "file:// URI with a host, query or fragment")
        ref = unquote(parts.path)
        if not ref.startswith("/"):
            raise _forbid(ref, "file:// URI without an absolute path")
    manifest_dir = os.path.dirname(os.path.abspath(_local_path(manifest_uri)))
    target = os.path.normpath(os.path.join(manifest_dir, ref))
    local_roots = [os.path.normpath(os.path.abspath(_local_path(r)))
                   for r in roots if not storage.is_remote(r)]
    if not any(_local_within(target, r) for r in local_roots):
        raise _forbid(ref, f"outside the allowed roots {roots}")
    real = os.path.realpath(target)  # symlinks: the file actually read must stay inside too
    if not any(_local_within(real, os.path.realpath(r)) for r in local_roots):
        raise _forbid(ref, "a symlink on its path leads outside the allowed roots")
    return real


def resolve_reference(ref: str, manifest_uri: str, allowed_roots: list[str],
                      remote: RemoteConfig | None = None) -> str:
    """The absolute URI a manifest reference points to, or DecodeError(forbidden_reference).

    Relative refs resolve against the manifest's folder. Local manifests accept paths and
    file:// URIs; gs:// manifests accept relative refs and gs:// URIs; any other scheme
    (http, ftp, data, ...) is forbidden, as is any target outside `allowed_roots` (after
    normalizing `..` and, locally, resolving symlinks; the symlink-free path is returned).
    With no roots given, the manifest's own folder is the only root. An http(s) reference
    passes only when `remote.allowed_hosts` names its host (see transforms.remote; the
    address is checked when it is fetched).
    """
    if not isinstance(ref, str) or not ref.strip() or "\x00" in ref:
        raise DecodeError(Reason.BAD_RECORD, f"invalid reference {ref!r}")
    scheme = _SCHEME.match(ref)
    if scheme and scheme.group(1).lower() in ("http", "https") and remote is not None \
            and remote.allowed_hosts:
        check_remote(ref, remote)
        return ref
    roots = list(allowed_roots) or [posixpath.dirname(manifest_uri)
                                    if storage.is_remote(manifest_uri)
                                    else os.path.dirname(os.path.abspath(
                                        _local_path(manifest_uri)))]
    if storage.is_remote(manifest_uri):
        return _resolve_gs(ref, manifest_uri, roots)
    return _resolve_local(ref, manifest_uri, roots)


def _require_regular(uri: str, label: str) -> None:
    """A local reference is read only if it is a regular file: opening a fifo blocks the
    reader until the decode timeout, a device or a socket is no file at all. Checked on
    the resolved path, before any open, as listed files are."""
    if storage.is_remote(uri):
        return
    try:
        mode = os.stat(_local_path(uri)).st_mode
    except FileNotFoundError:
        raise
    except OSError as e:
        raise DecodeError(Reason.UNREADABLE, f"{label}: {e}") from None
    if not stat.S_ISREG(mode):
        kind = ("folder" if stat.S_ISDIR(mode) else "fifo" if stat.S_ISFIFO(mode)
                else "socket" if stat.S_ISSOCK(mode) else "device")
        raise DecodeError(Reason.FORBIDDEN_REFERENCE, f"{label}: not a regular file: a {kind}")


# --------------------------------------------------------------------------- building


def record_id(parts_bytes: list[tuple[str, bytes]]) -> str:
    """sha256 over the ordered (kind, content) parts, each kind and length-prefixed."""
    h = hashlib.sha256(_ID_DOMAIN)
    for kind, data in parts_bytes:
        k = kind.encode("utf-8")
        h.update(len(k).to_bytes(4, "big") + k + len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def _label(record: dict) -> str:
    rid = record.get("id")
    return f"record {record.get('index', 0)}" + (f" (id {rid!r})" if rid else "")


def build_interleaved(record: dict, manifest_uri: str, allowed_roots: list[str],
                      spec: PreprocessingSpec, decoders: Mapping[str, Decoder],
                      remote: RemoteConfig | None = None) -> dict:
    """A record's parts decoded in order: {"id", "parts", "source_uris", "metadata"}.

    Text parts are cleaned inline (kind "text"; ones that clean to nothing are dropped);
    a referenced file goes through `decoders[kind](bytes, spec)`, which returns a part
    dict or a list of them (e.g. a PDF's pages). "id" is `record_id` over the record's
    raw content (text as UTF-8, referenced files' bytes), so it does not depend on the
    spec. Raises DecodeError: forbidden_reference, missing_reference, bad_record, empty,
    unsupported_format, or the decoder's own reason (message prefixed with the record).
    """
    try:  # idempotent on parse_manifest's output; validates a hand-made record
        index = record.get("index", 0)
        if not isinstance(index, int):
            raise ValueError(f"'index' must be an int, got {type(index).__name__}")
        record = _normalize(record, index)
    except (ValueError, AttributeError) as e:
        raise DecodeError(Reason.BAD_RECORD, f"malformed record: {e}") from None
    label = _label(record)
    sources = [f"{manifest_uri}#{record['index']}"]
    parts: list[dict] = []
    content: list[tuple[str, bytes]] = []
    for part in record["parts"]:
        (kind, value), = part.items()
        if kind == "text":
            content.append(("text", value.encode("utf-8", errors="surrogatepass")))
            text = clean_text(value, spec.max_text_chars)
            if text:
                p = empty_part(Modality.TEXT.value)
                p["text"] = text
                parts.append(p)
            continue
        try:
            uri = resolve_reference(value, manifest_uri, allowed_roots, remote)
            data = fetch(uri, remote) if remote is not None and uri.startswith("http") else None
        except DecodeError as e:
            raise DecodeError(e.reason, f"{label}: {e.message}") from None
        try:
            if data is None:
                if not storage.exists(uri):
                    raise FileNotFoundError(uri)
                _require_regular(uri, f"{label}: {kind} {value!r}")
                data = storage.read_bytes(uri)
        except FileNotFoundError:
            raise DecodeError(Reason.MISSING_REFERENCE,
                              f"{label}: referenced {kind} {value!r} not found ({uri})") from None
        except OSError as e:
            raise DecodeError(Reason.UNREADABLE,
                              f"{label}: cannot read {value!r} ({uri}): {e}") from None
        content.append((kind, data))
        decoder = decoders.get(kind)
        if decoder is None:
            raise DecodeError(Reason.UNSUPPORTED_FORMAT, f"{label}: no decoder for {kind} parts")
        try:
            decoded = decoder(data, spec)
        except DecodeError as e:
            raise DecodeError(e.reason, f"{label}: {kind} {value!r}: {e.message}") from None
        for p in decoded if isinstance(decoded, list) else [decoded]:
            p = dict(p)
            p["source_uri"] = p.get("source_uri") or uri
            parts.append(p)
        if uri not in sources:
            sources.append(uri)
    if not parts:
        raise DecodeError(Reason.EMPTY, f"{label}: no content left after cleaning")
    return {"id": record_id(content), "parts": parts, "source_uris": sources,
            "metadata": {"record_id": record.get("id"), "manifest": manifest_uri,
                         "index": record["index"]}}
