"""`storage.read_bytes` with a limit, on local files: the bytes are the same as an
unbounded read cut at the limit, whatever the file's size says."""

from __future__ import annotations

import os

import pytest
from loom.schemas import storage


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 100_000])
@pytest.mark.parametrize("limit", [1, 4096, 4097, 1 << 28])
def test_limited_read_is_the_prefix(tmp_path, size, limit):
    path = tmp_path / "f.bin"
    data = os.urandom(size)
    path.write_bytes(data)
    assert storage.read_bytes(str(path), limit=limit) == data[:limit]
    assert storage.read_bytes(f"file://{path}", limit=limit) == data[:limit]


def test_limited_read_of_a_sizeless_file_reads_on():
    """/proc files stat as 0 bytes but hold more: the read goes on past fstat's size."""
    whole = storage.read_bytes("/proc/self/maps")
    assert len(whole) > 100
    got = storage.read_bytes("/proc/self/maps", limit=1 << 20)
    assert len(got) > 100 and got.splitlines()[0] == whole.splitlines()[0]
    assert len(storage.read_bytes("/proc/self/maps", limit=50)) == 50


def test_limited_read_of_a_file_grown_after_the_stat(tmp_path, monkeypatch):
    """The file grows between fstat and read: all of it up to the limit comes back."""
    path = tmp_path / "g.bin"
    path.write_bytes(b"a" * 10)
    real_fstat = os.fstat

    def fstat_then_grow(fd):
        st = real_fstat(fd)
        with open(path, "ab") as f:
            f.write(b"b" * 5000)
        return st

    monkeypatch.setattr(storage.os, "fstat", fstat_then_grow)
    assert storage.read_bytes(str(path), limit=1 << 20) == b"a" * 10 + b"b" * 5000
    assert storage.read_bytes(str(path), limit=12) == b"a" * 10 + b"bb"
