"""Counts file opens for reading under one folder, in this process and in every Python
process started after `install` (decoder workers, Ray workers): an audit hook, put into
children through a `sitecustomize` on PYTHONPATH. Benchmarks use it to check that no
object is read twice; it changes nothing else.
"""

from __future__ import annotations

import collections
import os
import pathlib
import sys
import tempfile

_SITE = '''
import os, sys
_root = os.environ.get("LOOM_READS_ROOT")
_log = os.environ.get("LOOM_READS_LOG")
if _root and _log:
    _fd = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _hook(event, args):
        if event != "open" or not args or not isinstance(args[0], str):
            return
        path, mode, flags = (tuple(args) + (None, None))[:3]
        if not path.startswith(_root):
            return
        writes = (mode and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
        if not writes:
            os.write(_fd, (path + "\\n").encode("utf-8", "surrogateescape"))

    sys.addaudithook(_hook)
'''


class ReadCounter:
    """`install(root)` once, before any worker starts; `counts()` per path since then."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="loom-reads-")
        self.log = os.path.join(self.dir, "reads.log")

    def install(self, root: str) -> None:
        site = pathlib.Path(self.dir, "site")
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(_SITE)
        os.environ["LOOM_READS_ROOT"] = os.path.abspath(root)
        os.environ["LOOM_READS_LOG"] = self.log
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
        sys.path.insert(0, str(site))
        import sitecustomize  # noqa: F401 - this process too

    def mark(self) -> int:
        return os.path.getsize(self.log) if os.path.exists(self.log) else 0

    def counts(self, since: int = 0) -> collections.Counter:
        if not os.path.exists(self.log):
            return collections.Counter()
        with open(self.log, "rb") as f:
            f.seek(since)
            return collections.Counter(f.read().decode("utf-8", "surrogateescape").split("\n")[:-1])
