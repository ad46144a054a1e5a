"""Log set-up: one event per line, with its fields (`conn`, `room`, `code`...), as text or JSON.

Log calls pass fields as `extra=fields(conn=..., room=...)`; the text format
appends them as `key=value`, the JSON format makes them keys of the object.
Both start with the time in ISO 8601 with its zone, in UTC like every time
collab shows (2026-12-01T07:31:57.826Z), so lines sort and parse alike
wherever the server runs.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .units import format_time

__all__ = ["configure_logging", "fields", "log_everywhere"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a log call: the event's fields."""
    return {"fields": values}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return format_time(record.created)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = getattr(record, "fields", None)
        if not extra:
            return line
        first, newline, rest = line.partition("\n")
        pairs = " ".join(f"{key}={_text(value)}" for key, value in extra.items())
        return f"{first} {pairs}{newline}{rest}"


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": format_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str, ensure_ascii=False)


def _text(value: Any) -> str:
    text = str(value)
    return repr(text) if not text or any(char.isspace() or char in "='\"" for char in text) else text


def configure_logging(level: str, format: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter() if format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # websockets logs every failed handshake at INFO; collab logs what matters itself.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))


class _Fields(logging.Filter):
    """Adds the same fields to every line (`worker=2 process=host:pid:ab`): which process of a cluster logged it."""

    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__()
        self.values = values

    def filter(self, record: logging.LogRecord) -> bool:
        record.fields = {**getattr(record, "fields", {}), **self.values}
        return True


def log_everywhere(**values: Any) -> None:
    """Add `values` as fields of every log line from now on (to those given before)."""
    for handler in logging.getLogger().handlers:
        for old in [item for item in handler.filters if isinstance(item, _Fields)]:
            handler.removeFilter(old)
            values = {**old.values, **values}
        handler.addFilter(_Fields(values))
