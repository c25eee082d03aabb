"""Local git repositories for tests: what the webhook payloads' github.com URLs
stand for here (nothing reaches the network)."""

from __future__ import annotations

import subprocess
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Codertocat",
    "GIT_AUTHOR_EMAIL": "codertocat@example.invalid",
    "GIT_COMMITTER_NAME": "Codertocat",
    "GIT_COMMITTER_EMAIL": "codertocat@example.invalid",
}


def git(*args: str, cwd: Path) -> str:
    import os

    result = subprocess.run(
        ["git", "-c", "protocol.file.allow=always", "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
    )
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout.strip()


class Repo:
    """A work tree that pushes to a bare repository, the clone URL."""

    def __init__(self, root: Path, name: str) -> None:
        self.bare = root / f"{name}.git"
        self.work = root / f"{name}-work"
        self.work.mkdir(parents=True)
        git("init", "--bare", "--quiet", str(self.bare), cwd=root)
        git("init", "--quiet", cwd=self.work)
        git("remote", "add", "origin", str(self.bare), cwd=self.work)

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def commit(self, files: dict[str, str], message: str = "change", branch: str = "main") -> str:
        for name, text in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git("add", "-A", cwd=self.work)
        git("commit", "--quiet", "-m", message, cwd=self.work)
        git("push", "--quiet", "--force", "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def add_submodule(self, other: Repo, path: str) -> str:
        git("submodule", "add", "--quiet", other.url, path, cwd=self.work)
        git("commit", "--quiet", "-m", f"add {path}", cwd=self.work)
        git("push", "--quiet", "origin", "HEAD:refs/heads/main", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)
