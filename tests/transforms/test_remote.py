"""Remote references: refused unless allowed, and then never to a private address.

Only loopback traffic: a local HTTP server counts the requests it gets; every refused
reference must leave it at zero.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading

import pyarrow as pa
import pytest
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.ingest import IngestConfig, IngestStage
from loom.transforms.remote import RemoteConfig, address_problem, fetch
from loom.transforms.sniff import DecodeError

from tests.transforms.hostile_archives import png


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.server.hits.append((self.path, self.headers.get("Host")))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
            return
        body = png() if self.path == "/img.png" else b"x" * 5000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.hits = []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _refused(url: str, cfg: RemoteConfig, resolver=None) -> str:
    with pytest.raises(DecodeError) as e:
        fetch(url, cfg, resolver=resolver)
    return e.value.reason.value


def test_address_checks():
    for bad in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                "100.64.0.1", "0.0.0.0", "224.0.0.1", "240.0.0.1", "::1", "fe80::1",
                "fd00:ec2::254", "fc00::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
                "100.100.100.200", "not-an-ip"):
        assert address_problem(bad), bad
    for good in ("93.184.216.34", "8.8.8.8", "2606:4700::1111"):
        assert address_problem(good) is None, good


def test_refused_without_contact(server):
    port = server.server_address[1]
    calls: list[str] = []

    def to_loopback(host, _port):  # a DNS answer pointing at the local server
        calls.append(host)
        return ["127.0.0.1"]

    allowed = RemoteConfig(allowed_hosts=("data.example.com", "127.0.0.1", "localhost",
                                          "metadata.google.internal", "169.254.169.254",
                                          "fd00:ec2::254", "rebind.example.com"),
                           resolve_overrides=(("localhost", "127.0.0.1"),))
    # not allowed at all: no lookup either
    assert _refused(f"http://other.example.com:{port}/img.png", allowed,
                    to_loopback) == "forbidden_reference"
    assert calls == []
    # allowed hosts whose address is loopback: resolved once, refused before connecting
    assert _refused(f"http://data.example.com:{port}/img.png", allowed,
                    to_loopback) == "forbidden_reference"
    assert calls == ["data.example.com"]
    assert _refused(f"http://127.0.0.1:{port}/img.png", allowed) == "forbidden_reference"
    assert _refused(f"http://localhost:{port}/img.png", allowed) == "forbidden_reference"
    assert _refused(f"http://[::ffff:127.0.0.1]:{port}/", allowed) == "forbidden_reference"
    # a public answer mixed with a private one (rebinding-style): refused
    assert _refused(f"http://rebind.example.com:{port}/", allowed,
                    lambda h, p: ["93.184.216.34", "127.0.0.1"]) == "forbidden_reference"
    # metadata endpoints: refused even though allowed_hosts names them
    for url in ("http://metadata.google.internal/computeMetadata/v1/",
                "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/"):
        assert _refused(url, allowed, to_loopback) == "forbidden_reference"
    # other schemes and URL tricks
    for url in ("ftp://data.example.com/x", "file:///etc/passwd", "gopher://data.example.com/",
                f"http://user:pw@data.example.com:{port}/", "http:///nohost"):
        assert _refused(url, allowed, to_loopback) == "forbidden_reference"
    assert server.hits == []


def test_fetch_path_with_a_permissive_check(server):
    """The socket path itself (Host header, size cap, no redirects), on loopback only:
    the address check is swapped for one that lets 127.0.0.1 through."""
    port = server.server_address[1]
    cfg = RemoteConfig(allowed_hosts=("data.example.com",), max_bytes=4000,
                       resolve_overrides=(("data.example.com", "127.0.0.1"),))
    loopback_ok = lambda a: None if a == "127.0.0.1" else "not loopback"  # noqa: E731
    body = fetch(f"http://data.example.com:{port}/img.png", cfg, check_address=loopback_ok)
    assert body == png()
    assert server.hits[-1] == ("/img.png", f"data.example.com:{port}")
    with pytest.raises(DecodeError) as e:  # 5000 bytes > 4000
        fetch(f"http://data.example.com:{port}/big", cfg, check_address=loopback_ok)
    assert e.value.reason.value == "too_large"
    with pytest.raises(DecodeError) as e:
        fetch(f"http://data.example.com:{port}/redirect", cfg, check_address=loopback_ok)
    assert e.value.reason.value == "unreadable" and "302" in e.value.message
    assert len(server.hits) == 3
    server.hits.clear()


def test_manifest_references_through_ingest(server, tmp_path):
    """A manifest of remote and local references: every remote one is refused, the local
    file is read, the server is never contacted, and /etc/passwd is never read."""
    port = server.server_address[1]
    (tmp_path / "ok.png").write_bytes(png())
    refs = [f"http://127.0.0.1:{port}/img.png", f"https://data.example.com:{port}/img.png",
            f"http://not-allowed.example.com:{port}/img.png",
            "http://metadata.google.internal/computeMetadata/v1/instance/image",
            "http://169.254.169.254/latest/meta-data/iam/image", f"ftp://127.0.0.1:{port}/x.png",
            "file:///etc/passwd", "../../../../etc/passwd", "ok.png"]
    lines = [json.dumps({"id": f"r{i}", "parts": [{"text": "a caption"}, {"image": r}]})
             for i, r in enumerate(refs)]
    manifest = tmp_path / "records.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    data = manifest.read_bytes()
    remote = RemoteConfig(allowed_hosts=("127.0.0.1", "data.example.com",
                                         "metadata.google.internal", "169.254.169.254"),
                          resolve_overrides=(("data.example.com", "127.0.0.1"),), timeout_s=2)
    stage = IngestStage(IngestConfig(spec=PreprocessingSpec(image_size=32), isolate=False,
                                     allowed_roots=(str(tmp_path),), remote=remote))
    out = stage.process_batch(pa.RecordBatch.from_pylist(
        [{"uri": str(manifest), "id": hashlib.sha256(data).hexdigest()}],
        schema=IngestStage.input_schema))
    reasons = {r["record_id"]: r["reason"] for r in out["rejected"].to_pylist()}
    assert reasons == {f"r{i}": "forbidden_reference" for i in range(len(refs) - 1)}
    assert out["examples"].num_rows == 1
    assert server.hits == []
