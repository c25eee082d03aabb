"""A stand-in for GitHub's REST API, the one part of the world that cannot run
here: it records the commit statuses the farm posts."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeGitHub:
    def __init__(self) -> None:
        self.statuses: list[dict] = []  # {"path", "body", "authorization"}
        self.fail_next = 0  # answer fail_code this many times first, as GitHub sometimes does
        self.fail_code = 502
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if fake.fail_next:
                    fake.fail_next -= 1
                    self.send_response(fake.fail_code)
                    self.end_headers()
                    return
                fake.statuses.append(
                    {"path": self.path, "body": body, "authorization": self.headers.get("Authorization", "")}
                )
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def states_for(self, full_name: str, sha: str) -> list[str]:
        path = f"/repos/{full_name}/statuses/{sha}"
        return [s["body"]["state"] for s in self.statuses if s["path"] == path]

    def close(self) -> None:
        self.server.shutdown()
