"""A real HTTP server on loopback that takes notifications, for the tests: it
answers as told (a status, after a delay, trickled, or not at all) and keeps
what it was sent."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Behaviour:
    status: int = 200
    body: bytes = b"ok"
    delay: float = 0.0  # before answering
    trickle: float = 0.0  # seconds between bytes of the status line and headers
    silent: bool = False  # read the request, never answer


@dataclass
class Receiver:
    behaviour: Behaviour = field(default_factory=Behaviour)
    received: list[Received] = field(default_factory=list)

    def start(self) -> Receiver:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                owner.received.append(Received(self.path, dict(self.headers.items()), body, time.monotonic()))
                b = owner.behaviour
                if b.silent:
                    time.sleep(30)
                    return
                time.sleep(b.delay)
                head = f"HTTP/1.1 {b.status} X\r\nContent-Length: {len(b.body)}\r\nConnection: close\r\n\r\n".encode()
                try:
                    if b.trickle:
                        for byte in head:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(b.trickle)
                    else:
                        self.wfile.write(head)
                    self.wfile.write(b.body)
                except OSError:
                    pass  # the sender gave up

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook?x=1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
