"""A simulated pool for bench/scale.py: one process, many Docker Engine API ports.

Each port is one "daemon" that answers what the farm asks of dockerd 20.10
(builds/engine/docker.py, pool/health.py) at once, with nothing built:

- `GET /_ping`, `GET /version`: the health check;
- `GET /info`: a daemon without user namespaces (a BuildKit build asks, builds/worker/cache_scope.py);
- `POST /build`: a chunked stream of `stream` lines, then `aux.ID` and
  "Successfully built/tagged", as dockerd streams a classic build;
- `POST /images/NAME/tag`: 201;
- `POST /images/NAME/push`: "Preparing"/"Pushed" per layer, then the
  `aux.Digest`, as dockerd streams a push.

    python bench/fake_engine.py --daemons 128 --ports-file ports.txt [--lines 20]

binds that many loopback ports (chosen by the kernel) and writes them, one a
line, to the ports file once every one listens. A build labelled
`fake-engine.lines=N` prints N lines instead of `--lines`, and one labelled
`fake-engine.seconds=S` spreads its output over S seconds. Not a test double: the tests
use real dockerd; this only loads the farm's scheduling and database.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

VERSION = {
    "Version": "20.10.24+dfsg1",
    "ApiVersion": "1.41",
    "MinAPIVersion": "1.12",
    "Os": "linux",
    "Arch": "amd64",
    "KernelVersion": "simulated",
}
# What GET /info answers: dockerd's own data root, no user namespace remapping.
INFO = {"ServerVersion": VERSION["Version"], "DockerRootDir": "/var/lib/docker", "SecurityOptions": ["name=seccomp"]}
_API_PREFIX = re.compile(r"^/v[0-9]+\.[0-9]+(?=/)")
_counter = itertools.count(1)


def sha256(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def build_stream(tag: str, lines: int) -> list[dict]:
    """`lines` log lines of a classic build, ending as dockerd's do."""
    image_id = sha256(f"{tag}-{next(_counter)}")
    chunks = [{"stream": "Step 1/3 : FROM busybox\n"}, {"stream": " ---> 0123456789ab\n"}]
    for number in range(max(lines - 5, 0)):
        chunks.append({"stream": f"simulated build output line {number + 1} of {tag}\n"})
    chunks += [
        {"stream": " ---> Running in 3f2a1b4c5d6e\n"},
        {"aux": {"ID": image_id}},
        {"stream": f"Successfully built {image_id[7:19]}\n"},
        {"stream": f"Successfully tagged {tag}\n"},
    ]
    return chunks


def push_stream(repository: str, tag: str) -> list[dict]:
    digest = sha256(f"{repository}:{tag}-{next(_counter)}")
    layers = ["5f70bf18a086", "c2a4b0fbc1d3"]
    return [
        {"status": f"The push refers to repository [{repository}]"},
        *({"status": "Preparing", "progressDetail": {}, "id": layer} for layer in layers),
        *({"status": "Pushed", "progressDetail": {}, "id": layer} for layer in layers),
        {"status": f"{tag}: digest: {digest} size: 527"},
        {"progressDetail": {}, "aux": {"Tag": tag, "Digest": digest, "Size": 527}},
    ]


class EngineHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as docker-py expects
    lines_per_build = 20

    def log_message(self, format, *args) -> None:  # noqa: A002  (quiet: thousands of requests)
        pass

    def do_GET(self) -> None:  # noqa: N802
        path = self._path()
        if path == "/_ping":
            self._send(200, b"OK", "text/plain; charset=utf-8")
        elif path == "/version":
            self._send(200, json.dumps(VERSION).encode(), "application/json")
        elif path == "/info":
            self._send(200, json.dumps(INFO).encode(), "application/json")
        else:
            self._not_found(path)

    do_HEAD = do_GET  # noqa: N815

    def do_POST(self) -> None:  # noqa: N802
        self._read_body()
        path = self._path()
        query = parse_qs(urlsplit(self.path).query)
        if path == "/build":
            # Labels may ask for another length of log, or for a build that takes time.
            labels = json.loads(query.get("labels", ["{}"])[0])
            lines = int(labels.get("fake-engine.lines", self.lines_per_build))
            seconds = float(labels.get("fake-engine.seconds", 0))
            self._stream(build_stream(query.get("t", ["unnamed"])[0], lines), seconds)
        elif path.startswith("/images/") and path.endswith("/tag"):
            self._send(201, b"", "text/plain")
        elif path.startswith("/images/") and path.endswith("/push"):
            self._stream(push_stream(path[len("/images/") : -len("/push")], query.get("tag", ["latest"])[0]))
        else:
            self._not_found(path)

    def _path(self) -> str:
        return _API_PREFIX.sub("", urlsplit(self.path).path)

    def _read_body(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline().split(b";")[0], 16):
                self.rfile.read(size + 2)
            self.rfile.readline()
        elif length := int(self.headers.get("Content-Length") or 0):
            self.rfile.read(length)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Api-Version", VERSION["ApiVersion"])
        self.end_headers()
        self.wfile.write(body)

    def _not_found(self, path: str) -> None:
        self._send(404, json.dumps({"message": f"page not found: {path}"}).encode(), "application/json")

    def _stream(self, chunks: list[dict], seconds: float = 0) -> None:
        """A chunked JSON stream, one chunk per object, as dockerd sends it
        (docker-py decodes a stream only when it is chunked); spread over
        `seconds` in ten parts when the build is to take time."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Api-Version", VERSION["ApiVersion"])
        self.end_headers()
        parts = 10 if seconds else 1
        size = -(-len(chunks) // parts)
        for part in range(parts):
            body = bytearray()
            for chunk in chunks[part * size : (part + 1) * size]:
                data = json.dumps(chunk).encode() + b"\r\n"
                body += b"%x\r\n%s\r\n" % (len(data), data)
            self.wfile.write(bytes(body))
            self.wfile.flush()
            if seconds:
                time.sleep(seconds / parts)
        self.wfile.write(b"0\r\n\r\n")


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hangs up mid-stream (a cancelled build) is no news


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--daemons", type=int, required=True)
    parser.add_argument("--ports-file", type=Path, required=True)
    parser.add_argument("--lines", type=int, default=20, help="log lines per build (default 20)")
    args = parser.parse_args()
    EngineHandler.lines_per_build = args.lines
    servers = [QuietServer(("127.0.0.1", 0), EngineHandler) for _ in range(args.daemons)]
    for server in servers:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 1}, daemon=True).start()
    ports = "\n".join(str(server.server_address[1]) for server in servers)
    partial = args.ports_file.with_suffix(".partial")
    partial.write_text(ports + "\n")
    partial.replace(args.ports_file)  # whole or absent: the reader never sees half a list
    threading.Event().wait()


if __name__ == "__main__":
    main()
