"""Log output: one line per session lifecycle event, as text or JSON (``--log-format``).

Lifecycle lines carry structured fields in ``record.fields`` (event, session
prefix, peer, identity, code, ...). Credentials and payloads are never passed
to the logger, so no format can leak them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

FORMATS = ("text", "json")

#: Which process of ``--workers`` writes (sessiond/workers.py): empty in a lone daemon.
#: Text lines show it after the logger name, JSON lines as fields.
_process: dict[str, Any] = {}


def tag_process(**fields: Any) -> None:
    """Mark every log line of this process with *fields* (a worker's slot and PID);
    applies from the next :func:`configure`."""
    _process.clear()
    _process.update(fields)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_process)
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(log_format: str = "text", level: str = "INFO") -> None:
    """Send the daemon's logs to stderr in *log_format* at *level*."""
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r}: expected one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        tag = " ".join(f"{k}={v}" for k, v in _process.items())
        tag = f"[{tag}]" if tag else ""
        formatter = logging.Formatter(f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def lifecycle(
    logger: logging.Logger, event: str, session: str, level: int = logging.INFO, **fields: Any
) -> None:
    """Log one lifecycle event of a session (*session* is the short ID prefix)."""
    shown = {k: getattr(v, "name", v) for k, v in fields.items() if v is not None}
    text = " ".join(f"{k}={v}" for k, v in shown.items())
    logger.log(
        level,
        "session %s %s %s",
        session,
        event,
        text,
        extra={"fields": {"event": event, "session": session, **shown}},
    )
