"""How far behind a WebSocket client is, so a log stream can wait for it, or give up.

ASGI gives a WebSocket sender no back-pressure: daphne writes each frame at once
into Twisted's buffer for the connection, which grows without bound while the
client does not read (20 such viewers of a chatty build held 354 MB in daphne).
So the stream measures that buffer itself: the bytes autobahn and Twisted hold
for the connection, not yet taken by the kernel. Past `high` bytes it sends
nothing until the client has taken the buffer down to `low`; a client that has
not within `patience` seconds is too slow, and the stream closes it.

Only daphne is known: under another server (or asgiref's test communicator)
nothing is measured and frames go out unpaced.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
from collections.abc import Callable


class ClientTooSlow(Exception):
    pass


class SendBuffer:
    def __init__(self, unsent: Callable[[], int] | None, *, high: int, patience: float) -> None:
        self._unsent = unsent
        self.high = high
        self.low = high // 2
        self.patience = patience

    @classmethod
    def of(cls, send, *, high: int, patience: float) -> SendBuffer:
        """The buffer behind an ASGI `send` callable."""
        return cls(_daphne_unsent(send), high=high, patience=patience)

    @property
    def measured(self) -> bool:
        return self._unsent is not None

    def unsent(self) -> int:
        return self._unsent() if self._unsent else 0

    async def wait_for_room(self) -> None:
        """Returns once the client has room for another frame; raises
        ClientTooSlow if it has not taken its buffer down in time."""
        if self.unsent() <= self.high:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.patience
        delay = 0.01
        while self.unsent() > self.low:
            if loop.time() >= deadline:
                raise ClientTooSlow(f"the client left {self.unsent():,} bytes unread for {self.patience:g} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)


def _daphne_unsent(send) -> Callable[[], int] | None:
    protocol = _daphne_protocol(send)
    transport = getattr(protocol, "transport", None)
    if not all(hasattr(transport, name) for name in ("dataBuffer", "offset", "_tempDataLen")):
        return None  # not a plain TCP transport (TLS in daphne itself): not measured

    def unsent() -> int:
        # Twisted's buffer (abstract.FileDescriptor), then autobahn's queue of
        # writes it has not handed to Twisted yet.
        queued = sum(len(data) for data, _ in getattr(protocol, "send_queue", ()))
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen + queued

    return unsent


def _daphne_protocol(send):
    """daphne's `send` is `partial(server.handle_reply, protocol)`; channels'
    session middleware wraps it in a method whose object keeps it as `real_send`."""
    for _ in range(8):
        if isinstance(send, functools.partial):
            protocol = send.args[0] if send.args else None
            return protocol if hasattr(protocol, "sendMessage") else None
        send = getattr(getattr(send, "__self__", None), "real_send", None)
        if send is None:
            return None
    return None


def _find_malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_malloc_trim = _find_malloc_trim()
_trim_scheduled = False
TRIM_DELAY_SECONDS = 3.0  # daphne lets go of a closed connection's buffers within a couple of seconds


def give_back_memory_soon() -> None:
    """Returns to the system the heap pages that closed connections' buffers held.

    glibc raises its mmap threshold to the size of large blocks once freed, so
    buffers of a megabyte or so (a slow client's) come from the heap, and their
    pages stay with the process after they are freed; malloc_trim(0) hands free
    pages back. At most once per TRIM_DELAY_SECONDS however many connections close.
    """
    global _trim_scheduled
    if _malloc_trim is None or _trim_scheduled:
        return

    def trim() -> None:
        global _trim_scheduled
        _trim_scheduled = False
        _malloc_trim(0)

    _trim_scheduled = True
    asyncio.get_running_loop().call_later(TRIM_DELAY_SECONDS, trim)
