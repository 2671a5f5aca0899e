"""The ingest stage: listed files to Examples or Rejected rows, one each, never a crash.

Pure: no engine. `hash_file` and `pick_canonical` run before the stage to drop exact
duplicates; `IngestStage` reads, sniffs and decodes the canonical files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
from typing import ClassVar, Literal

import pyarrow as pa
from loom.schemas import storage
from loom.schemas.records import (
    EXAMPLE,
    INGEST_FILES,
    INGEST_FILES_TABLE,
    INGEST_WORK,
    REJECTED,
    Modality,
    Reason,
    empty_part,
    to_table,
)
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.archives import (
    ArchiveLimits,
    Sample,
    archive_kind,
    build_sample,
    inflate,
    iter_samples,
)
from loom.transforms.audio import decode_audio
from loom.transforms.image import decode_image, decode_image_frames
from loom.transforms.isolation import IsolatedDecoder, installed
from loom.transforms.neardup import image_signature, signature
from loom.transforms.pdf import decode_pdf
from loom.transforms.pixels import part_frames
from loom.transforms.records import RecordError, build_interleaved, parse_manifest
from loom.transforms.remote import RemoteConfig
from loom.transforms.sniff import COMPRESSED, DecodeError, looks_like_text, sniff, stable_message
from loom.transforms.stage import BaseStage, Resources
from loom.transforms.text import decode_text, text_bytes_needed
from loom.transforms.tokenizer import TextTokenizer
from loom.transforms.video import decode_av
from pydantic import BaseModel, ConfigDict, Field
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

MiB = 1 << 20
_PACKED = frozenset(mime for _, mime in COMPRESSED)


def confine_listed(uri: str, roots: tuple[str, ...] | list[str] = ()) -> int | None:
    """A listed local file is read only if it is a regular file, inside `roots` once its
    symlinks are resolved: a link to ~/.config or /etc, a fifo (which would block the
    reader forever) or a device is `forbidden_reference`. gs:// objects pass.
    Returns the local file's size from that stat (None: remote, or gone)."""
    if storage.is_remote(uri):
        return None
    path = storage.absolute(uri)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None  # the read reports it
    if stat.S_ISLNK(st.st_mode):
        real = os.path.realpath(path)
        homes = [os.path.realpath(storage.absolute(r)) for r in roots if not storage.is_remote(r)]
        if homes and not any(real == h or real.startswith(h.rstrip(os.sep) + os.sep)
                             for h in homes):
            raise DecodeError(Reason.FORBIDDEN_REFERENCE, "a symlink leading outside the input")
        try:
            st = os.stat(path)
        except OSError as e:
            raise DecodeError(Reason.FORBIDDEN_REFERENCE, f"a dangling symlink: {e}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("folder (symlinked)" if stat.S_ISDIR(st.st_mode) else "fifo"
                if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode)
                else "device")
        raise DecodeError(Reason.FORBIDDEN_REFERENCE, f"not a regular file: a {kind}")
    return st.st_size


def file_size(uri: str) -> int | None:
    """The stored size from the file system's metadata (no read), None when unknown."""
    try:
        if not storage.is_remote(uri):
            return os.stat(storage.absolute(uri)).st_size
        fs, path = storage.resolve(uri)
        return fs.get_file_info(path).size
    except (OSError, ValueError):
        return None


_TOO_LARGE = "too_large:"


def too_large_id(uri: str) -> str:
    """The stand-in id of a file over the size cap: never hashed, never a duplicate."""
    return f"{_TOO_LARGE}{hashlib.sha256(uri.encode()).hexdigest()}"


STORAGE_ERROR = "unreadable-storage:"  # id prefix of a file storage would not give back


class _Unread(DecodeError):
    """A file rejected before (or instead of) its read, with the id it is listed under."""

    def __init__(self, reason: Reason, message: str, file_id: str, size: int):
        super().__init__(reason, message)
        self.file_id, self.size = file_id, size


def _transient(e: BaseException) -> bool:
    return isinstance(e, OSError) and not isinstance(
        e, FileNotFoundError | IsADirectoryError | NotADirectoryError | PermissionError)


