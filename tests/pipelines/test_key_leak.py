"""A planted Gemini key never leaves the environment, across the whole chain.

ingest -> synth (`--llm gemini`, pointed at the offline server; once more at a dead
port, so the error path runs too) -> shard -> train one tiny epoch, each as a `loom`
subprocess with GEMINI_API_KEY planted. Every file the chain writes (datasets,
manifests, caches, reports, checkpoints, Ray's session logs) and every captured
stdout/stderr is grepped for the key and its fragments. The stage-level check is
tests/synth/test_stage.py::test_gemini_key_never_leaks (fast tier).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest
from loom.jobs.corpus import generate_corpus
from loom.synth.offline_server import offline_server

from tests.key_leak import PLANTED_KEY, grep_tree, leaks
from tests.transforms import hostile_archives as ha

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_planted_key_never_leaks_across_the_chain(tmp_path):
    work = tmp_path / "w"
    generate_corpus(str(work / "corpus"), 8, 8, seed=5)
    media = work / "corpus" / "media"
    (media / "shard-000.tar").write_bytes(ha.webdataset_tar()[0])
    (media / "records.jsonl").write_text(json.dumps(
        {"parts": [{"text": "x"}, {"image": "http://169.254.169.254/latest/meta-data/"}]}) + "\n")
    ray_tmp = tempfile.mkdtemp(prefix="lk-ray-", dir="/tmp")  # short: Ray's socket paths
    env = os.environ | {"GEMINI_API_KEY": PLANTED_KEY, "RAY_TMPDIR": ray_tmp,
                        "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    outputs: list[str] = []

    def loom(*args: str, ok=(0,)) -> dict:
        res = subprocess.run([sys.executable, "-m", "loom.jobs.cli", *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
        outputs.extend([res.stdout, res.stderr])
        assert res.returncode in ok, res.stderr[-2000:]
        return json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else {}

    try:
        with offline_server() as url:
            ingest = loom("ingest", "--input", str(media), "--output", str(work / "ingest"))
            assert ingest["counts"]["rejected.forbidden_reference"] >= 1
            # the error path first: a dead endpoint, a budget of one call (exit 3)
            loom("synth", "--examples", str(work / "ingest"), "--output", str(work / "dead"),
                 "--llm", "gemini", "--base-url", f"http://127.0.0.1:{_closed_port()}",
                 "--max-calls", "1", ok=(1, 3))
            synth = loom("synth", "--examples", str(work / "ingest"), "--output",
                         str(work / "pairs"), "--llm", "gemini", "--base-url", url)
            assert synth["counts"]["pairs"] > 0
        loom("shard", "--input", str(work / "pairs"), "--output", str(work / "shards"),
             "--rows-per-shard", "16")
        train = loom("train", "--shards", str(work / "shards"), "--output", str(work / "ckpt"),
                     "--epochs", "1", "--batch-size", "8")
        assert train["checkpoint"]
        files, found = grep_tree(str(work), ray_tmp)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    print(f"KEY LEAK: grepped {files} files and {len(outputs)} captured streams")
    assert files > 50
    assert found == {}
    assert [leaks(o) for o in outputs] == [[]] * len(outputs)
