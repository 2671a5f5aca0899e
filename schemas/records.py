"""Arrow schemas: the single source of truth for every record loom writes.

Every table loom produces is one of these schemas; Beam rows, shard columns and
validation derive from them. Parts of an Example are an ordered, interleaved list;
a part carries its decoded payload (tokens, pixels or features) so later stages
never decode again.
"""

from __future__ import annotations

import enum
import json

import pyarrow as pa


class Modality(str, enum.Enum):
    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"
    VIDEO = "video"
    PAGE = "page"  # a rendered document page (image + its text layer)
    INTERLEAVED = "interleaved"


class Split(str, enum.Enum):
    TRAIN = "train"
    HELDOUT = "heldout"


class Reason(str, enum.Enum):
    """Reason codes of Rejected rows; a code is stable, the message is free text."""

    EMPTY = "empty"
    UNREADABLE = "unreadable"
    UNSUPPORTED_FORMAT = "unsupported_format"
    DECODE_ERROR = "decode_error"
    TRUNCATED = "truncated"
    DECOMPRESSION_BOMB = "decompression_bomb"
    TOO_LARGE = "too_large"
    TOO_LONG = "too_long"
    NO_VIDEO_STREAM = "no_video_stream"
    NO_AUDIO_STREAM = "no_audio_stream"
    BAD_ENCODING = "bad_encoding"
    DECODE_TIMEOUT = "decode_timeout"
    ENCRYPTED = "encrypted"
    MISSING_REFERENCE = "missing_reference"
    FORBIDDEN_REFERENCE = "forbidden_reference"
    FORBIDDEN_MEMBER = "forbidden_member"  # an archive member: traversal name, link, device
    BAD_RECORD = "bad_record"
    BAD_NAME = "bad_name"  # a listed file whose name is not valid UTF-8 (shown escaped)
    LLM_BLOCKED = "llm_blocked"
    LLM_ERROR = "llm_error"
    LLM_BAD_RESPONSE = "llm_bad_response"
    NO_POSITIVE = "no_positive"


# The schema version of every table below: a change to any table's columns bumps it once,
# here. Manifests and Parquet files carry it; readers refuse a version they do not know and
# read a known older one with the current schema (columns it lacks are null).
# 2: any-to-any Pairs and Triples (query_parts, query_ref, positive_parts, ...); version-1
# Pairs and Triples read through `conform`.
# 3: ITEMs carry their text and task instruction (`text`, `instruction`) beside the token
# ids, so a trainer on a Hugging Face trunk re-tokenizes with the trunk's tokenizer;
# version-2 shards read with those null (such a trainer asks for a reshard).
SCHEMA_VERSION = 3
KNOWN_SCHEMA_VERSIONS = frozenset({1, 2, 3})
DESCRIPTION = b"description"  # the key of a column's description in its field metadata


def col(name: str, type_: pa.DataType, description: str, nullable: bool = True) -> pa.Field:
    """A column with its description in the field metadata (Parquet keeps it)."""
    return pa.field(name, type_, nullable=nullable, metadata={DESCRIPTION: description})


# One part of an interleaved Example. Unused payload fields are null.
PART = pa.struct(
    [
        col("kind", pa.string(), "modality of this part (a Modality value, not interleaved)",
            nullable=False),
        col("text", pa.string(), "the part's text (text parts, a page's text layer)"),
        col("tokens", pa.list_(pa.int32()), "text token ids from the version's tokenizer"),
        col("pixels", pa.binary(), "frames (F, height, width, 3) stacked vertically: one "
            "JPEG/WebP/PNG image, or raw uint8"),
        col("pixel_format", pa.string(), "jpeg | webp | png | raw (null: raw)"),
        col("height", pa.int32(), "frame height in pixels"),
        col("width", pa.int32(), "frame width in pixels"),
        col("frames", pa.int32(), "number of frames stacked in pixels"),
        col("features", pa.list_(pa.float16()), "log-mel features, row-major (frames, bins)"),
        col("feature_bins", pa.int32(), "mel bins per feature row"),
        col("source_uri", pa.string(), "the file (or archive member) this part came from"),
        col("mime", pa.string(), "sniffed MIME type of the part's source"),
    ]
)

