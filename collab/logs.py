"""Log set-up: one event per line, `key=value` fields, to stderr."""

from __future__ import annotations

import logging

__all__ = ["configure_logging"]

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT)
    # websockets logs every failed handshake at INFO; collab logs what matters itself.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLogger().level))
