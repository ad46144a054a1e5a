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

__all__ = ["configure_logging", "fields"]

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