@retry(retry=retry_if_exception(_transient), stop=stop_after_attempt(2),
       wait=wait_exponential(multiplier=0.5, max=4), reraise=True)
def _read_again(uri: str, limit: int) -> bytes:
    return storage.read_bytes(uri, limit=limit)


def _read_with_retries(uri: str, limit: int) -> bytes:
    """Transient storage errors are retried (3 tries in all); a file gone since the
    listing is not. The first try goes straight: tenacity costs ~0.5 ms a call."""
    try:
        return storage.read_bytes(uri, limit=limit)
    except OSError as e:
        if not _transient(e):
            raise
    return _read_again(uri, limit)


def hash_file(uri: str, with_modality: bool = False, roots: tuple[str, ...] = (),
              max_bytes: int | None = None) -> dict:
    """{uri, size, id}: id is the sha256 hex of the file's bytes.

    with_modality adds the sniffed modality, from the first bytes read (one streamed read).
    A file over `max_bytes` is not read at all: its size is enough to reject it, so
    its id is `too_large_id(uri)`. Raises DecodeError for what `confine_listed`
    refuses, before opening it.
    """
    confine_listed(uri, roots)
    if max_bytes is not None and (size := file_size(uri)) is not None and size > max_bytes:
        return {"uri": uri, "size": size, "id": too_large_id(uri)} | (
            {"modality": None} if with_modality else {})
    h, size, head = hashlib.sha256(), 0, b""
    for chunk in storage.iter_chunks(uri):  # streamed: a huge file is never held whole
        if len(head) < 4096:
            head += chunk[: 4096 - len(head)]
        h.update(chunk)
        size += len(chunk)
    out = {"uri": uri, "size": size, "id": h.hexdigest()}
    if with_modality:
        modality = sniff(head, uri)[0] if head else None
        out["modality"] = modality.value if modality else None
    return out


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
    # Roots a manifest's references may point into (the input prefix by default).
    allowed_roots: tuple[str, ...] = ()
    video_mode: Literal["smart", "full", "keyframes"] = "smart"
    # Decoders run in a persistent, memory-capped worker process with a per-file timeout.
    isolate: bool = True
    decode_timeout_s: float = Field(120.0, gt=0)
    decoder_memory_mb: int = Field(4096, ge=256)
    files_per_call: int = Field(16, ge=1)  # files per round trip to the isolated worker
    archive: ArchiveLimits = ArchiveLimits()
    # http(s) references in manifests: none unless a host is allowed (transforms/remote.py).
    remote: RemoteConfig = RemoteConfig()


def _is_manifest(uri: str, data: bytes) -> str | None:
    """Interleaved-record manifests: `*.jsonl` whose first record has `parts`, or Parquet."""
    name = uri.rsplit("/", 1)[-1].lower()
    if name.endswith(".parquet") and data[:4] == b"PAR1":
        return "parquet"
    if name.endswith(".jsonl"):
        first = data.lstrip()[:1]
        return "jsonl" if first == b"{" and b'"parts"' in data[:65536] else None
    return None


