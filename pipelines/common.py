"""Shared wiring of stage drivers: reuse check, the result object, timing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from loom.schemas import storage
from loom.schemas.manifest import Manifest, VersionWriter


class BadInput(ValueError):
    """A bad input or config: the CLI exits 2 with this one-line reason."""


def result(stage: str, manifest: Manifest, version_dir: str, reused: bool, **extra) -> dict:
    """The stage's JSON object (the contract's `stage`, `version`, `datasets`, ...)."""
    datasets = {t: storage.join(version_dir, t) for t in manifest.tables}
    return {
        "stage": stage,
        "version": manifest.version,
        "uri": version_dir,
        "datasets": datasets,
        "counts": manifest.counts,
        "reused": reused,
    } | extra


def reuse(writer: VersionWriter, stage: str, **extra) -> dict | None:
    """An unchanged rerun finds its version and does no work."""
    existing = writer.existing()
    if existing is None:
        return None
    return result(stage, existing, writer.dir, True, **(existing.lineage.get("extra", {}) | extra))


@contextlib.contextmanager
def timed(into: dict, key: str = "seconds") -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        into[key] = round(time.perf_counter() - start, 2)


def cleanup_work(version_dir: str) -> None:
    storage.delete(storage.join(version_dir, "_work"))
