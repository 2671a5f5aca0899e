"""Reports of a `gs://` workdir are written there: Markdown, PNG plots and the HTML page."""

from __future__ import annotations

from loom.jobs.report import write_report
from loom.jobs.report_html import collect, stages_of_workdir
from loom.schemas import storage

from tests.conftest import BUCKET
from tests.jobs.report_workdir import make_workdir


def test_report_is_written_to_a_gs_workdir(tmp_path, gcs):
    make_workdir(str(tmp_path))
    stages = stages_of_workdir(str(tmp_path))
    root = f"gs://{BUCKET}/report-test/reports"
    out = write_report(root, stages, collect(stages)["eval"])
    assert out["report"].startswith(root) and out["datasets"]["html"].startswith(root)
    names = {e.uri.rsplit("/", 1)[-1] for e in storage.list_files(root)}
    assert {"report.md", "report.html", "loss.png", "eval.png"} <= names
    assert storage.read_bytes(storage.join(root, out["version"], "loss.png"))[:4] == b"\x89PNG"
    assert "Held-out retrieval" in storage.read_bytes(out["report"]).decode()
    assert write_report(root, stages, {})["reused"] is True
