"""Engine choice and settings as typed values: what a caller passes down to `run_stage`.

Imported by the dispatcher and by the adapters alike (it imports neither), so the
adapters never import the dispatcher back.
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict

BeamValue = str | int | float | bool


class Engine(str, enum.Enum):
    BEAM = "beam"
    RAY = "ray"


class BeamOptions(BaseModel):
    """Beam pipeline options (Dataflow: runner, project, region, temp_location,
    sdk_container_image, ...); DirectRunner flags when no other runner is named."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    options: dict[str, BeamValue] = {}

    def args(self, workers: int = 2) -> list[str]:
        """Command-line style pipeline args: the local defaults, then the given options."""
        opts: dict[str, Any] = {"runner": "DirectRunner", "direct_num_workers": workers,
                                "direct_running_mode": "multi_threading"}
        if self.options.get("runner", "DirectRunner") != "DirectRunner":
            opts = {}
        opts |= self.options
        return [f"--{k}" if v is True else f"--{k}={v}" for k, v in opts.items() if v is not False]


class EngineOptions(BaseModel):
    """Which engine runs a stage's work items, and that engine's settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Engine = Engine.BEAM
    beam: BeamOptions = BeamOptions()

    @classmethod
    def of(cls, engine: Engine | str | EngineOptions) -> EngineOptions:
        return engine if isinstance(engine, EngineOptions) else cls(kind=Engine(engine))


def engine_kind(engine: Engine | str | EngineOptions) -> Engine:
    """The engine an `engine` argument names (stages record it in their results)."""
    return EngineOptions.of(engine).kind
