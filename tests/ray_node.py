"""`ray start` with a longer wait for the new node to register (a loaded CI machine).

`ray start` gives a raylet 30 s (hard-coded) to appear in the GCS, then exits; on a busy
machine that fails every try. This wraps Ray's own lookup so each call keeps asking for up
to LOOM_RAY_REGISTER_S (300 s) before Ray sees a failure. Run as a script:
`python tests/ray_node.py start --head ...` takes exactly `ray start`'s arguments.
"""

from __future__ import annotations

import os
import time

import ray._private.services as services

_lookup = services.get_node


def _patient_get_node(*args, **kwargs):
    deadline = time.monotonic() + float(os.environ.get("LOOM_RAY_REGISTER_S", "300"))
    while True:
        try:
            return _lookup(*args, **kwargs)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


if __name__ == "__main__":
    services.get_node = _patient_get_node
    from ray.scripts.scripts import main

    main()
