"""Soak, scaled down (slow tier): 2,000 small mixed files + a 2-minute video + a 10-minute
audio file through `run_ingest`. Memory stays under a bound set by config, not by input
size; no file descriptor or process is left behind; every file is accounted for. The
full-size run is `python tests/benchmarks/soak.py --scale full` (numbers in RESULTS.md)."""

from __future__ import annotations

import json

import pytest
from loom.transforms.ingest import IngestConfig, MiB

from tests.benchmarks.soak import SCALES, run_soak

# Per decoder worker: start-up (~250 MiB) + decoder_memory_mb; Beam runs 2 of them, plus
# the driver (~500 MiB with Beam and pyarrow) and the largest file held (max_file_bytes).
DRIVER_MIB = 1024


@pytest.mark.slow
def test_soak_small(tmp_path):
    s = SCALES["small"]
    out = run_soak(str(tmp_path), s["files"], s["video_min"], s["audio_min"])
    print("SOAK " + json.dumps(out))
    c = out["counts"]
    assert c["listed"] == s["files"] + 2 == c["accepted"] + c["duplicate"] + c["rejected"]
    assert c["examples.video"] == 1 and c["decoded"] == c["listed"] - c["duplicate"]
    cfg = IngestConfig.model_fields
    bound = 2 * (256 + cfg["decoder_memory_mb"].default) + DRIVER_MIB + (
        cfg["max_file_bytes"].default // MiB)
    assert out["peak_rss_tree_mib"] < bound
    assert out["fds_after"] <= out["fds_before"]
    assert not [p for p in out["children_after"] if "resource_tracker" not in p]