EXAMPLE = pa.schema(
    [
        col("id", pa.string(), "sha256 of the asset's bytes (page: document id + page)",
            nullable=False),
        col("modality", pa.string(), "a Modality value", nullable=False),
        col("parts", pa.list_(PART), "the interleaved, decoded parts in order", nullable=False),
        col("source_uris", pa.list_(pa.string()),
            "the asset's URI first, then its byte-identical copies", nullable=False),
        col("mime", pa.string(), "sniffed MIME type of the asset"),
        col("size_bytes", pa.int64(), "size of the asset's bytes"),
        col("metadata", pa.string(), "JSON object (duration, page number, document id, ...)"),
        # Near-duplicates (transforms/neardup.py): resized or re-encoded copies share a
        # group, named by its smallest member id (an Example alone: its own id). Splits
        # are assigned per group, so copies never straddle train and held-out.
        col("near_dup_group", pa.string(), "near-duplicate group: its smallest member id"),
        col("near_dup_sig", pa.binary(), "pHash(es) or MinHash; null: no signature"),
    ]
)

REJECTED = pa.schema(
    [
        col("uri", pa.string(), "the input that failed", nullable=False),
        col("stage", pa.string(), "the stage that rejected it", nullable=False),
        col("reason", pa.string(), "a stable Reason code", nullable=False),
        col("message", pa.string(), "free-text detail, deterministic for the same input"),
        col("record_id", pa.string(), "the example/record the failure belongs to"),
    ]
)

DUPLICATE = pa.schema(
    [
        col("uri", pa.string(), "a listed file that is a byte-for-byte copy", nullable=False),
        col("duplicate_of", pa.string(), "the accepted Example id it copies", nullable=False),
    ]
)

# A query or positive taken from a corpus Example: its id and which of its parts (null:
# all). A video's frames without its audio track is {"example_id": v, "parts": [0]}.
PART_REF = pa.struct(
    [
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("parts", pa.list_(pa.int32())),
    ]
)

# Columns every Pair and Triple shares beyond a text query (schema version 2, any-to-any).
# The query is `query_text` (text, may be empty), plus inline `query_parts` (the Examples'
# part struct: an image, a frame), plus `query_ref` (parts of a corpus Example); its
# modality names every kind in it, joined by "+" in a fixed order (`text+image`). The
# positive is `positive_id` restricted to `positive_parts` (null: all its parts), or
# inline text `positive_text` (an LLM-written description of the query Example). The two
# sides never share a part. `group` is the asset group that chose the split.
ANY_TO_ANY = [
    col("query_parts", pa.list_(PART), "inline parts of the query (an image, a frame)"),
    col("query_ref", PART_REF, "parts of a corpus Example that are (in) the query"),
    col("positive_parts", pa.list_(pa.int32()), "the positive's parts (null: all)"),
    col("positive_text", pa.string(), "inline text positive (describes the query Example)"),
    col("source", pa.string(), "synthetic (an LLM wrote it) | natural (structure)"),
    col("group", pa.string(), "the asset group that chose the split"),
]

PAIR = pa.schema(
    [
        col("pair_id", pa.string(), "stable id of the pair", nullable=False),
        col("task", pa.string(), "task description written by the LLM"),
        col("kind", pa.string(), "query kind (the prompt's name)", nullable=False),
        col("query_text", pa.string(), "the query", nullable=False),
        col("query_modality", pa.string(), "modality of the query", nullable=False),
        col("positive_id", pa.string(), "the positive Example's id", nullable=False),
        col("positive_modality", pa.string(), "the positive's modality", nullable=False),
        col("split", pa.string(), "train | heldout (by the positive's asset group)",
            nullable=False),
        col("prompt_version", pa.string(), "version of the prompt that wrote it", nullable=False),
        col("model", pa.string(), "LLM model id", nullable=False),
        col("backend", pa.string(), "offline | gemini | vertex", nullable=False),
        col("generation_config", pa.string(), "JSON: what was sent besides the prompt"),
        col("seed", pa.int64(), "the LLM seed"),
        col("input_tokens", pa.int64(), "input tokens of the call that wrote it (shared by "
            "the queries of one answer)"),
        col("output_tokens", pa.int64(), "output tokens of that call"),
        *ANY_TO_ANY,
    ]
)

