"""Server log set-up: --log-level, --log-format text|json, and the request id that log lines of a call carry.

A servicer binds the id of the request it is answering (request_scope, then bind_request_id); every
line logged on that thread meanwhile carries it: as `"request_id"` in JSON, after the message in text.
Lines hold only what the code logs: the formatter adds time, level, logger, the request id and, for an
exception, its traceback; it never adds request material (headers, bodies, signatures, credentials).
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Iterator, TextIO

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(request_suffix)s"

_REQUEST_ID: ContextVar[str] = ContextVar("authz_request_id", default="")


@contextmanager
def request_scope() -> Iterator[None]:
    """The extent of one call: an id bound inside it is gone afterwards (server threads are reused)."""
    token = _REQUEST_ID.set("")
    try:
        yield
    finally:
        _REQUEST_ID.reset(token)


def bind_request_id(request_id: str) -> None:
    """From here to the end of the enclosing request_scope, log lines carry `request_id`."""
    _REQUEST_ID.set(request_id)


def current_request_id() -> str:
    return _REQUEST_ID.get()


class _RequestIdFilter(logging.Filter):
    """Puts the bound request id on every record (a record that already has one keeps it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = getattr(record, "request_id", None) or _REQUEST_ID.get()
        record.request_id = rid
        record.request_suffix = f" [request_id={rid}]" if rid else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and request_id when known."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", "") or _REQUEST_ID.get()
        if rid:
            line["request_id"] = rid
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


def handler(log_format: str, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing `log_format` lines (text or json) to `stream` (stderr), request ids included."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}")
    out = logging.StreamHandler(stream if stream is not None else sys.stderr)
    out.addFilter(_RequestIdFilter())
    out.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    return out


def configure(level: str, log_format: str, stream: TextIO | None = None) -> None:
    """Send the process's log lines to `stream` (stderr) at `level`, as text or JSON lines."""
    if level not in LOG_LEVELS:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(LOG_LEVELS)}")
    logging.basicConfig(level=level, handlers=[handler(log_format, stream)], force=True)
