"""The run report: a Markdown page with the eval table, stage timings and plots."""

from __future__ import annotations

import io
import json

import matplotlib.pyplot as plt
from loom.jobs.report_html import REPORT_HTML, collect, eval_figure, loss_figure, write_html
from loom.schemas import manifest as mf
from loom.schemas import storage

REPORT = "report.md"


def write_report(out_root: str, stages: dict[str, dict], eval_table: dict[str, dict]) -> dict:
    """Writes `<root>/<version>/report.md` + PNG plots; the version hashes its inputs."""
    inputs = sorted(f"{name}:{s.get('version')}" for name, s in stages.items())
    version = mf.version_id("report", inputs, {})
    out = storage.join(out_root, version)
    path = storage.join(out, REPORT)
    page = storage.join(out, REPORT_HTML)
    if storage.exists(path) and storage.exists(page):
        return {"stage": "report", "version": version, "report": path, "reused": True,
                "datasets": {"report": path, "html": page}, "counts": {}}
    data = collect(stages)  # one read of the run's outputs serves both pages
    plots = []
    for name, make, source in (("loss.png", loss_figure, data["losses"]),
                               ("eval.png", eval_figure, eval_table)):
        if source:
            fig = make(source)
            png = io.BytesIO()  # through loom's storage: the workdir may be gs://
            fig.savefig(png, format="png", dpi=100)
            plt.close(fig)
            storage.write_atomic(storage.join(out, name), png.getvalue())
            plots.append(name)
    lines = ["# loom run report", "", "## Held-out retrieval", ""]
    cols = ["r@1", "r@5", "random_r@1", "untrained_r@1", "lexical_r@1", "queries", "gallery"]
    lines += ["| pair | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, e in eval_table.items():
        cells = [f"{e[c]:.3f}" if isinstance(e.get(c), float) else str(e.get(c, "-"))
                 for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Stages", "", "| stage | version | reused | seconds | counts |",
              "|---|---|---|---|---|"]
    for name, s in stages.items():
        secs = sum(v for v in (s.get("timings") or {}).values() if isinstance(v, int | float))
        lines.append(f"| {name} | {s.get('version')} | {s.get('reused')} | {secs:.1f} | "
                     f"{json.dumps(s.get('counts', {}))} |")
    lines += [""] + [f"![{p}]({p})" for p in plots] + [""]
    storage.write_atomic(path, "\n".join(lines).encode())
    html = write_html(page, stages, data=data)  # the same run as one self-contained page
    return {"stage": "report", "version": version, "report": path, "reused": False,
            "datasets": {"report": path, "html": page},
            "counts": {"plots": len(plots), "html_plots": html["plots"]}}
