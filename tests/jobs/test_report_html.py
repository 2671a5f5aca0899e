"""`loom report WORKDIR`: one self-contained HTML page with every section and plot.

The slow test opens the page in Debian's headless Chromium through the DevTools protocol:
no console errors, no failed requests, and every plot laid out with a nonzero size."""

from __future__ import annotations

import json
import re

import pytest
from loom.jobs.cli import app
from loom.jobs.report_html import collect, stages_of_workdir
from typer.testing import CliRunner

from tests.jobs.report_workdir import make_workdir

PLOTS = ["stage_counts", "rejected", "synth", "negatives", "loss", "eval", "heatmap"]


def test_collect_reads_every_source(tmp_path):
    make_workdir(str(tmp_path))
    data = collect(stages_of_workdir(str(tmp_path)))
    # An empty file has no content to sniff: its modality is unknown, whatever its name.
    assert data["rejected"] == {("truncated", "image"): 1, ("decode_error", "image"): 1,
                                ("empty", "unknown"): 1, ("unsupported_format", "unknown"): 1}
    assert data["synth"][0]["llm_calls"] == 30 and data["synth"][0]["cache_hits"] == 10
    assert sum(len(v) for v in data["negatives"].values()) == 60
    assert set(data["losses"]) == {"train_pft_abcdef", "train_ft_abcdef"}
    assert data["eval"]["text->image"]["by_dim"]["32"]["r@1"] == 0.3
    assert data["eval"]["text->image"]["r@1"] == 0.4  # the largest size on top
    assert data["eval"]["text->text"]["lexical_r@1"] == 0.45
    assert "lexical_r@1" not in data["eval"]["text->image"]


def test_report_cli_writes_one_self_contained_page(tmp_path):
    make_workdir(str(tmp_path))
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    page = open(out["report"], encoding="utf-8").read()
    for fig in PLOTS:
        assert f"id=fig-{fig}><svg" in page, fig
    assert "<script" not in page
    # nothing outside the page: no external URLs in src/href (the SVG namespace is not a fetch)
    assert not re.findall(r"(?:src|href)=[\"']?(?:https?:)?//", page)
    assert "Matryoshka size" in page and ">32<" in page and "$0.00" in page


def test_report_of_empty_dir_exits_2(tmp_path):
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2


# --- the page in a real browser (slow tier) ---------------------------------------------

def _chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


