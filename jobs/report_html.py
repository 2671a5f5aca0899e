"""The HTML run report: one self-contained page (inline SVG plots, inline CSS, no scripts,
no network) built from what the stages wrote: manifests, their tables and training metrics.

`collect` reads a run's stages (the objects `loom demo` / `loom run` return) or, for
`loom report WORKDIR`, the newest version of each dataset root plus every checkpoint run.
"""

from __future__ import annotations

import collections
import datetime as dt
import html
import io
import json
import posixpath

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from loom.jobs.ops import dataset_roots  # noqa: E402
from loom.schemas import manifest as mf  # noqa: E402
from loom.schemas import storage  # noqa: E402
from loom.transforms.sniff import sniff  # noqa: E402

REPORT_HTML = "report.html"
SNIFF_BYTES = 4096
SNIFF_MAX_FILES = 2000
plt.rcParams["svg.hashsalt"] = "loom"  # stable element ids: the same data, the same page
plt.rcParams["svg.fonttype"] = "none"  # text stays text: smaller pages, faster to write


def _version_stage(uri: str) -> dict | None:
    found = mf.read_manifest(uri)
    if found is None:
        return None
    return {"stage": found.stage, "version": found.version, "uri": uri, "counts": found.counts,
            "datasets": {t: storage.join(uri, t) for t in found.tables}}


def stages_of_workdir(workdir: str) -> dict[str, dict]:
    """name -> stage object: the newest version per (root, stage, shard kind), and every
    checkpoint run that left training metrics."""
    workdir = storage.absolute(workdir)
    out: dict[str, dict] = {}
    for root in dataset_roots(workdir):
        newest: dict[tuple, tuple[str, str]] = {}
        for d in storage.list_dirs(root):
            m = mf.read_manifest(d)
            if m is None:
                continue
            key = (m.stage, m.lineage.get("stage_hint"))
            if key not in newest or m.created_at > newest[key][0]:
                newest[key] = (m.created_at, d)
        for (stage, hint), (_, d) in sorted(newest.items(), key=lambda kv: kv[1][0]):
            name = posixpath.basename(root.rstrip("/")) + (f"_{hint}" if hint else "")
            out[name if name not in out else f"{name}_{stage}"] = _version_stage(d) or {}
    for child in storage.list_dirs(workdir):
        for run in storage.list_dirs(child):
            metrics = storage.join(run, "metrics.parquet")
            if storage.exists(metrics):
                name = posixpath.basename(run.rstrip("/"))
                out[f"train_{name.split('-')[0]}_{name[-6:]}"] = {
                    "stage": "train", "version": name, "uri": run,
                    "datasets": {"metrics": metrics}, "counts": {}}
    return out


def collect(stages: dict[str, dict]) -> dict:
    """Everything the page shows, as plain data (tests read it too)."""
    data: dict = {"stages": [], "rejected": collections.Counter(), "examples": {},
                  "synth": [], "negatives": {}, "positives": {}, "losses": {}, "eval": {},
                  "mining": {}, "warnings": []}
    for name, s in stages.items():
        uri, stage = s.get("uri"), s.get("stage")
        data["stages"].append({"name": name, "stage": stage, "version": s.get("version"),
                               "reused": s.get("reused"), "counts": s.get("counts", {})})
        found = mf.read_manifest(uri) if uri and stage != "train" else None
        if stage == "ingest" and found:
            data["examples"] = {k.split(".", 1)[1]: v for k, v in found.counts.items()
                                if k.startswith("examples.")}
            _rejected(uri, found, data["rejected"])
        elif stage == "synth" and found:
            data["synth"].append({"name": name, "version": found.version,
                                  "llm_calls": found.counts.get("llm_calls", 0),
                                  "cache_hits": found.counts.get("cache_hits", 0),
                                  "backend": found.lineage.get("backend"),
                                  "model": found.lineage.get("llm_model"),
                                  "cost_usd": found.counts.get("cost_usd")})
        elif stage == "mine" and found:
            extra = found.lineage.get("extra") or {}
            data["mining"] |= extra.get("modalities") or {}
            data["warnings"] += [f"mine: {w}" for w in extra.get("warnings") or []]
            t = mf.read_table(uri, found, "triples",
                              ["query_modality", "positive_score", "negatives"]).to_pylist()
            for row in t:
                data["positives"].setdefault(row["query_modality"], []).append(
                    row["positive_score"])
                for n in row["negatives"]:
                    data["negatives"].setdefault(n["modality"], []).append(n["score"])
        elif stage == "eval" and found:
            from loom.pipelines.evaluate import table_from_rows

            data["eval"] |= table_from_rows(mf.read_table(uri, found, "metrics").to_pylist())
        elif stage == "train":
            metrics = (s.get("datasets") or {}).get("metrics")
            if metrics and storage.exists(metrics):
                t = storage.read_parquet([metrics], columns=["step", "loss"]).to_pydict()
                data["losses"][name] = (t["step"], t["loss"])
                if t["step"] and not data["stages"][-1]["counts"]:  # a run's own numbers
                    data["stages"][-1]["counts"] = {
                        "steps": len(t["step"]), "last_step": max(t["step"]),
                        "first_loss": round(t["loss"][0], 4),
                        "last_loss": round(t["loss"][-1], 4)}
    return data


