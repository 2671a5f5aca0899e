"""ensure_ray's start: Ray's own 30 s wait for a new node to register is retried, nothing else.

The stall itself (a raylet that registers after Ray's hard-coded wait on a loaded machine)
cannot be made to happen on demand, so `ray.init` is stood in for by a recorder here."""

from __future__ import annotations

import pytest
import ray
from loom.pipelines.ray import session

TIMED_OUT = ("The current node timed out during startup. This could happen because some of "
             "the raylet failed to startup or the GCS has become overloaded.")


@pytest.fixture
def calls(monkeypatch):
    log: list[str] = []
    monkeypatch.setattr(ray, "shutdown", lambda: log.append("shutdown"))
    monkeypatch.setattr(session._init_local.retry, "sleep", lambda _: None)
    return log


def test_a_start_that_times_out_is_shut_down_and_retried(monkeypatch, calls):
    outcomes = [Exception(TIMED_OUT), Exception(TIMED_OUT), None]

    def init(**kwargs):
        calls.append(f"init {kwargs['num_cpus']}")
        if (e := outcomes.pop(0)) is not None:
            raise e

    monkeypatch.setattr(ray, "init", init)
    session._init_local(num_cpus=2)
    assert calls == ["init 2", "shutdown", "init 2", "shutdown", "init 2"]


def test_three_timeouts_raise_and_other_errors_are_not_retried(monkeypatch, calls):
    def timeout(**_):
        calls.append("init")
        raise Exception(TIMED_OUT)

    monkeypatch.setattr(ray, "init", timeout)
    with pytest.raises(Exception, match="timed out during startup"):
        session._init_local(num_cpus=2)
    assert calls.count("init") == 3

    calls.clear()

    def broken(**_):
        calls.append("init")
        raise ValueError("bad object_store_memory")

    monkeypatch.setattr(ray, "init", broken)
    with pytest.raises(ValueError):
        session._init_local(num_cpus=2)
    assert calls == ["init"]
