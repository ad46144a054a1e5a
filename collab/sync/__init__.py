"""The y-websocket domain without I/O: messages, updates, presence, rooms, per-connection rules.

Nothing here imports asyncio, websockets or a database (tests/test_layers.py checks it): it takes
bytes and the clock in and gives decisions and bytes out, so it is tested without a socket.
"""