def _rejected(uri: str, found: mf.Manifest, into: collections.Counter) -> None:
    """(reason, modality) counts; a rejected file's modality is sniffed from its first bytes
    (it was never decoded), or guessed from its name once the file is gone."""
    rows = mf.read_table(uri, found, "rejected", ["uri", "reason"]).to_pylist()
    for i, r in enumerate(rows):
        source = r["uri"].split("#", 1)[0]
        head = b""
        if i < SNIFF_MAX_FILES:
            try:
                head = storage.read_bytes(source, SNIFF_BYTES)
            except (OSError, ValueError):
                head = b""
        modality, _ = sniff(head, source)
        into[(r["reason"], modality.value if modality else "unknown")] += 1


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def loss_figure(losses: dict[str, tuple[list, list]]):
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, (steps, loss) in losses.items():
        ax.plot(steps, loss, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE (mean over Matryoshka sizes)")
    ax.set_title("training loss")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def eval_figure(ev: dict[str, dict]):
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = list(ev)
    sizes = sorted({d for e in ev.values() for d in e.get("by_dim") or {}}, key=int)
    series = [(f"r@1 dim {d}", lambda e, d=d: ((e.get("by_dim") or {}).get(d) or {}).get("r@1"))
              for d in sizes] or [("r@1", lambda e: e.get("r@1"))]
    series += [(k, lambda e, k=k: e.get(k)) for k in ("untrained_r@1", "random_r@1",
                                                      "lexical_r@1")
               if any(k in e for e in ev.values())]
    width = 0.8 / len(series)
    for j, (label, get) in enumerate(series):
        vals = [get(ev[n]) or 0.0 for n in names]
        ax.bar([i + j * width for i in range(len(names))], vals, width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names)
    ax.set_ylabel("recall@1 (held-out)")
    ax.set_title("retrieval vs baselines")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def heatmap_cells(ev: dict[str, dict]) -> tuple[list[str], list[str], dict]:
    """(query modalities, target modalities, {(q, t): (r@1, lift)}) of the eval table,
    lift = r@1 - max(random, untrained) r@1; natural pairs (`:natural`) are kept apart."""
    cells = {}
    for name, e in ev.items():
        q, _, t = name.partition("->")
        if e.get("r@1") is None:
            continue
        base = max(e.get("random_r@1") or 0.0, e.get("untrained_r@1") or 0.0)
        cells[(q, t)] = (e["r@1"], e["r@1"] - base)
    rows = sorted({q for q, _ in cells}, key=lambda m: (m.count("+"), m))
    cols = sorted({t for _, t in cells})
    return rows, cols, cells


def heatmap_figure(ev: dict[str, dict]):
    """R@1 for every (query modality, target modality): the any-to-any picture at a
    glance; each cell also shows its lift over the better baseline."""
    rows, cols, cells = heatmap_cells(ev)
    grid = [[cells.get((q, t), (float("nan"), 0.0))[0] for t in cols] for q in rows]
    fig, ax = plt.subplots(figsize=(1.3 * len(cols) + 2.5, 0.5 * len(rows) + 1.6))
    im = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for i, q in enumerate(rows):
        for j, t in enumerate(cols):
            if (q, t) in cells:
                r1, lift = cells[(q, t)]
                ax.text(j, i, f"{r1:.2f}\n{lift:+.2f}", ha="center", va="center", fontsize=7,
                        color="white" if r1 < 0.6 else "black")
    ax.set_xticks(range(len(cols)), cols, fontsize=8, rotation=20)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("target")
    ax.set_ylabel("query")
    ax.set_title("held-out R@1 (and lift over max(random, untrained))", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


def _figures(data: dict) -> dict[str, str]:
    figs: dict[str, str] = {}
    main = {"corpus": "images", "ingest": "examples", "synth": "pairs", "shard": "rows",
            "mine": "triples", "train": "steps", "backfill": "embedded"}
    bars = [(f"{s['name']}\n{main[s['stage']]}", s["counts"][main[s["stage"]]])
            for s in data["stages"] if s["stage"] in main
            and isinstance(s["counts"].get(main[s["stage"]]), int | float)]
    if bars:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.bar(range(len(bars)), [v for _, v in bars], color="#4c72b0")
        ax.set_xticks(range(len(bars)), [n for n, _ in bars], fontsize=7)
        ax.set_ylabel("rows")
        ax.set_title("per-stage output")
        fig.tight_layout()
        figs["stage_counts"] = _svg(fig)
    if data["rejected"]:
        reasons = sorted({r for r, _ in data["rejected"]})
        modalities = sorted({m for _, m in data["rejected"]})
        fig, ax = plt.subplots(figsize=(7, 3.2))
        bottom = [0] * len(reasons)
        for m in modalities:
            vals = [data["rejected"].get((r, m), 0) for r in reasons]
            ax.bar(reasons, vals, bottom=bottom, label=m)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_ylabel("rejected files")
        ax.set_title("rejected by reason and modality")
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        figs["rejected"] = _svg(fig)
    if data["synth"]:
        fig, ax = plt.subplots(figsize=(5, 3))
        names = [s["name"] for s in data["synth"]]
        ax.bar(names, [s["llm_calls"] for s in data["synth"]], label="LLM calls")
        ax.bar(names, [s["cache_hits"] for s in data["synth"]],
               bottom=[s["llm_calls"] for s in data["synth"]], label="cache hits")
        ax.set_title("synth: calls and cache hits")
        ax.legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        figs["synth"] = _svg(fig)
    if data["negatives"]:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for m, scores in sorted(data["negatives"].items()):
            ax.hist(scores, bins=30, alpha=0.55, label=f"negatives: {m}")
        pos = [v for vs in data["positives"].values() for v in vs if v is not None]
        if pos:
            ax.hist(pos, bins=30, histtype="step", color="black", label="positives")
        ax.set_xlabel("cosine similarity to the query")
        ax.set_title("hard-negative scores")
        ax.legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        figs["negatives"] = _svg(fig)
    if data["losses"]:
        figs["loss"] = _svg(loss_figure(data["losses"]))
    if data["eval"]:
        figs["eval"] = _svg(eval_figure(data["eval"]))
        figs["heatmap"] = _svg(heatmap_figure(data["eval"]))
    return figs


def _counts_table(counts: dict) -> str:
    """A stage's counts as a small two-column table (dotted keys grouped under their
    head: `examples.image` sits under `examples`), not a JSON blob."""
    if not counts:
        return "-"
    rows = []
    for key, value in sorted(counts.items(), key=lambda kv: kv[0].split(".", 1)):
        head, dot, rest = key.partition(".")
        label = f"&nbsp;&nbsp;{html.escape(rest)}" if dot and head in counts else \
            html.escape(key)
        shown = (f"{value:,.3f}" if isinstance(value, float) else f"{value:,}"
                 if isinstance(value, int) else html.escape(json.dumps(value, sort_keys=True)))
        rows.append(f"<tr><td>{label}</td><td class=num>{shown}</td></tr>")
    return f"<table class=counts><tbody>{''.join(rows)}</tbody></table>"


def _table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3f}"
        if isinstance(v, dict):
            return _counts_table(v)
        return html.escape("-" if v is None else str(v))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _eval_tables(ev: dict[str, dict]) -> str:
    """One table per modality pair: a row per Matryoshka size (the largest is the full)."""
    parts = []
    for pair, e in ev.items():
        by_dim = e.get("by_dim") or {}
        rows = [[d, m.get("r@1"), m.get("r@5"), m.get("ndcg@10")]
                for d, m in sorted(by_dim.items(), key=lambda kv: int(kv[0]))]
        base = ", ".join(f"{k} {e[k]:.3f}" for k in ("random_r@1", "untrained_r@1",
                                                      "lexical_r@1") if e.get(k) is not None)
        parts.append(f"<h3>{html.escape(pair)}</h3><p class=note>{int(e.get('queries', 0))} "
                     f"queries, gallery {int(e.get('gallery', 0))}; baselines: {base}</p>"
                     + _table(["Matryoshka size", "r@1", "r@5", "ndcg@10"], rows))
    return "".join(parts)


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:980px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}
figure{margin:1em 0}figure svg{max-width:100%;height:auto}.note{color:#666;font-size:13px}
table.counts{margin:0;font-size:12px}table.counts td{border:0;padding:0 6px}
td.num{text-align:right;font-variant-numeric:tabular-nums}"""


def render(data: dict, title: str = "loom run report") -> str:
    figs = _figures(data)
    sec = []
    sec.append("<h2>Stages</h2>" + _table(
        ["name", "stage", "version", "reused", "counts"],
        [[s["name"], s["stage"], s["version"], s["reused"], s["counts"]] for s in data["stages"]]))
    if "stage_counts" in figs:
        sec.append(f"<figure id=fig-stage_counts>{figs['stage_counts']}</figure>")
    sec.append("<h2>Rejected inputs</h2>")
    if data["rejected"]:
        sec.append(_table(["reason", "modality", "files"],
                          [[r, m, n] for (r, m), n in sorted(data["rejected"].items())]))
        sec.append(f"<figure id=fig-rejected>{figs['rejected']}</figure>")
    else:
        sec.append("<p class=note>none</p>")
    if data["synth"]:
        rows = []
        for s in data["synth"]:
            total = s["llm_calls"] + s["cache_hits"]
            cost = s["cost_usd"] if s["cost_usd"] is not None else (
                0.0 if s["backend"] == "offline" else None)
            rows.append([s["name"], s["backend"], s["model"], s["llm_calls"], s["cache_hits"],
                         f"{s['cache_hits'] / total:.0%}" if total else "-",
                         "not recorded" if cost is None else f"${cost:.2f}"])
        sec.append("<h2>Synth</h2>" + _table(
            ["name", "backend", "model", "LLM calls", "cache hits", "hit rate", "cost"], rows))
        sec.append(f"<figure id=fig-synth>{figs['synth']}</figure>")
    if data["warnings"]:
        sec.insert(0, "<h2>Warnings</h2><ul>" + "".join(
            f"<li>{html.escape(w)}</li>" for w in data["warnings"]) + "</ul>")
    if "negatives" in figs:
        sec.append("<h2>Hard negatives</h2>" + _table(
            ["modality", "negatives", "mean score"],
            [[m, len(v), sum(v) / len(v)] for m, v in sorted(data["negatives"].items()) if v]))
        if data["mining"]:
            sec.append(_table(
                ["modality", "asked", "kept", "fill", "score floor", "mean cosine", "collapsed"],
                [[m, p.get("asked"), p.get("kept"), p.get("fill"), p.get("floor"),
                  p.get("mean_cosine"), p.get("collapsed")]
                 for m, p in sorted(data["mining"].items())]))
        sec.append(f"<figure id=fig-negatives>{figs['negatives']}</figure>")
    if "loss" in figs:
        sec.append("<h2>Training</h2>" + _table(
            ["run", "steps", "first loss", "last loss"],
            [[n, len(s), lv[0], lv[-1]] for n, (s, lv) in data["losses"].items() if lv]))
        sec.append(f"<figure id=fig-loss>{figs['loss']}</figure>")
    if data["eval"]:
        sec.append("<h2>Held-out retrieval</h2>"
                   f"<figure id=fig-heatmap>{figs['heatmap']}</figure>"
                   + _eval_tables(data["eval"]))
        sec.append(f"<figure id=fig-eval>{figs['eval']}</figure>")
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width'><link rel=icon href='data:,'><title>{html.escape(title)}"
            f"</title><style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class=note>written {when}</p>{''.join(sec)}</body></html>")


def write_html(path: str, stages: dict[str, dict], title: str = "loom run report",
               data: dict | None = None) -> dict:
    data = collect(stages) if data is None else data
    storage.write_atomic(path, render(data, title).encode())
    return {"html": path, "plots": len(_figure_ids(data))}


def _figure_ids(data: dict) -> list[str]:
    return [k for k in ("rejected", "synth", "negatives", "losses", "eval") if data.get(k)] + (
        ["heatmap"] if data.get("eval") else [])


def report_workdir(workdir: str, output: str | None = None) -> dict:
    """`loom report WORKDIR`: the page for whatever the workdir holds."""
    stages = stages_of_workdir(workdir)
    if not stages:
        raise FileNotFoundError(f"no dataset versions or training runs under {workdir}")
    path = output or storage.join(storage.absolute(workdir), REPORT_HTML)
    out = write_html(path, stages, f"loom report: {posixpath.basename(workdir.rstrip('/'))}")
    return {"stage": "report", "version": None, "report": path, "datasets": {"report": path},
            "counts": {"stages": len(stages), "plots": out["plots"]}, "reused": False}