class IngestStage(BaseStage):
    name: ClassVar[str] = "ingest"
    # `id` null: the stage hashes the one read that also decodes (run_ingest); given, it is
    # checked. `size`: the listed size (over the cap: rejected unread). `prior_id`: the
    # file's id in the version reused from (same bytes: `reused`, not decoded). `dups`:
    # URIs of byte-identical copies known beforehand, named among the Example's sources.
    input_schema: ClassVar[pa.Schema] = INGEST_WORK
    output_schemas: ClassVar[dict[str, pa.Schema]] = {
        "examples": EXAMPLE, "rejected": REJECTED, INGEST_FILES_TABLE: INGEST_FILES}

    def __init__(self, config: IngestConfig):
        self.config = config
        self._isolated: IsolatedDecoder | None = None

    @staticmethod
    def resources_for(config: IngestConfig) -> Resources:
        """Half a CPU (decode waits on storage as much as it computes), and the decoder
        process's memory bound: a node runs no more decoders than its memory holds."""
        return Resources(num_cpus=0.5,
                         memory_mb=config.decoder_memory_mb if config.isolate else 0)

    def setup(self) -> None:
        if self.config.isolate and self._isolated is None:
            self._isolated = IsolatedDecoder(self.config.decode_timeout_s,
                                             self.config.decoder_memory_mb)
            self._isolated.install(_CONFIG_KEY, self.config)  # sent once, not per chunk
            self._isolated.start()

    def teardown(self) -> None:
        if self._isolated is not None:
            self._isolated.close()
            self._isolated = None

    def process_batch(self, batch: pa.RecordBatch | pa.Table) -> dict[str, pa.Table]:
        """Every input file ends as >= 1 Example, Rejected row(s), `reused` or `copy`.

        A PDF gives one Example per page; a manifest gives one per good record and a
        Rejected row (with `record_id`) per bad one: those count under `stats`. A file
        with the bytes of an earlier one in the batch is a `copy`: no rows, its URI among
        the first one's sources. The `_work/files` table says, per file, its id and where
        its rows are, so the driver resolves copies across batches without a second read.
        """
        return self._tables(_work_rows(batch))

    def process_read(self, files: list[tuple[str, bytes]]) -> dict[str, pa.Table]:
        """The same tables for files the caller has read already (ingest's tokenizer
        sample, read in the driver): decoded here, so not read a second time."""
        return self._tables([(uri, None, None, None, None, data) for uri, data in files])

    def _tables(self, rows: list[tuple]) -> dict[str, pa.Table]:
        self.setup()
        acc = _Accumulator()
        for row, outcome in zip(rows, self._outcomes(rows), strict=True):
            acc.add(row, outcome)
        return acc.tables()

    def _outcomes(self, rows: list[tuple]) -> list[tuple]:
        """Per file (kind, id, size, ...): see `process_files`.

        Isolated: files go to the worker a chunk at a time (one round trip per chunk, not
        per file), the next chunk queued while the current one decodes; a chunk that
        times out or kills the worker is retried file by file, so only the culprit is
        rejected, and the chunk queued behind it goes to the fresh worker.
        """
        if self._isolated is None:
            return process_files(rows, self.config)
        out: list[tuple] = []
        n = self.config.files_per_call
        chunks = [rows[i : i + n] for i in range(0, len(rows), n)]
        ticket = self._isolated.submit(_process_installed, chunks[0]) if chunks else None
        for j, chunk in enumerate(chunks):
            current = ticket
            if j + 1 < len(chunks):  # queued behind this one: no idle worker between chunks
                ticket = self._isolated.submit(_process_installed, chunks[j + 1])
            try:
                out.extend(self._isolated.collect(
                    current, _process_installed, chunk,
                    timeout_s=self.config.decode_timeout_s * len(chunk)))
                continue
            except DecodeError as e:
                if len(chunk) == 1:
                    out.append(_culprit(chunk[0], e, self.config))
                    continue
            for row in chunk:
                try:
                    out.extend(self._isolated.run(_process_installed, [row]))
                except DecodeError as e:
                    out.append(_culprit(row, e, self.config))
        return out


def _process_installed(rows: list[tuple]) -> list[tuple]:
    """`process_files` in the isolated worker, with the config the stage installed there."""
    return process_files(rows, installed(_CONFIG_KEY))


_CONFIG_KEY = "ingest.config"


def _work_rows(batch: pa.RecordBatch | pa.Table) -> list[tuple]:
    """(uri, id, size, prior_id, dups) per input row; absent columns are None."""
    names = batch.schema.names
    cols = [batch.column(c).to_pylist() if c in names else [None] * batch.num_rows
            for c in ("uri", "id", "size", "prior_id", "dups")]
    return list(zip(*cols, strict=True))


def _culprit(row: tuple, e: DecodeError, config: IngestConfig) -> tuple:
    """A file that hung or killed the decoder: rejected, with its id from a hash here
    (the worker's read died with it; the one file read twice, on this failure path)."""
    uri, file_id = row[0], row[1]
    if file_id is None and len(row) > 5:
        file_id, size = hashlib.sha256(row[5]).hexdigest(), len(row[5])
    elif file_id is None:
        try:
            h = hash_file(uri, roots=config.allowed_roots, max_bytes=config.max_file_bytes)
            file_id, size = h["id"], h["size"]
        except Exception:  # noqa: BLE001 - it is rejected either way
            file_id, size = f"unreadable:{uri}", -1
    else:
        size = row[2] if row[2] is not None else -1
    return ("reject", file_id, size, e.reason.value, e.message)


