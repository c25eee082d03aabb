"""A git server over HTTP for tests: `git http-backend` behind a small threaded
WSGI server on a loopback address of the test's choice, serving the bare
repositories of one folder, and writing down every request's headers (who sent
a token where)."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


class GitHttpServer:
    def __init__(self, root: Path, address: str = "127.0.0.1") -> None:
        self.root = root
        self.requests: list[dict[str, str]] = []  # each request's path and HTTP headers
        self._server = make_server(address, 0, self._app, server_class=_ThreadingServer, handler_class=_Quiet)
        self.address, self.port = address, self._server.server_port
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, repository: str, host: str | None = None) -> str:
        return f"http://{host or self.address}:{self.port}/{repository}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ, start_response):
        headers = {
            key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")
        }
        self.requests.append({"path": environ["PATH_INFO"], **headers})
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        cgi = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": environ["REQUEST_METHOD"],
            "PATH_INFO": environ["PATH_INFO"],
            "QUERY_STRING": environ.get("QUERY_STRING", ""),
            "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": environ.get("REMOTE_ADDR", ""),
            **{key: environ[key] for key in ("HTTP_CONTENT_ENCODING", "HTTP_GIT_PROTOCOL") if key in environ},
        }
        output = subprocess.run(["git", "http-backend"], input=body, env=cgi, capture_output=True).stdout
        head, _, payload = output.partition(b"\r\n\r\n")
        status, response_headers = "200 OK", []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = value.strip()
            elif name:
                response_headers.append((name, value.strip()))
        start_response(status, response_headers)
        return [payload]
