"""A stand-in for GitHub's REST API, the one part of the world that cannot run
here: it records the commit statuses the farm posts and, as a GitHub App's
host, issues installation tokens and keeps check runs.

The App's side is checked as GitHub checks it: the JWT on /app endpoints must
be RS256, signed by the App's private key (verified with its public key), name
the App as `iss` and be unexpired; a check-run call must carry a token this
fake issued for the installation of that repository, unexpired."""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

APP_ID = 424242
_TOKENS = re.compile(r"/app/installations/(\d+)/access_tokens")
_INSTALLATION = re.compile(r"/repos/([^/]+/[^/]+)/installation")
_CHECK_RUNS = re.compile(r"/repos/([^/]+/[^/]+)/check-runs(?:/(\d+))?")


class FakeGitHub:
    def __init__(self) -> None:
        self.statuses: list[dict] = []  # {"path", "body", "authorization"}
        self.fail_next = 0  # answer fail_code this many times first, as GitHub sometimes does
        self.fail_code = 502
        # The App: its key pair, where it is installed, what it issued and keeps.
        self.app_id = APP_ID
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_key = self._key.public_key()
        self.installations: dict[str, int] = {}  # owner/name -> installation id
        self.token_seconds = 3600
        self.tokens: dict[str, tuple[int, float]] = {}  # token -> (installation, expires)
        self.tokens_issued = 0
        self.installation_lookups = 0
        self.check_runs: dict[int, dict] = {}  # id -> {"repository", "head_sha", "fields", "history"}
        self.refused: list[str] = []  # why each refused App request was refused
        self._next_run = 1000
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                fake._answer(self, "POST")

            def do_PATCH(self):  # noqa: N802
                fake._answer(self, "PATCH")

            def do_GET(self):  # noqa: N802
                fake._answer(self, "GET")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def private_key_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def write_private_key(self, path: Path) -> Path:
        path.write_bytes(self.private_key_pem())
        path.chmod(0o600)
        return path

    # What the tests read.

    def states_for(self, full_name: str, sha: str) -> list[str]:
        path = f"/repos/{full_name}/statuses/{sha}"
        return [s["body"]["state"] for s in self.statuses if s["path"] == path]

    def runs_for(self, full_name: str, sha: str) -> list[dict]:
        with self._lock:
            runs = [dict(run) for run in self.check_runs.values()]
        return [run for run in runs if (run["repository"], run["head_sha"]) == (full_name, sha)]

    def run_states(self, full_name: str, sha: str) -> list[list[str]]:
        """Each check run of that commit: the status (or conclusion, once completed) it was given, in order."""
        return [[_state(fields) for fields in run["history"]] for run in self.runs_for(full_name, sha)]

    # The server's side.

    def _answer(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length) or b"{}")
        if self.fail_next:
            self.fail_next -= 1
            return _reply(handler, self.fail_code, {})
        path = handler.path
        authorization = handler.headers.get("Authorization", "")
        if method == "POST" and "/statuses/" in path:
            self.statuses.append({"path": path, "body": body, "authorization": authorization})
            return _reply(handler, 201, {})
        if method == "POST" and (match := _TOKENS.fullmatch(path)):
            return self._issue_token(handler, authorization, int(match.group(1)))
        if method == "GET" and (match := _INSTALLATION.fullmatch(path)):
            self.installation_lookups += 1
            if not self._app_jwt_valid(authorization):
                return _reply(handler, 401, {"message": "A JSON web token could not be decoded"})
            installation = self.installations.get(match.group(1))
            if installation is None:
                return _reply(handler, 404, {"message": "Not Found"})
            return _reply(handler, 200, {"id": installation, "app_id": self.app_id})
        if match := _CHECK_RUNS.fullmatch(path):
            return self._check_run(handler, method, authorization, match.group(1), match.group(2), body)
        return _reply(handler, 404, {"message": "Not Found"})

    def _app_jwt_valid(self, authorization: str) -> bool:
        try:
            claims = jwt.decode(
                authorization.removeprefix("Bearer "), self.public_key, algorithms=["RS256"],
                options={"require": ["iat", "exp", "iss"]},
            )  # fmt: skip
        except jwt.PyJWTError as exc:
            self.refused.append(f"JWT: {exc}")
            return False
        if str(claims["iss"]) != str(self.app_id) or claims["exp"] - claims["iat"] > 600:
            self.refused.append(f"JWT claims: {claims}")
            return False
        return True

    def _issue_token(self, handler, authorization: str, installation: int) -> None:
        if not self._app_jwt_valid(authorization):
            return _reply(handler, 401, {"message": "A JSON web token could not be decoded"})
        if installation not in self.installations.values():
            return _reply(handler, 404, {"message": "Not Found"})
        token = f"ghs_{secrets.token_hex(18)}"
        expires = time.time() + self.token_seconds
        with self._lock:
            self.tokens[token] = (installation, expires)
            self.tokens_issued += 1
        stamp = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return _reply(handler, 201, {"token": token, "expires_at": stamp})

    def _check_run(self, handler, method: str, authorization: str, full_name: str, run_id: str | None, body: dict):
        issued = self.tokens.get(authorization.removeprefix("Bearer "))
        if issued is None or issued[1] < time.time() or issued[0] != self.installations.get(full_name):
            self.refused.append(f"check run of {full_name} with a token that is not the installation's")
            return _reply(handler, 401, {"message": "Bad credentials"})
        with self._lock:
            if method == "POST" and run_id is None:
                if not body.get("name") or not re.fullmatch(r"[0-9a-f]{40}", str(body.get("head_sha"))):
                    return _reply(handler, 422, {"message": "name and head_sha are required"})
                self._next_run += 1
                run = {"id": self._next_run, "repository": full_name, "head_sha": body["head_sha"], "fields": {}}
                run["history"] = []
                self.check_runs[run["id"]] = run
            elif method == "PATCH" and run_id is not None and int(run_id) in self.check_runs:
                run = self.check_runs[int(run_id)]
            else:
                return _reply(handler, 404, {"message": "Not Found"})
            run["fields"].update(body)
            run["history"].append(body)
            return _reply(handler, 201 if method == "POST" else 200, {"id": run["id"], **run["fields"]})

    def close(self) -> None:
        self.server.shutdown()


def _state(fields: dict) -> str:
    return fields.get("conclusion") or fields.get("status", "")


def _reply(handler: BaseHTTPRequestHandler, code: int, body: dict) -> None:
    data = json.dumps(body).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
