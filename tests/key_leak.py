"""A planted, recognizable fake credential and a grep for it over everything a run leaves."""

from __future__ import annotations

import os

PLANTED_KEY = "AIzaSyPLANTED-loom-fake-key-7f3a9c0d1e2b"
# Fragments too: a key cut, quoted or masked badly would still show one of these.
_NEEDLES = (PLANTED_KEY, PLANTED_KEY[-16:], PLANTED_KEY[:20])


def leaks(text: str | bytes) -> list[str]:
    blob = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    return [n for n in _NEEDLES if n.encode() in blob]


def grep_tree(*roots: str) -> tuple[int, dict[str, list[str]]]:
    """(files read, {path: needles found}) over every file under roots, binary included."""
    found: dict[str, list[str]] = {}
    n = 0
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = os.path.join(dirpath, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                n += 1
                if hits := leaks(data):
                    found[path] = hits
    return n, found
