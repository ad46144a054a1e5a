"""collab: a self-hostable real-time collaboration server speaking the y-websocket protocol."""

__version__ = "0.3.0"
