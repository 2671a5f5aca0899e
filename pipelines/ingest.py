"""Ingest: a raw prefix -> Examples + Rejected (+ duplicates) and the preprocessing spec.

Every listed file is read once (`ingest_once`): (1) the tokenizer is trained on a bounded
sample of the text, read in the driver, which also decodes those files (they are not
read again); (2) every other file is read, hashed and decoded on the engine in one go,
copies of one size side by side so a copy is hashed but not decoded; (3) exact duplicates
are resolved from the hashes on the engine too (`ingest_once.ResolveSteps`), which writes
the FILES and DUPLICATE tables; (4) near-duplicates are grouped (`neardup`). The driver
keeps counters and part records, never a row per file. listed = accepted + duplicate +
rejected is checked before the manifest is written.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
from collections.abc import Iterable
from functools import partial

import pyarrow as pa
from loom.pipelines import ingest_listing, ingest_once
from loom.pipelines.cluster import check_paths
from loom.pipelines.common import BadInput, cleanup_work, result, reuse, timed
from loom.pipelines.neardup import group_near_dups
from loom.pipelines.runner import (
    Engine,
    StageTask,
    engine_kind,
    merge_results,
    run_stage,
)
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.records import (
    FILES,
    REJECTED,
    Modality,
    Reason,
)
from loom.schemas.spec import SPEC_FILE, PreprocessingSpec
from loom.transforms.archives import ArchiveLimits
from loom.transforms.ingest import (
    IngestConfig,
    IngestStage,
    confine_listed,
)
from loom.transforms.remote import RemoteConfig
from loom.transforms.sniff import sniff
from loom.transforms.text import decode_text
from loom.transforms.tokenizer import train_tokenizer

TOKENIZER_SAMPLE_FILES = 5000
TOKENIZER_SAMPLE_BYTES = 64 * 1024 * 1024
# Files the sample may read in all (copies and non-text ones too), whatever the corpus
TOKENIZER_READ_FILES = 2 * TOKENIZER_SAMPLE_FILES
TOKENIZER_READ_BYTES = 2 * TOKENIZER_SAMPLE_BYTES
MAX_FILE_BYTES = 256 << 20  # IngestConfig's default: larger files are rejected unread
MAX_UNREADABLE_SHARE = 0.5  # above this share of the listing, the input is misconfigured


class StorageFailure(RuntimeError):
    """Most listed files could not be read: a configuration error (exit 1), not bad input."""


def check_readable(got: ingest_once.Resolved, listed: int) -> None:
    """StorageFailure when more than half the listed files failed for storage reasons: a
    few are Rejected `unreadable`, but most means the input is not where the workers can
    read it (a local path on another node, missing credentials), and nothing is committed."""
    if listed and got.storage_errors > MAX_UNREADABLE_SHARE * listed:
        raise StorageFailure(
            f"{got.storage_errors} of {listed} listed files could not be read (storage errors, "
            f"e.g. {got.storage_example}); nothing committed: check that every worker can read "
            "the input (a gs:// URI on a multi-node cluster) and its credentials")


def run_ingest(input_uri: str, output_root: str, spec: PreprocessingSpec | None = None,
               engine: Engine = Engine.BEAM, files_per_item: int = 64,
               remote: RemoteConfig | None = None, archive: ArchiveLimits | None = None) -> dict:
    """`remote` allows http(s) references to named hosts; `archive` bounds tar/zip input."""
    check_paths(input=input_uri, output=output_root)  # multi-node: no local paths
    spec = spec or PreprocessingSpec()
    remote, archive = remote or RemoteConfig(), archive or ArchiveLimits()
    input_uri, output_root = storage.absolute(input_uri), storage.absolute(output_root)
    listing = ingest_listing.write_listing(input_uri, output_root)  # parts, not entries
    try:
        if not listing.listed:
            raise BadInput(f"no files under {input_uri}")
        return _run(listing, input_uri, output_root, spec, engine, files_per_item, remote,
                    archive)
    finally:
        listing.delete()


def _run(listing: ingest_listing.Listing, input_uri: str, output_root: str,
         spec: PreprocessingSpec, engine: Engine, files_per_item: int, remote: RemoteConfig,
         archive: ArchiveLimits) -> dict:
    digest, listed, bytes_in = listing.digest, listing.listed, listing.bytes_in
    bad_names = listing.bad_names
    given = spec.tokenizer_json  # a checkpoint's tokenizer (backfill) is kept, not retrained
    config = {"spec": spec.without_tokenizer().model_dump(), "max_file_bytes": MAX_FILE_BYTES,
              "tokenizer": hashlib.sha256(given.encode()).hexdigest()[:16] if given else "trained"}
    for key, value in (("remote", remote), ("archive", archive)):  # only when set: ids stay
        if value != type(value)():
            config[key] = value.model_dump()
    version = mf.version_id("ingest", [digest], config)
    writer = mf.VersionWriter(output_root, "ingest", version)
    if (done := reuse(writer, "ingest")) is not None:
        return done
    listing.move_to(storage.join(writer.dir, "_work", "listing"))
    timings: dict[str, float] = {}
    prior = _prior_version(output_root, input_uri, config)
    sample: list[tuple[str, bytes]] = []
    with timed(timings, "tokenizer_s"):
        if prior is not None and not given:  # same tokenizer as the rows it reuses
            spec = PreprocessingSpec.model_validate_json(
                storage.read_bytes(storage.join(prior[0], SPEC_FILE)))
        elif not given:
            tokenizer, sample = _train_tokenizer(listing.entries(), spec, (input_uri,))
            spec = spec.model_copy(update={"tokenizer_json": tokenizer})
    storage.write_atomic(storage.join(writer.dir, SPEC_FILE), spec.model_dump_json().encode())

    with timed(timings, "decode_s"):
        config_ = IngestConfig(spec=spec, allowed_roots=(input_uri,), remote=remote,
                               max_file_bytes=MAX_FILE_BYTES,
                               archive=archive)
        task = StageTask(partial(IngestStage, config_), writer.dir)
        # Work items on the engine, from the listing's parts: the driver gets references
        with timed(timings, "plan_s"):
            items = ingest_listing.work_items(
                engine, writer.dir, listing, files_per_item, {u for u, _ in sample},
                prior[1].files(prior[0], "files") if prior is not None else [],
                storage.is_remote(input_uri))
        # The sample first, not alongside the engine: a decoder process still starting
        # when the run is killed outlives it for its imports, holding the caller's pipes.
        sampled = _decode_sample(config_, sample) if sample else None
        with timed(timings, "engine_s"):
            tables, stats = merge_results(run_stage(engine, task, items))
        del items
        if sampled is not None:
            _write_sample(writer, sampled, tables, stats)
        del sample, sampled  # the sample's bytes: bounded, but done with
        with timed(timings, "resolve_s"):
            got = ingest_once.resolve(
                engine, writer, tables, stats,
                prior[1].files(prior[0], "files") if prior is not None else [], set(bad_names))
            check_readable(got, listed)
    if got.reused:
        with timed(timings, "reuse_s"):
            ingest_once.copy_reused(engine, writer, prior, got, tables, stats)
    tables["files"] = got.files
    if bad_names:  # rejected in the driver, before any engine: both engines agree
        bad = sorted(bad_names)
        tables.setdefault("rejected", []).append(writer.write_part(
            "rejected", "bad-names-00000", pa.Table.from_pylist(
                [_bad_name_row(u) for u in bad], schema=REJECTED)))
        tables["files"].append(writer.write_part("files", "bad-names-00000", pa.Table.from_arrays(
            [pa.array(bad, pa.string()), pa.array([bad_names[u] for u in bad], pa.string()),
             pa.array(["rejected"] * len(bad), pa.string())], schema=FILES)))
        stats["rejected_files"] = stats.get("rejected_files", 0) + len(bad_names)
        key = f"rejected.{Reason.BAD_NAME.value}"
        stats[key] = stats.get(key, 0) + len(bad_names)
    tables["duplicates"] = got.duplicates
    for t in ("examples", "rejected", "duplicates"):
        tables.setdefault(t, [])

    with timed(timings, "near_dup_s"):
        near = group_near_dups(engine, writer, tables)
    counts = {  # file outcomes, then rows (a PDF or a manifest gives several Examples)
        "listed": listed,
        "accepted": stats.get("accepted_files", 0),
        "duplicate": sum(f.rows for f in tables["duplicates"]),
        "rejected": stats.get("rejected_files", 0),
        "examples": sum(f.rows for f in tables["examples"]),
        "rejected_records": stats.get("rejected_records", 0),
        "decoded": got.decoded,
        "reused_files": got.reused,
        # Examples in a near-duplicate group beyond its first member, and such groups
        # (exact copies are `duplicate`: never decoded; near ones are kept, grouped)
        "near_duplicate": near["near_duplicate"],
        "near_dup_groups": near["near_dup_groups"],
    }
    if "archive_members" in stats:  # members of decoded archives (see transforms/archives.py)
        counts |= {k: stats.get(k, 0) for k in ("archive_members", "archive_members_accepted",
                                                   "archive_members_rejected")}
        if counts["archive_members"] != (counts["archive_members_accepted"]
                                         + counts["archive_members_rejected"]):
            raise RuntimeError(f"ingest lost or invented archive members: {counts}")
    if counts["accepted"] + counts["duplicate"] + counts["rejected"] != counts["listed"]:
        raise RuntimeError(f"ingest lost or invented files: {counts}")
    rejected_rows = sum(f.rows for f in tables["rejected"])
    if rejected_rows != counts["rejected"] + counts["rejected_records"]:
        raise RuntimeError(f"rejected rows {rejected_rows} do not match outcomes {counts}")
    counts |= {k: v for k, v in sorted(stats.items())  # rows per modality and per reason
               if k.startswith(("examples.", "rejected.")) and v}
    counts["bytes_in"] = bytes_in
    sizes = {e.uri: e.size for e in storage.list_files(writer.dir)}
    counts["bytes_out"] = sum(sizes.get(storage.join(writer.dir, f.path), 0)
                              for files in tables.values() for f in files)
    total_s = sum(timings.values())
    timings["files_per_s"] = round(listed / total_s, 1) if total_s else 0.0
    lineage = {
        "input": input_uri,
        "raw_listing": digest,
        "engine": engine_kind(engine).value,
        "spec_digest": spec.digest(),
        "reused_from": prior[0] if prior else None,
        "timings": timings,
    }
    manifest = writer.commit(tables, counts, config, lineage)
    cleanup_work(writer.dir)
    return result("ingest", manifest, writer.dir, False, timings=timings)


def _bad_name_row(uri: str) -> dict:
    return {"uri": uri, "stage": IngestStage.name, "reason": Reason.BAD_NAME.value,
            "message": "file name is not valid UTF-8 (undecodable bytes shown as \\xNN); "
                       "rename it to ingest it", "record_id": None}


def _prior_version(root: str, input_uri: str, config: dict) -> tuple[str, mf.Manifest] | None:
    """The newest complete version of the same input and config: its rows can be reused."""
    try:
        vdir, manifest = mf.resolve_input(root)
    except FileNotFoundError:
        return None
    same = json.loads(mf.canonical_json(config)) == json.loads(mf.canonical_json(manifest.config))
    if (manifest.lineage.get("input") != input_uri or not same or "files" not in manifest.tables
            or manifest.logic_version != mf.logic_version("ingest")):  # columns may differ
        return None
    return vdir, manifest


def _text_candidate(uri: str) -> bool:
    """Might be plain text by its name (the bytes decide): no media or archive suffix."""
    mime, packed = mimetypes.guess_type(uri.rsplit("/", 1)[-1])
    if packed or mime is None:
        return packed is None
    return mime.startswith("text/") or mime in ("application/json", "application/xml")


def _train_tokenizer(listing: Iterable[storage.FileEntry], spec: PreprocessingSpec, roots: tuple[str, ...]
                     ) -> tuple[str, list[tuple[str, bytes]]]:
    """A bounded sample of the corpus's text trains the tokenizer; nothing is downloaded.
    Also every file read for it (uri, bytes), which the driver decodes (isolated, as the
    engine would) so that no file is read twice. What it reads is bounded by constants
    (TOKENIZER_READ_*), not by the corpus: copies and non-text files count too."""
    texts: list[str] = []
    read: list[tuple[str, bytes]] = []
    seen: set[str] = set()  # one copy of each content, as the engine will keep
    budget, read_bytes = TOKENIZER_SAMPLE_BYTES, 0
    for e in listing:
        if len(read) >= TOKENIZER_READ_FILES or read_bytes >= TOKENIZER_READ_BYTES:
            break
        if e.size <= 0 or e.size > budget or not _text_candidate(e.uri):
            continue
        try:  # what the stage refuses to open (links out, fifos) is left to it
            confine_listed(e.uri, roots)
            data = storage.read_bytes(e.uri, limit=budget + 1)
        except Exception:  # noqa: BLE001 - the engine reads it again and says why
            continue
        if not data or len(data) > budget:
            continue
        read.append((e.uri, data))  # decoded (or found a copy) by the driver's stage
        read_bytes += len(data)
        if sniff(data, e.uri)[0] != Modality.TEXT:
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        try:
            texts.append(decode_text(data, spec))
        except Exception:  # noqa: BLE001
            continue
        budget -= len(data)
        if len(texts) >= TOKENIZER_SAMPLE_FILES:
            break
    # Always-present words so a corpus without text still gets a usable tokenizer.
    texts.append("a an the of in on at and is it this that image picture text document")
    return train_tokenizer(texts, spec.vocab_size), read


def _decode_sample(config: IngestConfig, sample: list[tuple[str, bytes]]
                   ) -> dict[str, pa.Table]:
    """The tokenizer sample's files, decoded by the same (isolated) stage from the bytes
    the driver read for the tokenizer, so they are not read again."""
    stage = IngestStage(config)
    try:
        return stage.process_read(sample)
    finally:
        stage.teardown()


def _write_sample(writer: mf.VersionWriter, out: dict[str, pa.Table], tables: dict,
                  stats: dict[str, int]) -> None:
    """The driver-decoded sample's parts, alongside the engine's."""
    for name, data in out.items():
        if name == "stats":
            for k, v in data.to_pylist()[0].items():
                stats[k] = stats.get(k, 0) + int(v)
        elif data.num_rows:
            tables.setdefault(name, []).append(writer.write_part(name, "sample-00000", data))