class _Accumulator:
    """The batch's output tables, built file by file; a later copy of an earlier file's
    bytes adds no rows, only its URI to that file's Examples' sources."""

    def __init__(self) -> None:
        self.examples: list[dict] = []
        self.rejected: list[dict] = []
        self.stats = {"accepted_files": 0, "rejected_files": 0, "rejected_records": 0}
        self.files: list[dict] = []
        self.first: dict[str, tuple[dict, list[dict]]] = {}  # id -> (file row, its Examples)

    def add(self, row: tuple, outcome: tuple) -> None:
        uri, given, _, _, dups = row[:5]
        kind, file_id, size = outcome[:3]
        rec = {"uri": uri, "id": file_id, "size": size, "state": "decoded", "examples": 0,
               "rejected": 0, "copies": [], "stats": "{}"}
        self.files.append(rec)
        hashed_here = given is None and size is not None and size > 0
        if hashed_here and (earlier := self.first.get(file_id)) is not None:
            rec["state"] = "copy"  # same bytes as an earlier file: no rows of its own
            first_rec, got = earlier
            first_rec["copies"].append(uri)
            for ex in got:
                if ex["source_uris"] and ex["source_uris"][0] == first_rec["uri"]:
                    ex["source_uris"] = [*ex["source_uris"], uri]
            return
        got: list[dict] = []
        if hashed_here:
            self.first[file_id] = (rec, got)
        if kind == "reused":
            rec["state"] = "reused"
            return
        stats: dict[str, int] = {}
        if kind == "reject":
            bad = [_reject(uri, file_id, Reason(outcome[3]), outcome[4])]
            stats["rejected_files"] = 1
        else:
            got.extend(outcome[3])
            bad = list(outcome[4])
            stats |= outcome[5] if len(outcome) > 5 else {}
            for ex in got:
                if dups and ex["source_uris"] and ex["source_uris"][0] == uri:
                    ex["source_uris"] = [uri, *dups]
            if got:
                stats["accepted_files"] = 1
                stats["rejected_records"] = len(bad)
                for ex in got:
                    key = f"examples.{ex['modality']}"
                    stats[key] = stats.get(key, 0) + 1
            elif bad:  # a manifest none of whose records is usable: the file is rejected
                bad.insert(0, _reject(uri, file_id, bad[0]["reason"],
                                      f"no usable record; first: {bad[0]['message']}"))
                stats |= {"rejected_records": len(bad) - 1, "rejected_files": 1}
            else:
                stats["rejected_files"] = 1
        for r in bad:  # rows per reason: counted here, not read back from the parts
            key = f"rejected.{r['reason']}"
            stats[key] = stats.get(key, 0) + 1
        self.examples.extend(got)
        self.rejected.extend(bad)
        rec |= {"examples": len(got), "rejected": len(bad), "stats": _stats_json(stats)}
        for k, v in stats.items():
            self.stats[k] = self.stats.get(k, 0) + v

    def tables(self) -> dict[str, pa.Table]:
        return {"examples": to_table(self.examples, EXAMPLE),
                "rejected": to_table(self.rejected, REJECTED),
                INGEST_FILES_TABLE: pa.Table.from_pylist(self.files, schema=INGEST_FILES),
                "stats": pa.Table.from_pylist([self.stats])}


def _stats_json(stats: dict) -> str:
    """json.dumps(stats, sort_keys=True), remembered: files mostly share a few."""
    key = tuple(sorted((k, type(v), v) for k, v in stats.items()))  # 1 and True differ
    if (out := _STATS_JSON.get(key)) is None:
        out = json.dumps(stats, sort_keys=True)
        if len(_STATS_JSON) < 1024:
            _STATS_JSON[key] = out
    return out


_STATS_JSON: dict[tuple, str] = {}


