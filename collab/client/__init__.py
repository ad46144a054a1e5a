"""A y-websocket client around a pycrdt Doc: for applications, bots, scripts and tests.

    from pycrdt import Text
    from collab.client import Client

    async with Client("wss://collab.example.com/notes/plan", token=TOKEN) as client:   # synced here
        content = client.doc.get("content", type=Text)
        content += "hello\\n"                       # sent to the server at once
        await client.wait_for_change(timeout=60)   # someone else typed

It speaks the protocol the stock JavaScript provider speaks: sync step 1 on
connect, step 2 in answer to the server's step 1, awareness. Local changes to
`client.doc` are sent as updates; what the server sends is applied to it. A
client, its Doc and its connection belong to the thread of the event loop that
started it: use them from that thread only (another thread hands a change over
with `loop.call_soon_threadsafe`); a change made from elsewhere raises.

Opening. `async with Client(url)` (or `await client.start()`) connects and
returns once the first sync is done, so the document holds the server's
content. It raises at once what no retry can fix: `RefusedError` for a refusal
(its `code` is the close code, 4401 a bad token, 4403 a token for another
document; or the HTTP status of a refused upgrade, 403 a foreign origin), and
the TLS or URL error of a connection that cannot work
(`ssl.SSLCertVerificationError` for a certificate it does not trust or that
names another host, websockets' `InvalidMessage` for a ws:// URL pointed at a
TLS port, `ValueError` for what is no WebSocket URL). It gives up with
`TimeoutError` after `sync_timeout` seconds (30) of trying, naming the last
failure.

Reconnecting. A connection lost in a way another attempt may fix (the server
going away or restarting, 1001 and 1012; 1011 and 1013, try again later; 1014;
1006, no close frame; a refused, reset or timed-out TCP connection, or one cut
during the handshake, as a server killed meanwhile or a load balancer with no
backend does; an HTTP 500, 502, 503 or 504) is opened again after a delay that
doubles from 0.5 s up to `Backoff.max_delay` (30 s), jittered to between half
and all of it so that the clients of a restarted server do not all come back at
once. Every connection must sync within `sync_timeout`, or it is dropped and
counts as a failed attempt; one counts as a success only once it stayed synced
`Backoff.stable_after` seconds (10), so a server that syncs and closes at once
is not reconnected to at full speed. The new connection resyncs: the client
sends its state vector and the server's step 2 brings what it missed, and the
client answers the server's step 1 with what the server lacks, edits made while
disconnected included. It publishes its presence again. Anything else ends the
client: 1000, a fault of the client's own (1002, 1003, 1007, 1008, 1009; a
message from the server larger than `max_size`, 256 MiB, which
`Client(url, max_size=...)` raises) and every 4000-4999 application code (4401,
4403; 4410 the document was deleted, 4411 renamed).
`reconnect=Backoff(max_attempts=5)` gives up after 5 attempts in a row that
failed (`ClosedError`, the last failure as its cause); `reconnect=False` makes
one attempt.

State. `client.state` is a `State`: CONNECTING (the first attempt), CONNECTED
(open, not yet synced), SYNCED, RECONNECTING (lost: waiting out the backoff,
trying again) and CLOSED (not connected, not trying: before `start`, after
`close`, or stopped, `client.error` saying why). `on_state=callback` is called
with each new state; `await client.wait_state(State.SYNCED)` waits for one.

Waiting. Every wait takes a timeout (TimeoutError) and raises what stopped the
client if it stops meanwhile (`RefusedError`, `ClosedError`, ...); a client
that is reconnecting is waited for.

- `wait_synced()`: until the current connection is synced.
- `wait_for_change()`: until the server brought a change this method has not
  reported yet (none is missed between two calls; the first sync's content is
  not a change, what a resync brings is).
- `wait_for_awareness()`: the same for other clients' presence; returns `others`.
- `wait_until(predicate)`: until `predicate()` holds, re-checked after every
  message and every state change.
- `resync()`: until the server has everything the client has (it answered a
  sync step 1 sent after it), through a reconnect too. It proves the server's
  room has it, not its disk: `POST /api/docs/NAME/update` answers once stored.

Sending. Edits go out as they are made, never waiting: a server that stops
reading while more than `max_unsent` bytes (128 MiB) wait for it is dropped
and reconnected to, and the new connection's sync carries what it lacked.

Tokens. `token=` sends the token as the `token.<TOKEN>` WebSocket subprotocol,
which collab reads like `?token=` in the URL (either works), and which stays
out of URLs and access logs. A `?token=` in the URL is shown as `token=***` in
what the client logs and raises.

TLS. A `wss://` URL verifies the server's certificate, and that it names the
URL's host, with Python's default trust store; `cafile=` trusts a private CA
(or a self-signed certificate) instead, `ssl=` takes an `ssl.SSLContext` of the
caller's own. Verification is never skipped silently: a context given with
`CERT_NONE` or without `check_hostname` is logged as a warning.

Presence. `set_awareness(state)` publishes the client's own (None: gone),
renewed every `presence_interval` seconds (15) while connected, since a stock
client drops a state it has not heard of for 30 s. `awareness` holds every
state the server told the current connection about, the client's own once
echoed, and `others` all but its own; both are empty while no connection is
open. After a reconnect, `wait_for_awareness()` reports what changed during
the gap (someone left, came or moved) once the new connection's greeting is
in, and nothing if everyone is as before.

Low level, for tests of the server. `connect()` opens one connection, sends
sync step 1 and returns without waiting, with no sync deadline, and never
reconnects; `wait_closed()` then returns the close code and reason the server
ended it with. `send_raw(frame)` sends any frame as is, `ws` is the current
connection, `received_frames` counts the frames received, `permission_denied`
is the reason of the server's last auth message (a read-only token's edits are
dropped), and `synced`, an `asyncio.Event` kept for old callers, is set while
the current connection is synced (waiting on it hangs when the server refuses:
use `wait_synced()`).
"""

from ..errors import ClosedError, RefusedError
from .client import Client
from .policy import Backoff, State, retryable_close

__all__ = ["Backoff", "Client", "ClosedError", "RefusedError", "State", "retryable_close"]
