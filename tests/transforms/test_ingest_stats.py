"""The per-file stats column: the JSON of the file's counts, whatever was seen before."""

from __future__ import annotations

import json

from loom.transforms.ingest import _stats_json


def test_stats_json_is_json_dumps_sorted():
    seen = [{"accepted_files": 1, "rejected_records": 0, "examples.image": 1},
            {"rejected_records": 0, "examples.image": 1, "accepted_files": 1},
            {"accepted_files": True, "rejected_records": 0, "examples.image": 1},
            {"accepted_files": 1.0, "rejected_records": 0, "examples.image": 1},
            {}, {"rejected_files": 1}, {"archive_members": 3, "accepted_files": 1}]
    for stats in seen + seen:  # the second time from what was remembered
        assert _stats_json(stats) == json.dumps(stats, sort_keys=True)
