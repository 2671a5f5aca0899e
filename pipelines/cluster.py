"""Where a run runs: one machine, or a cluster whose nodes share no disk.

Whether a run is multi-node comes from configuration, never from the nodes alive at start
(an autoscaled cluster starts with none): a Ray address that is not this machine's loopback
(`RAY_ADDRESS`, which `ray job submit` and KubeRay set for a job's driver) means nodes on
other hosts may run the work. There, a local path that workers read or write would name a
different disk on every node, so it is refused before any work (exit 2), unless the user
says every node mounts the same filesystem (`loom submit --shared-fs`, LOOM_SHARED_FS=1).
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from loom.pipelines.common import BadInput
from loom.schemas import storage

SHARED_FS_ENV = "LOOM_SHARED_FS"
_LOCAL_HOSTS = {"", "local", "auto", "localhost", "127.0.0.1", "::1", "0.0.0.0"}


def ray_address() -> str:
    return os.environ.get("RAY_ADDRESS", "").strip()


def is_multi_node(address: str | None = None) -> bool:
    """True when the configured Ray address can have nodes on other hosts."""
    address = ray_address() if address is None else address.strip()
    if address in ("", "local", "auto"):
        return False
    host = urlparse(address if "://" in address else f"ray://{address}").hostname or ""
    return host not in _LOCAL_HOSTS and not host.startswith("127.")


def shared_fs() -> bool:
    return os.environ.get(SHARED_FS_ENV, "").strip().lower() in ("1", "true", "yes")


def check_paths(address: str | None = None, shared: bool | None = None,
                **uris: str | None) -> None:
    """BadInput (exit 2) naming the first local path a multi-node run would use.
    `address`/`shared` default to RAY_ADDRESS / LOOM_SHARED_FS (the job's own config)."""
    shared = shared_fs() if shared is None else shared
    if not is_multi_node(address) or shared:
        return
    for field, uri in uris.items():
        if uri and not storage.is_remote(uri):
            raise BadInput(
                f"{field}={uri}: a local path on a multi-node Ray cluster "
                f"({address or ray_address()}) "
                "names a different disk on every node; use a gs://bucket/prefix URI, or "
                "--shared-fs (LOOM_SHARED_FS=1) if every node mounts the same filesystem there")


# Fields of a job spec's steps that name data (a `${id}` reference names an earlier step's
# output, checked through that step).
PATH_FIELDS = ("input", "examples", "shards", "pairs", "triples", "output", "init_root",
               "checkpoint_root", "ground_truth")


def check_spec_paths(spec, address: str | None = None, shared: bool | None = None) -> None:
    """check_paths over a JobSpec's workdir and every step's literal data paths (the ones
    the spec sets: a default such as synth's unused `checkpoint_root: checkpoints` is not
    a path the run reads; a stage checks what it does use when it starts)."""
    uris: dict[str, str | None] = {"workdir": spec.workdir}
    for i, step in enumerate(spec.stages):
        given = getattr(step, "model_fields_set", None)
        for field in PATH_FIELDS:
            if given is not None and field not in given:
                continue
            value = getattr(step, field, None)
            if isinstance(value, str) and not value.startswith("${"):
                uris[f"stages[{i}].{field}"] = value
    check_paths(address, shared, **uris)
