"""Ray Data reads of loom's Parquet files through loom's own storage layer.

`ray.data.read_parquet` builds its own GCS filesystem for `gs://` (it ignores
STORAGE_EMULATOR_HOST: a read against the emulator hangs) and lists files in a task that
asks for a whole CPU, which never schedules where training took the rest of each node (a
deadlock on 1-CPU nodes). loom already knows its files: each becomes one read task of
`read_cpus` CPUs that reads through `schemas.storage` (the pyarrow filesystem loom
resolves for the URI), so every reader and writer shares one storage layer.
"""

from __future__ import annotations

import random

import pyarrow as pa
import ray.data

from loom.schemas import storage

READ_CPUS = 0.25  # a read task's share: fits beside train workers that leave 0.5 a node


def _read(batch: pa.Table) -> pa.Table:
    return storage.read_parquet(batch.column("uri").to_pylist())


def read_parquet_ds(uris: list[str], shuffle_seed: int | None = None,
                    read_cpus: float = READ_CPUS) -> ray.data.Dataset:
    """One block per file, read on the cluster; `shuffle_seed` shuffles the file order."""
    if not uris:
        raise ValueError("no Parquet files to read")
    files = list(uris)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(files)
    ds = ray.data.from_items([{"uri": u} for u in files], override_num_blocks=len(files))
    return ds.map_batches(_read, batch_size=1, batch_format="pyarrow", num_cpus=read_cpus)
