"""One local Ray session per process, sized for small machines (a cluster address wins)."""

from __future__ import annotations

import os
import tempfile

import ray
import tenacity


def _start_timed_out(e: BaseException) -> bool:
    """Ray's own 30 s wait for a new local node to register (hard-coded in
    ray._private.node): on a loaded machine the raylet can miss it and start fine later."""
    return "timed out during startup" in str(e)


@tenacity.retry(retry=tenacity.retry_if_exception(_start_timed_out),
                stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(2),
                before_sleep=lambda _: ray.shutdown(), reraise=True)
def _init_local(**kwargs) -> None:
    ray.init(**kwargs)


def ensure_ray(num_cpus: int | None = None, object_store_mb: int = 512) -> None:
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    tmp = os.environ.get("RAY_TMPDIR") or os.path.join(tempfile.gettempdir(), "loom-ray")
    os.makedirs(tmp, exist_ok=True)
    _init_local(
        num_cpus=num_cpus or min(2, os.cpu_count() or 1),
        object_store_memory=object_store_mb * 1024 * 1024,
        include_dashboard=False,
        _temp_dir=tmp,
        log_to_driver=False,
        configure_logging=True,
        logging_level="WARNING",
    )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
