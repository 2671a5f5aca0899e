"""The run report: a Markdown page with the eval table, stage timings and plots."""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jobs.report_html import REPORT_HTML, write_html  # noqa: E402
from schemas import manifest as mf  # noqa: E402
from schemas import storage  # noqa: E402

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
    if storage.is_remote(out):
        raise ValueError("reports are written to a local folder")
    os.makedirs(out, exist_ok=True)
    plots = []
    losses = {n: s["datasets"]["metrics"] for n, s in stages.items()
              if s.get("stage") == "train" and "metrics" in s.get("datasets", {})}
    if losses:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, uri in losses.items():
            if storage.exists(uri):
                t = storage.read_parquet([uri]).to_pydict()
                ax.plot(t["step"], t["loss"], label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("InfoNCE (mean over Matryoshka sizes)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "loss.png"), dpi=100)
        plt.close(fig)
        plots.append("loss.png")
    if eval_table:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        names = list(eval_table)
        series = ["r@1", "untrained_r@1", "random_r@1", "lexical_r@1"]
        width = 0.8 / len(series)
        for j, key in enumerate(series):
            vals = [eval_table[n].get(key, 0.0) for n in names]
            ax.bar([i + j * width for i in range(len(names))], vals, width, label=key)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names)
        ax.set_ylabel("recall@1 (held-out)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "eval.png"), dpi=100)
        plt.close(fig)
        plots.append("eval.png")
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
    html = write_html(page, stages)  # the same run as one self-contained HTML page
    return {"stage": "report", "version": version, "report": path, "reused": False,
            "datasets": {"report": path, "html": page},
            "counts": {"plots": len(plots), "html_plots": html["plots"]}}
