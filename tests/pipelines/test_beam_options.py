"""A spec's beam_options become the flags Beam's own parser reads back as the same values,
and local runs name a runner that never tries to download Prism."""

from __future__ import annotations

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from loom.pipelines.beam.options import to_args
from loom.pipelines.engine import BeamOptions

from tests.stages import Echo, EchoTask


def _parsed(options: dict) -> dict:
    return PipelineOptions(to_args(options)).get_all_options()


def test_booleans_lists_and_values_parse_back():
    got = _parsed({"use_public_ips": False, "save_main_session": True, "dry_run": True,
                   "experiments": ["use_runner_v2", "shuffle_mode=service"],
                   "num_workers": 3, "region": "europe-west4"})
    assert got["use_public_ips"] is False  # was dropped: Dataflow gave public IPs
    assert got["save_main_session"] is True
    assert got["dry_run"]  # a value option: `--dry_run` alone fails to parse
    assert got["experiments"] == ["use_runner_v2", "shuffle_mode=service"]
    assert got["num_workers"] == 3 and got["region"] == "europe-west4"
    assert _parsed({"use_public_ips": True})["use_public_ips"] is True
    assert _parsed({"streaming": False})["streaming"] is False
    assert not _parsed({"dry_run": False})["dry_run"]  # never `--dry_run=False` (truthy)


def test_bare_flag_would_fail_where_beam_wants_a_value():
    with pytest.raises(SystemExit):  # what the old writer produced for `dry_run: true`
        PipelineOptions(["--dry_run"]).get_all_options()
    assert to_args({"dry_run": True}) == ["--dry_run=True"]


def test_local_runs_never_try_prism(monkeypatch, tmp_path):
    """DirectRunner would try PrismRunner first (a binary download); loom names FnApiRunner."""
    from apache_beam.runners.portability import prism_runner
    from loom.pipelines.beam.runner import run_beam

    tried = []

    def spy(self, *a, **k):
        tried.append("prism")
        raise RuntimeError("no Prism here")

    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", spy)
    for opts in ({}, {"runner": "DirectRunner"}):
        options = BeamOptions(options=opts)
        assert options.args(1)[0] == "--runner=FnApiRunner"
        out = run_beam(EchoTask(Echo, str(tmp_path)), [{"name": "a"}], workers=1,
                       options=options)
        assert out == [{"name": "a"}]
    assert tried == []
