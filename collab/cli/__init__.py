"""The `collab` command: serve, export, import, token, revoke, rooms, history."""

from .main import main

__all__ = ["main"]
