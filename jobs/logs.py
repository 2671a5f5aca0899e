"""Logging for the CLI: plain lines on stderr, or one JSON object per line with --log-json.

stdout is reserved for the command's result (its last line is one JSON object), so every
log record goes to stderr either way.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

LOGGER = "loom"
_state = {"json": False}


def setup(json_logs: bool = False, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            timestamp=False))
    else:
        handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger(LOGGER)
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    _state["json"] = json_logs


def json_enabled() -> bool:
    return _state["json"]


def say(message: str, **fields) -> None:
    """A progress line (stage done, reused, ...) with optional structured fields."""
    logging.getLogger(LOGGER).info(message, extra=fields)


def error(message: str, **fields) -> None:
    logging.getLogger(LOGGER).error(message, extra=fields)