class DevTools:
    """The Chrome DevTools protocol over one page's websocket (websockets' sync client)."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=30)
        self.next_id, self.events = 0, []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                assert "error" not in msg, msg
                return msg["result"]
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        import time

        end = time.monotonic() + timeout
        for ev in self.events:
            if ev.get("method") == method:
                return ev
        while time.monotonic() < end:
            msg = json.loads(self.ws.recv(timeout=end - time.monotonic()))
            self.events.append(msg)
            if msg.get("method") == method:
                return msg
        raise TimeoutError(method)


def _load(dt: DevTools, url: str) -> tuple[dict, list, set]:
    """(figure id -> (tag, width, height), error events, URL schemes requested)."""
    dt.events.clear()
    dt.call("Page.navigate", url=url)
    dt.wait_for("Page.loadEventFired")
    sizes = dt.call("Runtime.evaluate", returnByValue=True, expression="""
        JSON.stringify([...document.querySelectorAll('figure')].map(f => {
          const e = f.querySelector('svg, img'); const r = e && e.getBoundingClientRect();
          return [f.id, e ? e.tagName : null, r ? r.width : 0, r ? r.height : 0];
        }))""")["result"]["value"]
    figures = {fid: (tag, w, h) for fid, tag, w, h in json.loads(sizes)}
    errors = [ev for ev in dt.events if ev.get("method") in (
        "Runtime.exceptionThrown", "Network.loadingFailed")
        or (ev.get("method") == "Runtime.consoleAPICalled"
            and ev["params"]["type"] in ("error", "assert"))
        or (ev.get("method") == "Log.entryAdded" and ev["params"]["entry"]["level"] == "error")]
    requests = {ev["params"]["request"]["url"].split(":", 1)[0] for ev in dt.events
                if ev.get("method") == "Network.requestWillBeSent"}
    return figures, errors, requests


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    import subprocess
    import time
    import urllib.request

    make_workdir(str(tmp_path / "work"))
    res = CliRunner().invoke(app, ["report", str(tmp_path / "work")])
    assert res.exit_code == 0, res.output
    page = json.loads(res.stdout.strip().splitlines()[-1])["report"]
    profile = tmp_path / "profile"
    proc = subprocess.Popen(
        [_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-extensions", "--disable-background-networking", "--disable-dev-shm-usage",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        end = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < end, "chromium did not start"
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            target = next(t for t in json.load(r) if t["type"] == "page")
        dt = DevTools(target["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            dt.call(f"{domain}.enable")
        figures, errors, requests = _load(dt, f"file://{page}")
        # the checks themselves catch a broken page
        bad = tmp_path / "bad.html"
        bad.write_text("<html><body><script>console.error('boom')</script>"
                       "<img src='missing.png'></body></html>")
        _, bad_errors, _ = _load(dt, f"file://{bad}")
        dt.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert len(bad_errors) >= 2, bad_errors
    assert not errors, errors
    assert requests <= {"file", "data"}, requests  # nothing from the network
    assert set(figures) == {f"fig-{p}" for p in PLOTS}, figures
    for fid, (tag, w, h) in figures.items():
        assert tag == "svg" and w > 100 and h > 100, (fid, tag, w, h)


def test_heatmap_has_a_cell_per_modality_pair():
    from loom.jobs.report_html import heatmap_cells

    ev = {"text->image": {"r@1": 0.5, "random_r@1": 0.1, "untrained_r@1": 0.2},
          "audio->text": {"r@1": 0.3, "random_r@1": 0.05, "untrained_r@1": 0.01},
          "text+image->video": {"r@1": 0.9, "random_r@1": 0.1, "untrained_r@1": 0.4}}
    rows, cols, cells = heatmap_cells(ev)
    assert rows == ["audio", "text", "text+image"] and cols == ["image", "text", "video"]
    assert cells[("text+image", "video")] == (0.9, 0.9 - 0.4)
    assert cells[("audio", "text")][1] == 0.3 - 0.05


def test_counts_are_tables_and_training_rows_have_numbers(tmp_path):
    from loom.jobs.report_html import render

    make_workdir(str(tmp_path))
    data = collect(stages_of_workdir(str(tmp_path)))
    page = render(data)
    stages_table = page.split("<h2>Stages</h2>", 1)[1].split("</table></td>", 1)[0]
    assert "{&quot;" not in page and "<td>{}</td>" not in page  # no raw JSON cells
    assert "<table class=counts>" in stages_table
    assert re.search(r"<td>&nbsp;&nbsp;image</td><td class=num>12</td>", page)
    train = [s for s in data["stages"] if s["stage"] == "train"]
    assert train and all(s["counts"]["steps"] == 10 and s["counts"]["last_step"] == 10
                         for s in train)


def test_eval_metrics_table_keeps_every_key_of_every_row():
    """Image pairs sort first and carry no lexical_* keys; BM25 must still be saved."""
    from loom.pipelines.evaluate import metrics_table, table_from_rows

    rows = [{"pair": "text->image", "dim": 64, "r@1": 0.4, "r@5": 0.8, "ndcg@10": 0.6,
             "random_r@1": 0.05, "queries": 20, "gallery": 20},
            {"pair": "text->text", "dim": 64, "r@1": 0.5, "r@5": 0.9, "ndcg@10": 0.7,
             "random_r@1": 0.05, "lexical_r@1": 0.45, "lexical_r@5": 0.8, "queries": 20,
             "gallery": 20}]
    t = metrics_table(rows)
    assert {"lexical_r@1", "lexical_r@5"} <= set(t.column_names)
    assert table_from_rows(t.to_pylist())["text->text"]["lexical_r@1"] == 0.45
    assert "lexical_r@1" not in table_from_rows(t.to_pylist())["text->image"]
