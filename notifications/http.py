"""One POST to a checked receiver, bounded in time and in what is read.

Connects to the address receivers.check() approved (TLS still verifies the
host name), follows no redirect (a 3xx is an answer like any other: a redirect
could lead where the check would refuse), gives up at a total deadline however
slowly the receiver trickles its answer, and reads at most a few KiB of it.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from notifications.receivers import Receiver


class SendError(Exception):
    """No answer: connection refused or reset, timeout, TLS failure."""


@dataclass(frozen=True)
class Answer:
    status: int
    excerpt: str


def post(
    receiver: Receiver, body: bytes, headers: dict[str, str], *, connect_timeout: float, timeout: float, max_bytes: int
) -> Answer:
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((receiver.address, receiver.port), timeout=min(connect_timeout, timeout))
    except OSError as exc:
        raise SendError(f"could not connect to {receiver.address}:{receiver.port}: {_why(exc)}") from None
    # The socket's timeout bounds each read; this bounds them all together.
    current = [sock]  # TLS replaces the socket: the watchdog shuts whichever is in use
    watchdog = threading.Timer(max(deadline - time.monotonic(), 0), lambda: _shut(current[0]))
    watchdog.start()
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        if receiver.scheme == "https":
            sock = current[0] = ssl.create_default_context().wrap_socket(sock, server_hostname=receiver.host)
        connection = http.client.HTTPConnection(receiver.host, receiver.port)
        connection.sock = sock  # already connected, to the checked address
        connection.request("POST", receiver.target, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read(max_bytes)
        return Answer(response.status, data.decode("utf-8", errors="replace"))
    except (OSError, http.client.HTTPException) as exc:
        if time.monotonic() >= deadline:
            raise SendError(f"no complete answer within {timeout:g} s") from None
        raise SendError(_why(exc)) from None
    finally:
        watchdog.cancel()
        sock.close()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


def _why(exc: Exception) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return f"{exc.__class__.__name__}: {exc}"[:300]
