"""collab's benchmark harness (issue 5): `scripts/bench --help`, and docs/benchmarks.md for the results.

Modules, bottom up: `wsclient` (a cheap WebSocket client), `peer` (a y-websocket client that counts and
keeps what it receives), `workload` (typists' keystrokes as real pycrdt updates), `servers` (collab, the
reference, or any URL), `scenarios/*` (one module per scenario), `report` (the closing table), `cli`.
"""
