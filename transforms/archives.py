"""Archives as input: tar shards in WebDataset layout (plain or gz/bz2/xz) and zip.

Members are read in memory, one at a time, and never extracted: nothing in an archive
can write, link or point anywhere. A member with a traversal or absolute name, a link
(symbolic or hard), a device file, fifo or socket is Rejected `forbidden_member`; one
larger than `max_member_bytes` is `too_large`; a zip member whose declared size over its
compressed size exceeds `max_ratio` is `decompression_bomb`. An archive that decompresses
past `max_total_bytes` (or past `max_ratio` times its own size, for a compressed tar), or
holds more than `max_members` members, is rejected as a whole: reading on would be the
attack.

WebDataset layout: members are grouped into samples by key, the member path up to the
first dot of its basename (`shard/0001.jpg` and `shard/0001.txt` -> sample
`shard/0001`, fields `jpg` and `txt`), as webdataset itself does. A sample becomes one
Example (see `ingest`); `json`, `cls` and similar fields become metadata, not parts.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import io
import json
import lzma
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from typing import BinaryIO, Literal

import zstandard
from loom.schemas.records import Reason
from loom.transforms.sniff import DecodeError
from pydantic import BaseModel, ConfigDict, Field

MiB = 1 << 20
ArchiveKind = Literal["tar", "zip"]
_COMPRESSED = {b"\x1f\x8b": lambda f: gzip.GzipFile(fileobj=f, mode="rb"),
               b"BZh": bz2.BZ2File, b"\xfd7zXZ\x00": lzma.LZMAFile,
               b"\x28\xb5\x2f\xfd": lambda f: zstandard.ZstdDecompressor().stream_reader(f)}
_INFLATE_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error, zstandard.ZstdError)


class ArchiveLimits(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_members: int = Field(100_000, ge=1)
    max_member_bytes: int = Field(64 * MiB, ge=1)
    max_total_bytes: int = Field(1024 * MiB, ge=1)  # decompressed bytes read from one archive
    max_ratio: float = Field(100.0, gt=1)  # decompressed / compressed
    ratio_floor_bytes: int = Field(1 * MiB, ge=0)  # smaller payloads may compress as they like


@dataclasses.dataclass(frozen=True)
class Member:
    """A regular member's bytes, or why the member is refused (`data` is then None)."""

    name: str
    data: bytes | None = None
    reason: Reason | None = None
    message: str = ""


class _Bomb(Exception):
    pass


def _tar_header(block: bytes) -> bool:
    return len(block) >= 262 and block[257:262] == b"ustar"


def archive_kind(data: bytes) -> ArchiveKind | None:
    """By content: zip local/empty headers, a ustar header, or a compressed ustar header."""
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if _tar_header(data[:512]):
        return "tar"
    for magic, opener in _COMPRESSED.items():
        if data.startswith(magic):
            try:
                with opener(io.BytesIO(data)) as f:
                    head = f.read(512)
            except _INFLATE_ERRORS:
                return None
            return "tar" if _tar_header(head) else None
    return None


def inflate(data: bytes, limits: ArchiveLimits, max_out: int) -> bytes:
    """The first `max_out` decompressed bytes of a gzip/bzip2/xz/zstd stream, read under
    the archive caps (total and ratio): DecodeError decompression_bomb past them,
    truncated or decode_error for a broken stream."""
    for magic, opener in _COMPRESSED.items():
        if data.startswith(magic):
            reader = _CappedReader(opener(io.BytesIO(data)), len(data), limits)
            out = bytearray()
            try:
                while len(out) < max_out:
                    chunk = bytearray(min(1 << 20, max_out - len(out)))
                    n = reader.readinto(chunk)
                    if not n:
                        break
                    out += chunk[:n]
            except _Bomb as e:
                raise DecodeError(Reason.DECOMPRESSION_BOMB, str(e)) from None
            except EOFError as e:
                raise DecodeError(Reason.TRUNCATED, f"compressed stream: {e}") from None
            except _INFLATE_ERRORS as e:
                raise DecodeError(Reason.DECODE_ERROR, f"compressed stream: {e}") from None
            return bytes(out)
    raise DecodeError(Reason.UNSUPPORTED_FORMAT, "not a gzip, bzip2, xz or zstd stream")


def forbidden_name(name: str) -> str | None:
    """Why a member name may not be used (None when it is a plain relative path)."""
    if not name or "\x00" in name:
        return "empty name or NUL in name"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if any(seg == ".." for seg in name.replace("\\", "/").split("/")):
        return "'..' traversal"
    return None


class _CappedReader(io.RawIOBase):
    """Decompressed bytes of a compressed tar, stopped at a total and a ratio limit."""

    def __init__(self, inner: BinaryIO, compressed_size: int, limits: ArchiveLimits):
        self.inner, self.size, self.limits, self.out = inner, compressed_size, limits, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = self.inner.readinto(buf)
        self.out += n or 0
        lim = self.limits
        if self.out > lim.max_total_bytes:
            raise _Bomb(f"decompresses past {lim.max_total_bytes} bytes")
        if self.out > lim.ratio_floor_bytes and self.out > lim.max_ratio * self.size:
            raise _Bomb(f"decompresses past {lim.max_ratio:g}x its {self.size} bytes")
        return n


