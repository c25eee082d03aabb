"""One daphne process, with request heads bounded and every refusal answered.

    python -m generator_site.daphne_process DAPHNE_ARGS...   (what serve.py starts)

Daphne's HTTP server is twisted's HTTPChannel, whose limits are 16 KiB for one
line and 16 KiB for the request line and headers together. Past the first it
closed the connection without an answer (a long URL: the client saw nothing);
past the second it wrote a bare `400 Bad Request`. Here both ceilings are
HEAD_SLACK times the farm's own limits (GENERATOR_MAX_URL_BYTES,
GENERATOR_MAX_HEADER_BYTES): up to them the request reaches the ASGI middleware
(generator_site/request_limits.py), which answers 414/431 in the endpoint's
format; past them this channel answers 414/431 in plain text itself. Either way
the client reads why. Memory per connection stays bounded by the ceilings.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.web import http

# Once refused, the connection is half-closed and what the client still sends is
# read and dropped (closing with unread data would reset the connection and could
# take the answer with it), for this long at most.
LINGER_SECONDS = 5


class BoundedHTTPChannel(http.HTTPChannel):
    """HTTPChannel with ceilings set from the farm's limits and answered refusals.
    MAX_LENGTH and totalHeadersSize are twisted's own knobs; the class attributes
    are set by `install`."""

    _refused = False
    _linger = None

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        # `_receivedHeaderSize` counts this request's head so far (0 before its first line).
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            limit = self.totalHeadersSize
            self.refuse(431, b"Request Header Fields Too Large", f"the request head is over {limit} bytes")
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._receivedHeaderSize == 0:  # nothing of this request yet: the request line
            self.refuse(414, b"URI Too Long", f"the request line is over {self.MAX_LENGTH} bytes")
        else:
            self.refuse(431, b"Request Header Fields Too Large", f"a header line is over {self.MAX_LENGTH} bytes")

    def refuse(self, status: int, reason: bytes, text: str) -> None:
        body = text.encode() + b"\n"
        head = b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % (
            status,
            reason,
            len(body),
        )
        self.transport.write(head + b"Connection: close\r\n\r\n" + body)
        self._refused = True
        self.clearLineBuffer()
        if hasattr(self.transport, "loseWriteConnection"):
            self.transport.loseWriteConnection()
            self._linger = reactor.callLater(LINGER_SECONDS, self.transport.abortConnection)
        else:
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        super().connectionLost(reason)


def install() -> None:
    """Makes daphne build BoundedHTTPChannel, with ceilings from the settings."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "generator_site.settings")
    # As asgi.py says, and before the settings are read here (they are read once,
    # so asgi.py's own default came too late in this process): every request runs
    # on a thread of its own, and without the pool each opened a new PostgreSQL
    # connection, a backend forked per submit.
    os.environ.setdefault("GENERATOR_DB_POOL", "true")
    from daphne import http_protocol, server
    from django.conf import settings

    from generator_site.request_limits import HEAD_SLACK

    url_limit, header_limit = settings.GENERATOR_MAX_URL_BYTES, settings.GENERATOR_MAX_HEADER_BYTES
    BoundedHTTPChannel.MAX_LENGTH = HEAD_SLACK * max(url_limit, header_limit)
    BoundedHTTPChannel.totalHeadersSize = HEAD_SLACK * (url_limit + header_limit)

    class BoundedHTTPFactory(http_protocol.HTTPFactory):
        def protocol(self):  # what ServerFactory.buildProtocol calls for each connection
            return http._GenericHTTPChannelProtocol(BoundedHTTPChannel())

    server.HTTPFactory = BoundedHTTPFactory


def main() -> None:
    install()
    from daphne.cli import CommandLineInterface

    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