NEGATIVE = pa.struct(
    [
        col("id", pa.string(), "the negative Example's id", nullable=False),
        col("score", pa.float32(), "its cosine score against the query"),
        col("modality", pa.string(), "its modality"),
        col("rank", pa.int32(), "its rank among the query's kept negatives"),
    ]
)

# Output of mining: a Pair plus its hard negatives (ids only; shard joins content).
TRIPLE = pa.schema(
    [
        col("pair_id", pa.string(), "the Pair's id", nullable=False),
        col("kind", pa.string(), "query kind"),
        col("query_text", pa.string(), "the query", nullable=False),
        col("query_modality", pa.string(), "modality of the query", nullable=False),
        col("positive_id", pa.string(), "the positive Example's id", nullable=False),
        col("positive_modality", pa.string(), "the positive's modality", nullable=False),
        col("positive_score", pa.float32(), "cosine of query and positive (mining checkpoint)"),
        col("negatives", pa.list_(NEGATIVE), "hard negatives, best first", nullable=False),
        col("checkpoint", pa.string(), "the checkpoint id that mined them", nullable=False),
        col("mining_config", pa.string(), "JSON: the mining config"),
        col("task", pa.string(), "task instruction that goes with the query"),
        *ANY_TO_ANY,
    ]
)

# One side of a training example, self-contained: the trainer never joins.
ITEM = pa.struct(
    [
        col("id", pa.string(), "Example id (or query id)"),
        col("modality", pa.string(), "a Modality value"),
        col("tokens", pa.list_(pa.int32()), "text token ids (the spec's tokenizer)"),
        col("pixels", pa.binary(), "frames of size x size (the spec's image_size), as in "
            "Example parts"),
        col("pixel_format", pa.string(), "jpeg | webp | png | raw"),
        col("frames", pa.int32(), "number of frames in pixels"),
        col("features", pa.list_(pa.float16()), "log-mel, row-major (n, feature_bins)"),
        col("feature_bins", pa.int32(), "mel bins per feature row"),
        col("instruction_tokens", pa.int32(), "leading tokens that are the query's task "
            "instruction: attended to, not pooled (null: 0)"),
        col("text", pa.string(), "the text behind `tokens` minus the instruction (a query's "
            "text, then its text parts'), for another tokenizer (an HF trunk's)"),
        col("instruction", pa.string(), "a query's task instruction as text (\"<task> |\")"),
    ]
)

TRAINING_ROW = pa.schema(
    [
        col("pair_id", pa.string(), "the Pair's id", nullable=False),
        col("kind", pa.string(), "query kind"),
        col("query", ITEM, "the query, self-contained", nullable=False),
        col("positive", ITEM, "the positive, self-contained", nullable=False),
        col("negatives", pa.list_(ITEM), "hard negatives (empty for pre-fine-tuning)",
            nullable=False),
    ]
)

EMBEDDING = pa.schema(
    [
        col("id", pa.string(), "Example id", nullable=False),
        col("source_uri", pa.string(), "the Example's source file"),
        col("modality", pa.string(), "the Example's modality"),
        col("checkpoint", pa.string(), "checkpoint id that embedded it", nullable=False),
        col("dim", pa.int32(), "vector length (a Matryoshka size)", nullable=False),
        col("vector", pa.list_(pa.float32()), "L2-normalized embedding", nullable=False),
    ]
)

# Ingest: every listed file's outcome.
FILES = pa.schema(
    [
        col("uri", pa.string(), "a listed file"),
        col("id", pa.string(), "sha256 of its bytes"),
        col("outcome", pa.string(), "accepted | duplicate | rejected"),
    ]
)

# Relabel: what the LLM changed per triple.
RELABEL = pa.schema(
    [
        col("pair_id", pa.string(), "the triple's pair id", nullable=False),
        col("query_text", pa.string(), "the query"),
        col("old_positive_id", pa.string(), "the mined positive", nullable=False),
        col("new_positive_id", pa.string(), "the positive the LLM picked", nullable=False),
        col("changed", pa.bool_(), "whether the positive changed", nullable=False),
        col("negatives", pa.list_(pa.string()), "the hard negatives the LLM picked"),
        col("prompt_version", pa.string(), "version of the relabel prompt"),
        col("model", pa.string(), "LLM model id"),
        col("input_tokens", pa.int64(), "input tokens of the call"),
        col("output_tokens", pa.int64(), "output tokens of the call"),
    ]
)

