"""The only socket code: the listening socket, each connection's transport, rooms in memory, keepalive."""

from .app import CollabServer, run

__all__ = ["CollabServer", "run"]
