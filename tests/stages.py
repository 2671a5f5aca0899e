"""A stage that does nothing but hand its items back: enough to run an engine's adapter."""

from __future__ import annotations

from loom.pipelines.work import StageTask


class Echo:
    def teardown(self) -> None:
        pass


class EchoTask(StageTask):
    """Returns each item as its result (build it as `EchoTask(Echo, version_dir)`)."""

    def open(self):
        return Echo()

    def run(self, stage, item: dict) -> dict:
        return item