def process_files(rows: list[tuple], config: IngestConfig) -> list[tuple]:
    """Module-level, so the isolated worker can run it: every file gets an outcome,
    (kind, id, size, ...): ("ok", id, size, examples, bad records, stats), ("reject",
    id, size, reason, message), ("reused", id, size) or ("copy", id, size): a file with
    the bytes of an earlier row here is hashed (its one read) but not decoded.
    Rows are (uri, id | None[, listed size, prior id, dups, bytes already read])."""
    ingestor, seen = _ingestor(config), set()
    return [ingestor.outcome(*(*row, None, None)[:4], seen, row[5] if len(row) > 5 else None)
            for row in rows]


def _reject(uri: str, file_id: str | None, reason: Reason, message: str) -> dict:
    return {"uri": uri, "stage": IngestStage.name, "reason": Reason(reason).value,
            "message": stable_message(message), "record_id": file_id}


@functools.lru_cache(maxsize=4)
def _ingestor(config: IngestConfig) -> _FileIngestor:
    return _FileIngestor(config)


class _FileIngestor:
    def __init__(self, config: IngestConfig):
        self.config = config
        self._tokenizer = (TextTokenizer.from_json(config.spec.tokenizer_json)
                           if config.spec.tokenizer_json else None)

    def _tokenize(self, parts: list[dict]) -> list[dict]:
        for part in parts:
            if part.get("text") and self._tokenizer is not None:
                part["tokens"] = self._tokenizer.encode(part["text"], self.config.spec.max_text_tokens)
        return parts

    def _example(self, ex_id: str, modality: str, parts: list[dict], uris: list[str],
                 mime: str | None, size: int, metadata: dict, sig: bytes | None = None
                 ) -> dict:
        if sig is None:
            sig = signature(modality, parts, part_frames)
        return {"id": ex_id, "modality": modality, "parts": self._tokenize(parts),
                "source_uris": uris, "mime": mime, "size_bytes": size,
                "metadata": json.dumps(metadata, sort_keys=True) if metadata else "{}",
                # its own group until the driver joins near-duplicates across files
                "near_dup_group": ex_id, "near_dup_sig": sig}

    def outcome(self, uri: str, file_id: str | None, size: int | None, prior: str | None,
                seen: set[str], data: bytes | None = None) -> tuple:
        """One file's (kind, id, size, ...) for `process_files`, from its one read (or
        the bytes the caller read)."""
        given = file_id is not None  # the caller's id: its rows are canonical already
        try:
            if data is None:
                file_id, n, data = self.read(uri, file_id, size)
            else:
                file_id, n = hashlib.sha256(data).hexdigest(), len(data)
        except _Unread as e:
            return ("reject", e.file_id, e.size, e.reason.value, e.message)
        if not given and n > 0 and file_id in seen:
            return ("copy", file_id, n)
        if not given and n > 0:
            seen.add(file_id)
        if prior is not None and prior == file_id:
            return ("reused", file_id, n)
        return self.decoded(uri, file_id, data)

    def decoded(self, uri: str, file_id: str, data: bytes) -> tuple:
        """("ok", id, size, ...) or ("reject", id, size, reason, message) for read bytes."""
        n = len(data)
        try:
            return ("ok", file_id, n, *self.decode(uri, file_id, data))
        except DecodeError as e:
            return ("reject", file_id, n, e.reason.value, e.message)
        except MemoryError:
            return ("reject", file_id, n, Reason.TOO_LARGE.value,
                    "decoder ran out of its memory bound")
        except Exception as e:  # noqa: BLE001 - any file must end as a row, not a crash
            return ("reject", file_id, n, Reason.DECODE_ERROR.value, f"{type(e).__name__}: {e}")

    def read(self, uri: str, file_id: str | None, listed: int | None) -> tuple[str, int, bytes]:
        """(id, size, bytes): the file's one read, hashed here. _Unread (with the stand-in
        id the FILES table keeps) when it is refused, over the cap or unreadable."""
        limit = self.config.max_file_bytes
        try:
            stat_size = confine_listed(uri, self.config.allowed_roots)
        except DecodeError as e:
            raise _Unread(e.reason, e.message, file_id or f"unreadable:{uri}", -1) from None
        # Rejected unread: over the cap by the listing, the caller's id, or (local: the
        # stat just taken) now; a gs:// object is not asked again (one request a file).
        size = listed if listed is not None else stat_size
        if (file_id or "").startswith(_TOO_LARGE) or (size is not None and size > limit):
            raise _Unread(Reason.TOO_LARGE, f"file of {size or 'more than ' + str(limit)} "
                          f"bytes is larger than {limit}", too_large_id(uri), size or -1)
        try:
            data = _read_with_retries(uri, limit + 1)
        except OSError as e:
            raise _Unread(Reason.UNREADABLE, f"{type(e).__name__}: {e}",
                          file_id or f"{STORAGE_ERROR}{uri}", -1) from None
        except Exception as e:  # noqa: BLE001
            raise _Unread(Reason.UNREADABLE, f"{type(e).__name__}: {e}",
                          file_id or f"unreadable:{uri}", -1) from None
        if len(data) > limit:
            raise _Unread(Reason.TOO_LARGE, f"file is larger than {limit} bytes",
                          too_large_id(uri), len(data))
        digest = hashlib.sha256(data).hexdigest()
        if file_id is not None and digest != file_id:
            raise _Unread(Reason.DECODE_ERROR, "content changed during ingest (hash mismatch)",
                          file_id, len(data))
        return digest, len(data), data

    def decode(self, uri: str, file_id: str, data: bytes) -> tuple[list[dict], list[dict], dict]:
        """One file's bytes -> (Examples, record-level Rejected rows, stats); raises
        DecodeError. stats counts an archive's members: `archive_members` =
        `archive_members_accepted` + `archive_members_rejected` (empty for other files)."""
        spec = self.config.spec
        if not data:
            raise DecodeError(Reason.EMPTY, "empty file")
        if fmt := _is_manifest(uri, data):
            return *self._manifest(uri, data, fmt), {}
        if kind := archive_kind(data):
            return self._archive(uri, data, kind)
        modality, mime = sniff(data, uri)
        meta: dict = {}
        if modality is None and mime in _PACKED:
            modality, mime, data, meta = self._inflate(data, mime)
        sig = None
        if modality == Modality.IMAGE:  # the near-dup hash from the pixels in hand
            part, frames = decode_image_frames(data, spec)
            parts, sig = [part], image_signature(frames)
            mime = parts[0]["mime"] or mime
        elif modality == Modality.TEXT:
            part = empty_part(Modality.TEXT.value)
            part["text"] = decode_text(data, spec)
            parts = [part]
        elif modality == Modality.AUDIO:
            part, meta = decode_audio(data, spec, mime)
            parts = [part]
        elif modality == Modality.VIDEO:  # a container with sound alone: an audio Example
            modality, parts, meta = decode_av(data, spec, self.config.video_mode, mime)
        elif modality == Modality.PAGE:
            return self._pdf(uri, file_id, data, mime), [], {}
        else:
            raise DecodeError(Reason.UNSUPPORTED_FORMAT, "unrecognized content type")
        for part in parts:
            part.update(source_uri=uri, mime=part.get("mime") or mime)
        return [self._example(file_id, modality.value, parts, [uri], mime, len(data), meta,
                              sig)], [], {}

    def _inflate(self, data: bytes, packed: str) -> tuple[Modality, str, bytes, dict]:
        """A gzip/xz/zstd/bzip2 file that is compressed text: (text, mime, the inflated
        head, metadata). Only what decode_text can use is inflated, under the archive
        caps; anything else compressed is `unsupported_format`."""
        want = text_bytes_needed(self.config.spec) + 1
        plain = inflate(data, self.config.archive, want)
        if not plain:
            raise DecodeError(Reason.EMPTY, f"{packed} stream with nothing inside")
        if archive_kind(plain) or not looks_like_text(plain):
            raise DecodeError(Reason.UNSUPPORTED_FORMAT,
                              f"{packed} stream of something other than text")
        return Modality.TEXT, "text/plain", plain, {"compression": packed}

    def _pdf(self, uri: str, file_id: str, data: bytes, mime: str | None) -> list[dict]:
        pages, total = decode_pdf(data, self.config.spec, file_id)
        out = []
        for page in pages:
            for part in page["parts"]:
                part.update(source_uri=uri)
            meta = page["metadata"] | {"pages_total": total,
                                       "pages_kept": len(pages)}
            out.append(self._example(f"{file_id}-p{page['page']:05d}", Modality.PAGE.value,
                                     page["parts"], [uri], mime, len(data), meta))
        return out

    def _decoders(self) -> dict:
        """Part decoders for manifest references and archive members: bytes -> part(s)."""
        def text(b: bytes, spec: PreprocessingSpec) -> dict:
            return empty_part(Modality.TEXT.value) | {"text": decode_text(b, spec)}

        return {
            "text": text,
            "image": decode_image,
            "audio": lambda b, spec: decode_audio(b, spec)[0],
            "video": lambda b, spec: decode_av(b, spec, self.config.video_mode)[1],
            "pdf": lambda b, spec: [p for page in decode_pdf(b, spec, "ref")[0]
                                    for p in page["parts"]],
        }

    def _archive(self, uri: str, data: bytes, kind: str) -> tuple[list[dict], list[dict], dict]:
        """One Example per WebDataset sample; a Rejected row per refused member or sample.

        Members are accounted one by one: a refused member is rejected on its own, the
        members of a sample are accepted or rejected with it.
        """
        decoders = self._decoders()
        examples, bad = [], []
        n = {"archive_members": 0, "archive_members_accepted": 0, "archive_members_rejected": 0}
        for item in iter_samples(data, kind, self.config.archive):
            size = len(item.members) if isinstance(item, Sample) else 1
            n["archive_members"] += size
            if not isinstance(item, Sample):
                bad.append(_reject(f"{uri}#{item.name[:1024]}", None, item.reason, item.message))
                n["archive_members_rejected"] += 1
                continue
            try:
                s = build_sample(uri, item, self.config.spec, decoders, sniff)
            except DecodeError as e:
                bad.append(_reject(f"{uri}#{item.key[:1024]}", None, e.reason,
                                   f"sample of {size} member(s): {e.message}"))
                n["archive_members_rejected"] += size
                continue
            except Exception as e:  # noqa: BLE001 - a member must end as a row, not a crash
                bad.append(_reject(f"{uri}#{item.key[:1024]}", None, Reason.DECODE_ERROR,
                                   f"sample of {size} member(s): {type(e).__name__}: {e}"))
                n["archive_members_rejected"] += size
                continue
            n["archive_members_accepted"] += size
            examples.append(self._example(s["id"], s["modality"], s["parts"],
                                          [f"{uri}#{item.key}"], None,
                                          sum(len(m.data) for m in item.members), s["metadata"]))
        if not n["archive_members"]:
            raise DecodeError(Reason.EMPTY, f"{kind} archive without file members")
        return examples, bad, n

    def _manifest(self, uri: str, data: bytes, fmt: str) -> tuple[list[dict], list[dict]]:
        roots = list(self.config.allowed_roots) or [uri.rsplit("/", 1)[0]]
        decoders = self._decoders()
        examples, bad = [], []
        for rec in parse_manifest(data, fmt, uri):
            if isinstance(rec, RecordError):
                bad.append(_reject(f"{uri}#{rec.record_index}", None, rec.reason,
                                        rec.message))
                continue
            try:
                built = build_interleaved(rec, uri, roots, self.config.spec, decoders,
                                          self.config.remote)
            except DecodeError as e:
                bad.append(_reject(f"{uri}#{rec['index']}", rec.get("id"), e.reason,
                                        e.message))
                continue
            except Exception as e:  # noqa: BLE001
                bad.append(_reject(f"{uri}#{rec['index']}", rec.get("id"),
                                        Reason.DECODE_ERROR, f"{type(e).__name__}: {e}"))
                continue
            examples.append(self._example(built["id"], Modality.INTERLEAVED.value,
                                          built["parts"], built["source_uris"], None,
                                          len(data), built.get("metadata") or {}))
        return examples, bad
