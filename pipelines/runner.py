"""Engine dispatch: run a stage's work items on the chosen engine's adapter.

The adapters (`pipelines/beam/runner.py`, `pipelines/ray/runner.py`) import only
`pipelines/work.py`; this module names them by import path and loads the chosen one on
first use, so there is no import cycle and neither heavy engine is imported until needed.
Engine settings travel as one typed `EngineOptions` passed down with the call.
"""

from __future__ import annotations

import importlib

from loom.pipelines.engine import (  # noqa: F401 - re-exported: the stages import them here
    BeamOptions,
    Engine,
    EngineOptions,
    engine_kind,
)
from loom.pipelines.exchange import Exchange
from loom.pipelines.work import (  # noqa: F401 - the stages' one import for work items
    StageTask,
    dumps,
    file_items,
    load_item,
    merge_results,
    row_items,
)

ADAPTERS: dict[Engine, str] = {Engine.BEAM: "loom.pipelines.beam.runner:run_beam",
                               Engine.RAY: "loom.pipelines.ray.runner:run_ray"}
EXCHANGES: dict[Engine, str] = {Engine.BEAM: "loom.pipelines.beam.runner:run_beam_exchange",
                                Engine.RAY: "loom.pipelines.ray.runner:run_ray_exchange"}


def _adapter(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def run_stage(engine: Engine | str | EngineOptions, task: StageTask, items: list[dict],
              **engine_opts) -> list[dict]:
    """Dispatch to the chosen engine's adapter (imported on first use: each is heavy)."""
    if not items:
        return []
    opts = EngineOptions.of(engine)
    if opts.kind == Engine.BEAM:
        engine_opts.setdefault("options", opts.beam)
    return _adapter(ADAPTERS[opts.kind])(task, items, **engine_opts)


def run_exchange(engine: Engine | str | EngineOptions, exchange: Exchange, items: list[dict]
                 ) -> list[tuple[str, bytes]]:
    """An exchange (`pipelines/exchange.py`) on the chosen engine: the last step's pairs,
    sorted by key."""
    if not items:
        return []
    opts = EngineOptions.of(engine)
    extra = {"options": opts.beam} if opts.kind == Engine.BEAM else {}
    return _adapter(EXCHANGES[opts.kind])(exchange, items, **extra)
