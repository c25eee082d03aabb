"""Build contexts from git, on the worker host.

Each host keeps one bare mirror per repository (GENERATOR_GIT_CACHE_DIR) and
fetches into it incrementally. The context of a commit comes from `git
archive` with no checkout at all, unless the commit has submodules; then a
throw-away clone of the mirror is checked out with them.

An access token goes to git in the environment (GIT_CONFIG_*), never in a URL
or an argument, and is scrubbed from any message this module raises.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import io
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

LineSink = Callable[[str], None]
GIT_TIMEOUT = 600


class SourceError(Exception):
    """The commit's context could not be produced; str() says why."""


class GitSource:
    def __init__(self, clone_url: str, *, token: str, cache_dir: Path, allow_local: bool) -> None:
        self.clone_url = clone_url
        self.token = token
        self.allow_local = allow_local
        key = hashlib.sha256(clone_url.encode()).hexdigest()[:24]
        self.mirror = Path(cache_dir) / f"{key}.git"

    def context(self, sha: str, context_dir: str, *, max_bytes: int, on_line: LineSink) -> bytes:
        """A tar of `context_dir` at commit `sha`."""
        self.mirror.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._ensure_commit(sha, on_line)
            if self._has(f"{sha}:.gitmodules"):
                on_line("[generator] The commit has submodules: checking them out")
                data = self._checkout_context(sha, context_dir)
            else:
                tree = f"{sha}:{context_dir.strip('/')}" if context_dir.strip("/") else sha
                if not self._has(tree):
                    raise SourceError(f"the build context {context_dir!r} does not exist at commit {sha[:12]}")
                data = self._git("archive", "--format=tar", tree, cwd=self.mirror, capture=True)
        if len(data) > max_bytes:
            raise SourceError(f"the build context is {len(data)} bytes; the limit is {max_bytes} bytes")
        return data

    def resolve(self, ref: str, *, on_line: LineSink) -> str:
        """The commit a ref (refs/heads/main, refs/tags/v1, main) points to now."""
        self.mirror.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if not self.mirror.exists():
                on_line(f"[generator] Cloning {self.clone_url} (first build of it on this host)")
                self._git("clone", "--mirror", "--quiet", self.clone_url, str(self.mirror))
            else:
                on_line(f"[generator] Fetching {self.clone_url}")
                self._git("fetch", "--prune", "--quiet", "origin", cwd=self.mirror)
            try:
                sha = self._git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", cwd=self.mirror, capture=True)
            except SourceError:
                raise SourceError(f"{ref!r} is not a branch, tag or commit of {self.clone_url}") from None
        return sha.decode().strip()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # Two builds of one repository on one host must not fetch into the mirror at once.
        with open(self.mirror.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _ensure_commit(self, sha: str, on_line: LineSink) -> None:
        if not self.mirror.exists():
            on_line(f"[generator] Cloning {self.clone_url} (first build of it on this host)")
            self._git("clone", "--mirror", "--quiet", self.clone_url, str(self.mirror))
        elif not self._has(f"{sha}^{{commit}}"):
            on_line(f"[generator] Fetching {self.clone_url}")
            self._git("fetch", "--prune", "--quiet", "origin", cwd=self.mirror)
        if not self._has(f"{sha}^{{commit}}"):
            # Not on any ref any more (a force push since): ask for the commit itself.
            with suppress(SourceError):
                self._git("fetch", "--quiet", "origin", sha, cwd=self.mirror)
        if not self._has(f"{sha}^{{commit}}"):
            raise SourceError(f"commit {sha} is not in {self.clone_url}")
        on_line(f"[generator] Source: {self.clone_url} at {sha}")

    def _has(self, object_name: str) -> bool:
        result = subprocess.run(
            ["git", "cat-file", "-e", object_name], cwd=self.mirror, capture_output=True, env=self._env()
        )
        return result.returncode == 0

    def _checkout_context(self, sha: str, context_dir: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="generator-src-") as tmp:
            work = Path(tmp) / "src"
            self._git("clone", "--quiet", "--no-checkout", str(self.mirror), str(work))
            # Relative submodule URLs resolve against the repository's own URL.
            self._git("remote", "set-url", "origin", self.clone_url, cwd=work)
            self._git("checkout", "--quiet", sha, cwd=work)
            self._git("submodule", "update", "--init", "--recursive", "--quiet", cwd=work)
            root = (work / context_dir.strip("/")).resolve()
            if not root.is_dir() or not root.is_relative_to(work.resolve()):
                raise SourceError(f"the build context {context_dir!r} does not exist at commit {sha[:12]}")
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as tar:
                tar.add(root, arcname=".", filter=lambda info: None if _is_git_metadata(info.name) else info)
            return buffer.getvalue()

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}
        config = []
        if self.token:
            basic = base64.b64encode(f"x-access-token:{self.token}".encode()).decode()
            config.append(("http.extraHeader", f"Authorization: Basic {basic}"))
        if self.allow_local:
            config.append(("protocol.file.allow", "always"))
        env["GIT_CONFIG_COUNT"] = str(len(config))
        for index, (key, value) in enumerate(config):
            env[f"GIT_CONFIG_KEY_{index}"] = key
            env[f"GIT_CONFIG_VALUE_{index}"] = value
        return env

    def _git(self, *args: str, cwd: Path | None = None, capture: bool = False) -> bytes:
        try:
            result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, env=self._env(), timeout=GIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise SourceError(f"git {args[0]} took longer than {GIT_TIMEOUT} s") from None
        if result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip().splitlines()
            detail = message[-1] if message else f"exit status {result.returncode}"
            raise SourceError(f"git {args[0]} failed: {self._scrub(detail)}")
        return result.stdout if capture else b""

    def _scrub(self, text: str) -> str:
        return text.replace(self.token, "***") if self.token else text


def _is_git_metadata(name: str) -> bool:
    return any(part == ".git" for part in Path(name).parts)