# Eval: one row per modality pair and Matryoshka size; baselines repeat per size.
_METRIC_NAMES = ("r@1", "r@5", "ndcg@10")
METRICS = pa.schema(
    [
        col("pair", pa.string(), "query->target modality pair", nullable=False),
        col("dim", pa.int64(), "embedding size (first dim coordinates, renormalized)",
            nullable=False),
        *(col(m, pa.float64(), f"{m} of the checkpoint") for m in _METRIC_NAMES),
        *(col(f"random_{m}", pa.float64(), f"expected {m} of a random ranking")
          for m in _METRIC_NAMES[:2]),
        *(col(f"untrained_{m}", pa.float64(), f"{m} of the same architecture untrained")
          for m in _METRIC_NAMES),
        *(col(f"lexical_{m}", pa.float64(), f"{m} of BM25 (text->text only, else null)")
          for m in _METRIC_NAMES),
        col("queries", pa.int64(), "held-out queries evaluated"),
        col("gallery", pa.int64(), "held-out gallery size"),
    ]
)

# Work tables (under _work/, never in a finished version).
URIS = pa.schema([col("uri", pa.string(), "a listed file")])
INGEST_WORK = pa.schema([
    col("uri", pa.string(), "a listed file"),
    col("id", pa.string(), "sha256 of its bytes (null: the stage hashes the one read)"),
    col("dups", pa.list_(pa.string()), "its byte-identical copies"),
    col("size", pa.int64(), "its listed size (null: unknown); over the cap: not read"),
    col("prior_id", pa.string(), "its id in the version reused from: same id, not decoded"),
])
# Per file the ingest stage saw: what its one read hashed to, and where its rows are.
INGEST_FILES = pa.schema([
    col("uri", pa.string(), "a listed file"),
    col("id", pa.string(), "sha256 of its bytes, or a stand-in when it was not read"),
    col("size", pa.int64(), "bytes read (-1: unreadable)"),
    col("state", pa.string(), "decoded | reused (same id as before) | copy (of an earlier row)"),
    col("examples", pa.int64(), "its rows in this item's examples part (in file order)"),
    col("rejected", pa.int64(), "its rows in this item's rejected part (in file order)"),
    col("copies", pa.list_(pa.string()), "copies in this item named in its source_uris"),
    col("stats", pa.string(), "its stage stats as JSON (to take back if it is a duplicate)"),
])
INGEST_FILES_TABLE = "_work/files"

# Counters a stage returns beside its tables (never written as a dataset).
LLM_STAT_NAMES = ("llm_calls", "cache_hits", "requests", "retries", "repairs", "blocked",
                  "input_tokens", "output_tokens")


def stats_schema(names: tuple[str, ...]) -> pa.Schema:
    return pa.schema([pa.field(n, pa.int64()) for n in names])


def embedding_cache_schema(dim: int) -> pa.Schema:
    """The per-checkpoint embedding cache's parts (pipelines.embed_cache)."""
    return pa.schema([
        col("id", pa.string(), "item id"),
        col("digest", pa.string(), "digest of the encoder input (tokens, pixels, features)"),
        col("vector", pa.list_(pa.float32(), dim), "L2-normalized embedding"),
    ])


# table name -> schema, as laid out under <root>/<version>/<table>/
TABLES: dict[str, pa.Schema] = {
    "examples": EXAMPLE,
    "rejected": REJECTED,
    "duplicates": DUPLICATE,
    "pairs": PAIR,
    "triples": TRIPLE,
    "shards": TRAINING_ROW,
    "embeddings": EMBEDDING,
    "files": FILES,
    "relabels": RELABEL,
    "metrics": METRICS,
    INGEST_FILES_TABLE: INGEST_FILES,
    "_rows": TRAINING_ROW,
}


def file_metadata(table: str, schema: pa.Schema) -> dict[bytes, bytes]:
    """What every Parquet file loom writes carries in its key-value metadata: the schema
    version, the table's name and its columns' descriptions (for readers that do not
    read Arrow field metadata, e.g. DuckDB's parquet_kv_metadata)."""
    described = {f.name: f.metadata[DESCRIPTION].decode() for f in schema
                 if f.metadata and DESCRIPTION in f.metadata}
    return {b"loom.schema_version": str(SCHEMA_VERSION).encode(),
            b"loom.table": table.encode(),
            b"loom.columns": json.dumps(described, sort_keys=True).encode()}


