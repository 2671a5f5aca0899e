"""Arrow schemas: the single source of truth for every record loom writes.

Every table loom produces is one of these schemas; Beam rows, shard columns and
validation derive from them. Parts of an Example are an ordered, interleaved list;
a part carries its decoded payload (tokens, pixels or features) so later stages
never decode again.
"""

from __future__ import annotations

import enum

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


# One part of an interleaved Example. Unused payload fields are null.
PART = pa.struct(
    [
        pa.field("kind", pa.string(), nullable=False),  # a Modality value (not interleaved)
        pa.field("text", pa.string()),
        pa.field("tokens", pa.list_(pa.int32())),
        # frames (F, height, width, 3) stacked vertically: one JPEG/WebP/PNG, or raw uint8
        pa.field("pixels", pa.binary()),
        pa.field("pixel_format", pa.string()),  # jpeg | webp | png | raw (null: raw)
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("frames", pa.int32()),
        pa.field("features", pa.list_(pa.float16())),  # log-mel, row-major (frames, bins)
        pa.field("feature_bins", pa.int32()),
        pa.field("source_uri", pa.string()),
        pa.field("mime", pa.string()),
    ]
)

EXAMPLE = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # sha256 of the asset's bytes
        pa.field("modality", pa.string(), nullable=False),
        pa.field("parts", pa.list_(PART), nullable=False),
        pa.field("source_uris", pa.list_(pa.string()), nullable=False),
        pa.field("mime", pa.string()),
        pa.field("size_bytes", pa.int64()),
        pa.field("metadata", pa.string()),  # JSON object
        # Near-duplicates (transforms/neardup.py): resized or re-encoded copies share a
        # group, named by its smallest member id (an Example alone: its own id). Splits
        # are assigned per group, so copies never straddle train and held-out.
        pa.field("near_dup_group", pa.string()),
        pa.field("near_dup_sig", pa.binary()),  # pHash(es) or MinHash; null: no signature
    ]
)

REJECTED = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # a Reason value
        pa.field("message", pa.string()),
        pa.field("record_id", pa.string()),  # the example/record the failure belongs to
    ]
)

# A listed file that is a byte-for-byte copy of an accepted one.
DUPLICATE = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("duplicate_of", pa.string(), nullable=False),  # the accepted Example id
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
    pa.field("query_parts", pa.list_(PART)),
    pa.field("query_ref", PART_REF),
    pa.field("positive_parts", pa.list_(pa.int32())),
    pa.field("positive_text", pa.string()),
    pa.field("source", pa.string()),  # synthetic (an LLM wrote it) | natural (structure)
    pa.field("group", pa.string()),
]

PAIR = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("task", pa.string()),  # task instruction: goes with the query everywhere
        pa.field("kind", pa.string(), nullable=False),  # query kind (prompt name)
        pa.field("query_text", pa.string(), nullable=False),
        pa.field("query_modality", pa.string(), nullable=False),
        pa.field("positive_id", pa.string(), nullable=False),
        pa.field("positive_modality", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("prompt_version", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("backend", pa.string(), nullable=False),
        pa.field("generation_config", pa.string()),  # JSON
        pa.field("seed", pa.int64()),
        # usage_metadata of the call that wrote it (shared by the queries of one answer)
        pa.field("input_tokens", pa.int64()),
        pa.field("output_tokens", pa.int64()),
        *ANY_TO_ANY,
    ]
)

NEGATIVE = pa.struct(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("score", pa.float32()),
        pa.field("modality", pa.string()),
        pa.field("rank", pa.int32()),
    ]
)

# Output of mining: a Pair plus its hard negatives (ids only; shard joins content).
TRIPLE = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("kind", pa.string()),
        pa.field("query_text", pa.string(), nullable=False),
        pa.field("query_modality", pa.string(), nullable=False),
        pa.field("positive_id", pa.string(), nullable=False),
        pa.field("positive_modality", pa.string(), nullable=False),
        pa.field("positive_score", pa.float32()),
        pa.field("negatives", pa.list_(NEGATIVE), nullable=False),
        pa.field("checkpoint", pa.string(), nullable=False),
        pa.field("mining_config", pa.string()),  # JSON
        pa.field("task", pa.string()),
        *ANY_TO_ANY,
    ]
)

# One side of a training example, self-contained: the trainer never joins.
ITEM = pa.struct(
    [
        pa.field("id", pa.string()),
        pa.field("modality", pa.string()),
        pa.field("tokens", pa.list_(pa.int32())),
        pa.field("pixels", pa.binary()),  # frames of size x size (the spec's), as in PART
        pa.field("pixel_format", pa.string()),
        pa.field("frames", pa.int32()),
        pa.field("features", pa.list_(pa.float16())),  # log-mel, row-major (n, feature_bins)
        pa.field("feature_bins", pa.int32()),
    ]
)

TRAINING_ROW = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("kind", pa.string()),
        pa.field("query", ITEM, nullable=False),
        pa.field("positive", ITEM, nullable=False),
        pa.field("negatives", pa.list_(ITEM), nullable=False),  # empty for pft
    ]
)

EMBEDDING = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string()),
        pa.field("modality", pa.string()),
        pa.field("checkpoint", pa.string(), nullable=False),
        pa.field("dim", pa.int32(), nullable=False),
        pa.field("vector", pa.list_(pa.float32()), nullable=False),
    ]
)

# table name -> schema, as laid out under <root>/<version>/<table>/
TABLES: dict[str, pa.Schema] = {
    "examples": EXAMPLE,
    "rejected": REJECTED,
    "duplicates": DUPLICATE,
    "pairs": PAIR,
    "triples": TRIPLE,
    "shards": TRAINING_ROW,
    "embeddings": EMBEDDING,
}


# Bumped once per change to any table's columns. 2: any-to-any Pairs and Triples.
PAIRS_SCHEMA_VERSION = 2
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
