"""Audio features stay float16 arrays from decode to collate (issue 16), and the bytes an
Example stores are the ones the list path stored: a 30 s log-mel as Python floats is ~6 MB
per clip, as float16 ~375 KB."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import torch
from loom.models.collate import collate_items
from loom.models.encoder import EncoderConfig
from loom.schemas.records import EXAMPLE, TRAINING_ROW, rows_of, to_table
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.audio import decode_audio, log_mel
from loom.transforms.items import example_to_item

SPEC = PreprocessingSpec()
SR = SPEC.audio_sample_rate


def _clip(seconds: float = 30.0) -> tuple[bytes, np.ndarray]:
    t = np.arange(int(seconds * SR)) / SR
    x = (0.3 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 0.5 * t)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="WAV", subtype="FLOAT")
    return buf.getvalue(), x


def _expected(x: np.ndarray) -> np.ndarray:
    """The same log-mel, computed here from the samples, rounded once to float16."""
    return log_mel(x, SR, SPEC.audio_n_mels, win_ms=SPEC.audio_win_ms, hop_ms=SPEC.audio_hop_ms,
                   f_min=SPEC.audio_f_min, log_eps=SPEC.audio_log_eps).reshape(-1)


def _is_f16(values, n: int) -> None:
    assert isinstance(values, np.ndarray) and values.dtype == np.float16 and values.size == n


def test_features_stay_float16_from_decode_to_collate():
    data, x = _clip()
    want = _expected(x)
    part, _ = decode_audio(data, SPEC)
    n = part["frames"] * SPEC.audio_n_mels
    assert n == want.size == 3001 * 64
    _is_f16(part["features"], n)
    assert part["features"].nbytes == 2 * n  # 375 KB, where Python floats take ~6 MB
    np.testing.assert_array_equal(part["features"], want.astype(np.float16))

    # stored: the same bytes the Python-float path stored (Arrow rounds doubles to half)
    example = {"id": "a", "modality": "audio", "parts": [part], "source_uris": ["mem://a"]}
    buf = io.BytesIO()
    pq.write_table(to_table([example], EXAMPLE), buf)
    table = pq.read_table(pa.BufferReader(buf.getvalue()))
    stored = table.column("parts").combine_chunks().flatten().flatten()[
        EXAMPLE.field("parts").type.value_type.get_field_index("features")].flatten()
    as_lists = pa.array(want.tolist(), pa.float16())
    assert stored.to_numpy().tobytes() == as_lists.to_numpy().tobytes()
    assert stored.equals(as_lists)

    # read back, turned into an ITEM, through a shard row, collated
    row = rows_of(table)[0]
    _is_f16(row["parts"][0]["features"], n)
    item = example_to_item(row)
    _is_f16(item["features"], n)
    shard_row = {"pair_id": "p", "query": item, "positive": item, "negatives": [item]}
    back = rows_of(to_table([shard_row], TRAINING_ROW))[0]
    for side in (back["query"], back["positive"], back["negatives"][0]):
        _is_f16(side["features"], n)
        np.testing.assert_array_equal(side["features"], want.astype(np.float16))
    cfg = EncoderConfig(vocab_size=64, n_mels=SPEC.audio_n_mels)
    got = collate_items([back["query"]], cfg)["audio"][0]
    rows = want.astype(np.float16).astype(np.float32).reshape(-1, SPEC.audio_n_mels)
    pooled = [g.mean(axis=0) for g in np.array_split(rows, cfg.max_audio_tokens)]
    torch.testing.assert_close(got, torch.from_numpy(np.stack(pooled)))


def test_rows_of_matches_to_pylist_except_float16_lists():
    """Nulls, slices and chunks read as `to_pylist` reads them."""
    data, _ = _clip(0.5)
    part, _ = decode_audio(data, SPEC)
    text = {"kind": "text", "text": "hi", "tokens": [1, 2]}
    rows = [{"id": str(i), "modality": "audio", "parts": [text, part] if i % 2 else [text],
             "source_uris": ["x"], "metadata": None if i % 3 else "{}"} for i in range(6)]
    table = to_table(rows, EXAMPLE)
    table = pa.concat_tables([table.slice(1, 3), table.slice(0, 2)])

    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v.tolist() if isinstance(v, np.ndarray) else v

    got = rows_of(table)
    assert plain(got) == table.to_pylist()
    _is_f16(got[0]["parts"][1]["features"], part["frames"] * SPEC.audio_n_mels)
