"""One local Ray session per process, sized for small machines (a cluster address wins)."""

from __future__ import annotations

import os
import tempfile

import ray


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
    ray.init(
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
