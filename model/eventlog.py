"""Structured logs: one JSON object per line, one line per event."""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


class JsonLineFormatter(logging.Formatter):
    """Render a record as one JSON line: time, level, component, event and its fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "component": record.name,
            "event": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(entry, default=str, separators=(",", ":"))


def setup_logging(level: str = "info", stream: Any = None) -> None:
    """Send all fedser logs to ``stream`` (stderr by default) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with structured ``fields``."""
    logger.log(level, event, extra={"fields": fields})
