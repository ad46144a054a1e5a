"""Webhooks: signed JSON events an application can rely on, each delivered at least once, in order per document.

    change committed ──(same transaction)──> outbox tables (`collab.store.outbox`)
                                                   │  the one sender holding the lease (any process)
    sender: seal the debounced document.changed ───┤  describe it (state vector, export)
                                                   └─ POST each event to each URL, retry with backoff

`signing` signs and verifies (receivers may use `verify`), `events` writes
the bodies and the retry schedule (pure), `http` POSTs one request, `sender`
runs the loop and `describe` says what a document is now. The relay never
waits for any of it: a commit only adds rows, and the sender works from the
outbox on its own task, its database work queued with the commits on the
store's thread.
"""

from ..errors import InvalidSignatureError
from .signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "InvalidSignatureError", "sign", "verify"]