def self_describing(data: pa.Table, table: str) -> pa.Table:
    """`data` in its table's schema (descriptions included) with the file metadata."""
    schema = TABLES.get(table)
    if schema is not None:
        if data.schema.equals(schema):  # same types: attach the metadata without a copy
            data = pa.Table.from_arrays(data.columns, schema=schema)
        else:
            data = data.cast(schema)
    return data.replace_schema_metadata(file_metadata(table, data.schema))


PAIRS_SCHEMA_VERSION = 2  # the version that made Pairs any-to-any
MODALITY_ORDER = ("text", "image", "audio", "video", "page", "interleaved")


def query_modality(kinds) -> str:
    """The name of a query made of parts of these kinds: `text+image`, in a fixed order."""
    present = set(kinds)
    return "+".join(m for m in MODALITY_ORDER if m in present) or Modality.TEXT.value


def pair_name(query_modality: str, positive_modality: str) -> str:
    return f"{query_modality}->{positive_modality}"


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Version-1 Pairs and Triples (text queries only) read as version 2: the any-to-any
    columns are null, which means what version 1 meant (a text query, a whole positive).
    A column the schema does not know, or one of another type, is a clear error."""
    have = set(table.schema.names)
    unknown = have - set(schema.names)
    if unknown:
        raise ValueError(f"columns {sorted(unknown)} are not in this loom's schema "
                         f"(written by a newer version?)")
    cols = []
    for field in schema:
        if field.name in have:
            col = table.column(field.name)
            if col.type != field.type:
                col = col.cast(field.type)
        else:
            if not field.nullable:
                raise ValueError(f"required column {field.name!r} is missing")
            col = pa.nulls(len(table), field.type)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)


_EMPTY_PART = dict.fromkeys(PART.names)


def empty_part(kind: str) -> dict:
    """A part dict with every payload field null, to be filled by a decoder."""
    part = _EMPTY_PART.copy()
    part["kind"] = kind
    return part


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) to a table that conforms to `schema` exactly (missing keys are null)."""
    return pa.Table.from_pylist(rows, schema=schema)


def nonempty(values) -> bool:
    """A list or array with items: features may be either, and an array has no truth value."""
    return values is not None and len(values) > 0


def rows_of(data: pa.Table | pa.RecordBatch) -> list[dict]:
    """Rows as dicts, as `to_pylist`, except that float16 lists (log-mel features) come out
    as numpy float16 views of the Arrow buffer: a 30 s clip as Python floats is ~6 MB,
    as float16 ~100 KB (issue 16)."""
    columns = {name: _values(data.column(i)) for i, name in enumerate(data.schema.names)}
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _values(arr: pa.Array | pa.ChunkedArray) -> list:
    if isinstance(arr, pa.ChunkedArray):
        return [v for chunk in arr.chunks for v in _values(chunk)]
    t = arr.type
    if pa.types.is_struct(t):
        fields = [_values(child) for child in arr.flatten()]
        names = [t.field(i).name for i in range(t.num_fields)]
        valid = arr.is_valid().to_pylist() if arr.null_count else [True] * len(arr)
        return [dict(zip(names, row, strict=True)) if ok else None
                for ok, row in zip(valid, zip(*fields, strict=True) if fields
                                   else [()] * len(arr), strict=True)]
    if pa.types.is_list(t) and (pa.types.is_float16(t.value_type)
                                or pa.types.is_struct(t.value_type)):
        offsets = arr.offsets.to_numpy()
        start, end = int(offsets[0]), int(offsets[-1])
        child = arr.values.slice(start, end - start)
        values = (child.to_numpy(zero_copy_only=False) if pa.types.is_float16(t.value_type)
                  else _values(child))
        valid = arr.is_valid().to_pylist() if arr.null_count else [True] * len(arr)
        return [values[a - start:b - start] if ok else None
                for ok, a, b in zip(valid, offsets[:-1].tolist(), offsets[1:].tolist(),
                                    strict=True)]
    return arr.to_pylist()
