"""The one stage contract every engine adapter runs.

A stage is built from a frozen, picklable config, does its expensive set-up once per
worker in `setup`, then maps input record batches to named output tables. It never
imports an engine: `pipelines/beam` and `pipelines/ray` run any stage the same way.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Protocol, runtime_checkable

import pyarrow as pa


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one instance of a stage needs; engine adapters ask for it (Ray: the actor's
    num_cpus/num_gpus/memory, and how many actors each node holds; Beam: resource hints
    on the stage's ParDo). memory_mb 0: nothing beyond the default."""

    num_cpus: float = 0.5
    num_gpus: float = 0.0
    memory_mb: int = 0


@runtime_checkable
class Stage(Protocol):
    name: ClassVar[str]
    input_schema: ClassVar[pa.Schema]
    output_schemas: ClassVar[dict[str, pa.Schema]]
    # What one instance needs. A stage whose need follows its config also defines
    # `resources_for(*args)` (the factory's arguments), read before any instance exists.
    resources: ClassVar[Resources]

    def setup(self) -> None: ...

    def process_batch(self, batch: pa.RecordBatch) -> dict[str, pa.Table]: ...

    def teardown(self) -> None: ...


class BaseStage:
    """Defaults for stages with no set-up or tear-down."""

    resources: ClassVar[Resources] = Resources()

    def setup(self) -> None:
        pass

    def teardown(self) -> None:
        pass
