"""Ray Data reads through the filesystem loom resolves for a URI.

Left alone, Ray Data builds its own GCS filesystem for `gs://`: it ignores
STORAGE_EMULATOR_HOST (a read against the emulator hangs) and any settings loom's storage
layer applies. Passing loom's pyarrow filesystem and the paths inside it keeps one storage
layer for every reader and writer.
"""

from __future__ import annotations

import ray.data

from loom.schemas import storage


def read_parquet_ds(uris: list[str], **kwargs) -> ray.data.Dataset:
    """`ray.data.read_parquet` over loom URIs (all local or all on one bucket's store)."""
    if not uris:
        raise ValueError("no Parquet files to read")
    resolved = [storage.resolve(u) for u in uris]
    fs = resolved[0][0]
    return ray.data.read_parquet([p for _, p in resolved], filesystem=fs, **kwargs)
