"""How the feeder's log lines look: text for people (the default), or JSON lines for log shippers.

``MD_LOG_FORMAT=json``: one JSON object per line with stable keys: ``ts`` (epoch seconds), ``time`` (ISO 8601,
UTC), ``level``, ``logger``, ``message``, and ``exc`` (the traceback) when there is one. Secrets never reach a
log line in either format: URLs are masked where they are logged.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLines(logging.Formatter):
    """A log record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": round(record.created, 6),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def configure_logging(level: str, style: str) -> None:
    """The root logger to standard error, in `style` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if style == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