class _CutTar(Exception):
    pass


class _StrictTarInfo(tarfile.TarInfo):
    """tarfile ends an archive quietly at a cut or garbage header; here only a zero block
    (the end-of-archive marker) ends it, so no member is dropped unseen."""

    @classmethod
    def fromtarfile(cls, tf):
        try:
            return super().fromtarfile(tf)
        except tarfile.EOFHeaderError:
            raise
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError) as e:
            raise _CutTar(f"archive ends inside a header: {e}") from None
        except tarfile.InvalidHeaderError as e:
            raise tarfile.ReadError(f"invalid header at offset {tf.offset}: {e}") from None


def _tar_members(data: bytes, limits: ArchiveLimits) -> Iterator[Member]:
    raw: BinaryIO = io.BytesIO(data)
    plain = True
    for magic, opener in _COMPRESSED.items():
        if data.startswith(magic):
            raw = io.BufferedReader(_CappedReader(opener(io.BytesIO(data)), len(data), limits))
            plain = False
    total = 0
    try:
        with tarfile.open(fileobj=raw, mode="r|", tarinfo=_StrictTarInfo) as tf:  # a stream: nothing held but a member
            for info in tf:
                name = info.name
                if plain and info.offset_data + info.size > len(data):
                    raise EOFError(f"member {name[:200]!r} claims {info.size} bytes past the end")
                if info.isdir():
                    continue
                if why := forbidden_name(name):
                    yield Member(name, reason=Reason.FORBIDDEN_MEMBER, message=why)
                elif info.issym() or info.islnk():
                    kind = "symlink" if info.issym() else "hard link"
                    yield Member(name, reason=Reason.FORBIDDEN_MEMBER,
                                 message=f"{kind} to {info.linkname[:200]!r}")
                elif not info.isreg() or info.issparse():
                    yield Member(name, reason=Reason.FORBIDDEN_MEMBER,
                                 message=f"not a regular file (tar type {info.type!r})")
                elif info.size > limits.max_member_bytes:
                    yield Member(name, reason=Reason.TOO_LARGE,
                                 message=f"{info.size} bytes > {limits.max_member_bytes}")
                else:
                    total += info.size
                    if total > limits.max_total_bytes:
                        raise _Bomb(f"members total past {limits.max_total_bytes} bytes")
                    f = tf.extractfile(info)
                    got = f.read() if f else b""
                    if len(got) != info.size:  # a stream cut inside a member reads short
                        raise EOFError(f"member {name!r}: {len(got)} of {info.size} bytes")
                    yield Member(name, data=got)
    except _Bomb as e:
        raise DecodeError(Reason.DECOMPRESSION_BOMB, f"archive {e}") from None
    except (tarfile.TarError, OSError, EOFError, _CutTar, lzma.LZMAError, zlib.error) as e:
        cut = isinstance(e, (EOFError, _CutTar))
        raise DecodeError(Reason.TRUNCATED if cut else Reason.DECODE_ERROR,
                          f"unreadable tar: {type(e).__name__}: {e}") from None


def _zip_members(data: bytes, limits: ArchiveLimits) -> Iterator[Member]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise DecodeError(Reason.DECODE_ERROR, f"unreadable zip: {e}") from None
    if len(infos) > limits.max_members:
        raise DecodeError(Reason.TOO_LARGE, f"{len(infos)} members > {limits.max_members}")
    total = 0
    for info in infos:
        name, mode = info.filename, info.external_attr >> 16
        if info.is_dir():
            continue
        if why := forbidden_name(name):
            yield Member(name, reason=Reason.FORBIDDEN_MEMBER, message=why)
        elif mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            kind = "symlink" if stat.S_ISLNK(mode) else f"file type {stat.S_IFMT(mode):o}"
            yield Member(name, reason=Reason.FORBIDDEN_MEMBER, message=f"{kind}, not a file")
        elif info.flag_bits & 0x1:
            yield Member(name, reason=Reason.ENCRYPTED, message="encrypted member")
        elif (info.file_size > limits.ratio_floor_bytes
              and info.file_size > limits.max_ratio * max(info.compress_size, 1)):
            yield Member(name, reason=Reason.DECOMPRESSION_BOMB,
                         message=f"declared {info.file_size} bytes from {info.compress_size} "
                                 f"compressed (> {limits.max_ratio:g}x)")
        elif info.file_size > limits.max_member_bytes:
            yield Member(name, reason=Reason.TOO_LARGE,
                         message=f"declared {info.file_size} bytes > {limits.max_member_bytes}")
        else:
            total += info.file_size
            if total > limits.max_total_bytes:
                raise DecodeError(Reason.DECOMPRESSION_BOMB,
                                  f"archive members total past {limits.max_total_bytes} bytes")
            try:
                with zf.open(info) as f:  # reads at most the declared size, CRC-checked
                    got = f.read(limits.max_member_bytes + 1)
            except NotImplementedError as e:
                yield Member(name, reason=Reason.UNSUPPORTED_FORMAT, message=str(e))
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error, lzma.LZMAError,
                    ValueError) as e:
                yield Member(name, reason=Reason.DECODE_ERROR, message=f"{type(e).__name__}: {e}")
            else:
                yield Member(name, data=got)


