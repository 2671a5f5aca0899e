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

PAIR = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("task", pa.string()),  # task description written by the LLM
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


_EMPTY_PART = dict.fromkeys(PART.names)


def empty_part(kind: str) -> dict:
    """A part dict with every payload field null, to be filled by a decoder."""
    part = _EMPTY_PART.copy()
    part["kind"] = kind
    return part


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) to a table that conforms to `schema` exactly (missing keys are null)."""
    return pa.Table.from_pylist(rows, schema=schema)
