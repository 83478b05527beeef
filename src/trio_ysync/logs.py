"""Log output an operator can read, or a machine: plain text lines or one JSON object per line.

The server's log records carry their facts as attributes as well as in the message (``room``,
``client``, ``identity``, ``connection``, ``code``, ``reason``, ``duration``, ``event``), so the
JSON lines can be filtered without parsing messages::

    {"time": "2026-12-02T12:00:00.123Z", "level": "INFO", "logger": "trio_ysync.server",
     "message": "...", "event": "connection_closed", "room": "notes", "code": 1000, ...}
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

__all__ = ["FIELDS", "TEXT_FORMAT", "WORKER_TEXT_FORMAT", "JSONFormatter", "WorkerTag"]

#: The format of text lines.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The format of text lines of a worker process (``serve --workers``): which one it is.
WORKER_TEXT_FORMAT = "%(asctime)s %(levelname)s worker %(worker)s %(name)s: %(message)s"

#: The record attributes a JSON line includes when a record has them.
FIELDS = (
    "event", "room", "client", "identity", "connection", "code", "reason", "duration", "worker"
)  # fmt: skip


class WorkerTag(logging.Filter):
    """Gives every record that passes the number of the worker process that logs it."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        """Tag ``record``; let it pass."""
        record.worker = self.worker
        return True


class JSONFormatter(logging.Formatter):
    """Formats each record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a line of JSON."""
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        line: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)