def iter_members(data: bytes, kind: ArchiveKind, limits: ArchiveLimits) -> Iterator[Member]:
    """Every non-directory member in order, read or refused; DecodeError if the archive is.

    More than `max_members` members is an archive-level `too_large`.
    """
    members = _zip_members(data, limits) if kind == "zip" else _tar_members(data, limits)
    for n, member in enumerate(members, 1):
        if n > limits.max_members:
            raise DecodeError(Reason.TOO_LARGE, f"more than {limits.max_members} members")
        yield member


def split_key(name: str) -> tuple[str, str]:
    """WebDataset's (key, field): up to / after the first dot of the basename, lowercased."""
    head, sep, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return head + sep + stem, ext.lower() if dot else ""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One WebDataset sample: consecutive readable members sharing a key."""

    key: str
    members: tuple[Member, ...]


def iter_samples(data: bytes, kind: ArchiveKind, limits: ArchiveLimits
                 ) -> Iterator[Sample | Member]:
    """Samples, and refused members on their own (a refused member joins no sample).

    Consecutive members with one key form a sample, as in webdataset, so only one
    sample is held at a time; a key that comes back later starts a new sample.
    """
    key, group = None, []
    for member in iter_members(data, kind, limits):
        if member.data is None:
            yield member
            continue
        k = split_key(member.name)[0]
        if group and k != key:
            yield Sample(key, tuple(group))
            group = []
        key = k
        group.append(member)
    if group:
        yield Sample(key, tuple(group))


# Fields that describe a sample rather than being content (webdataset conventions).
META_FIELDS = frozenset({"json", "cls", "cls2", "cls.txt", "id", "index", "key", "meta"})
TEXT_FIELDS = frozenset({"txt", "text", "caption", "captions", "md"})
_META_MAX = 64 * 1024


def build_sample(archive_uri: str, sample: Sample, spec, decoders, sniff_fn) -> dict:
    """A sample's members decoded in member order: {"id", "modality", "parts", "metadata"}.

    `decoders` maps a modality ("text", "image", "audio", "video", "pdf") to a callable
    (bytes, spec) -> part dict or list of parts; `sniff_fn(bytes, name)` gives
    (modality, mime). `id` is `record_id` over (field, bytes) of every member, metadata
    included. The modality is the one content member's, or `interleaved`. Raises
    DecodeError naming the member: a nested archive is `unsupported_format`, a field
    that appears twice or bad JSON metadata is `bad_record`.
    """
    from loom.transforms.records import record_id  # decoder-free, like this module

    parts: list[dict] = []
    content: list[tuple[str, bytes]] = []
    meta: dict = {"archive": archive_uri, "key": sample.key,
                  "members": [m.name for m in sample.members]}
    kinds: list[str] = []
    seen: set[str] = set()
    for m in sample.members:
        _, field = split_key(m.name)
        label = f"member {m.name!r}"
        if field in seen:
            raise DecodeError(Reason.BAD_RECORD, f"{label}: field {field!r} twice in sample")
        seen.add(field)
        content.append((field, m.data))
        if field in META_FIELDS:
            if len(m.data) > _META_MAX:
                raise DecodeError(Reason.TOO_LARGE, f"{label}: metadata over {_META_MAX} bytes")
            try:
                text = m.data.decode("utf-8")
                meta[field] = json.loads(text) if field == "json" else text.strip()
            except (UnicodeDecodeError, ValueError, RecursionError) as e:
                raise DecodeError(Reason.BAD_RECORD, f"{label}: {type(e).__name__}: {e}") from None
            continue
        try:
            if archive_kind(m.data):
                raise DecodeError(Reason.UNSUPPORTED_FORMAT, "nested archives are not expanded")
            if field in TEXT_FIELDS:
                kind, mime = "text", "text/plain"
            else:
                modality, mime = sniff_fn(m.data, m.name)
                kind = "pdf" if mime == "application/pdf" else (modality.value if modality
                                                               else None)
            if kind not in decoders:
                raise DecodeError(Reason.UNSUPPORTED_FORMAT, "unrecognized content type")
            decoded = decoders[kind](m.data, spec)
        except DecodeError as e:
            raise DecodeError(e.reason, f"{label}: {e.message}") from None
        kinds.append(kind)
        for p in decoded if isinstance(decoded, list) else [decoded]:
            parts.append(dict(p) | {"source_uri": f"{archive_uri}#{m.name}",
                                    "mime": p.get("mime") or mime})
    if not parts:
        raise DecodeError(Reason.EMPTY, "sample has no content member (metadata only)")
    modality = kinds[0] if len(kinds) == 1 and kinds[0] != "pdf" else "interleaved"
    return {"id": record_id(content), "modality": modality, "parts": parts, "metadata": meta}
