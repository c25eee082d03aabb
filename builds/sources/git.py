"""Build contexts from git, on the worker host.

Each host keeps one bare mirror per repository (GENERATOR_GIT_CACHE_DIR) and
fetches into it incrementally. The context of a commit is streamed from `git
archive` (no checkout at all) into a temporary file with no name, never whole in
memory and never past the size limit; a commit with submodules is checked out
with them in a throw-away clone of the mirror, and that is written out the same way.

Every host git is about to contact, the clone URL's and each submodule's, is
resolved first and refused when the egress rules refuse its address (loopback,
link-local, private: lib/egress.py) unless local repositories are allowed; git
is then held to the addresses checked (`http.curloptResolve`), so a second DNS
answer cannot send it elsewhere, and follows no HTTP redirect.

An access token goes to git in the environment (GIT_CONFIG_*), never in a URL
or an argument, and only for the clone URL's own origin (scheme, host, port): a
submodule on another host never gets it. It is scrubbed from any message this
module raises.

ssh (`ssh://` and `git@host:` URLs) runs with an ssh_config of the farm's own
(`ssh -F`: neither the worker's ~/.ssh nor its agent): each host checked is
pinned to its checked address (HostName, with HostKeyAlias so the host key is
still looked up by name), any other host is refused, host keys are checked
strictly against the known_hosts given, and only the clone URL's host is
offered the deploy key. The key and that config live in a 0700 folder for one
git command and are removed after it, whatever happened.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import ipaddress
import os
import re
import shlex
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from lib import secret_values
from lib.egress import refusal_reason

LineSink = Callable[[str], None]
# (host, port) -> the addresses it resolves to; the system's resolver unless a test gives another.
Resolver = Callable[[str, int], list[str]]
GIT_TIMEOUT = 600
CHUNK = 64 * 1024
MAX_SUBMODULE_DEPTH = 5
_DEFAULT_PORTS = {"http": 80, "https": 443, "ssh": 22, "git": 9418}
# user@host:path, git's scp-like syntax for ssh
_SCP_LIKE = re.compile(r"(?:[^@/]+@)?(?P<host>\[[^\]]+\]|[^:/\[\]]+):(?!//)")
_FULL_SHA = re.compile(r"[0-9a-f]{40}")
# What may stand after `Host` and `HostName` in the farm's ssh_config: a name or an address, nothing else.
_SSH_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:_-]*")


class SourceError(Exception):
    """The commit's context could not be produced; str() says why."""


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


@dataclass(frozen=True)
class Remote:
    """Where a git URL makes git connect; `origin` is scheme://host[:port]/ for http(s)."""

    scheme: str
    host: str
    port: int
    origin: str = ""


def parse_remote(url: str) -> Remote | None:
    """The host and port a clone URL names; None for one with no host (a local path, file://)."""
    if "://" not in url:
        match = _SCP_LIKE.match(url)
        return Remote("ssh", match["host"].strip("[]").lower(), 22) if match else None
    try:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:
        raise SourceError(f"{url!r} is not a URL git can use") from None
    if scheme == "file":
        return None
    if not host or scheme not in _DEFAULT_PORTS:
        raise SourceError(f"{url!r} is not an http(s), ssh or git URL with a host")
    origin = f"{scheme}://{parts.netloc.rpartition('@')[2]}/" if scheme in ("http", "https") else ""
    return Remote(scheme, host, port or _DEFAULT_PORTS[scheme], origin)


class GitSource:
    def __init__(
        self,
        clone_url: str,
        *,
        token: str,
        cache_dir: Path,
        allow_local: bool,
        resolver: Resolver = system_resolver,
        ssh_key: str = "",
        known_hosts: str = "",
        timeout: float = GIT_TIMEOUT,
    ) -> None:
        """`ssh_key`: a private key in clear for the clone URL's ssh host;
        `known_hosts`: the host keys ssh accepts (no others); `timeout`: seconds
        for all of one call's git commands (and the wait for the mirror's lock)."""
        self.timeout = timeout
        self._deadline: float | None = None
        self.clone_url = clone_url
        self.token = token
        self.allow_local = allow_local
        self.resolver = resolver
        self.ssh_key, self.known_hosts = ssh_key, known_hosts
        # A mirror fetched with a key is that key's: a repository without it must not read it.
        owner = clone_url + ("\0" + hashlib.sha256(ssh_key.encode()).hexdigest() if ssh_key else "")
        self.mirror = Path(cache_dir) / f"{hashlib.sha256(owner.encode()).hexdigest()[:24]}.git"
        self.remote = parse_remote(clone_url)
        self._pins: list[str] = []  # http.curloptResolve entries: host:port:addresses checked
        self._ssh_pins: dict[str, tuple[str, int]] = {}  # ssh host -> (address checked, port)
        self._clone_host_checked = False

    def context(self, sha: str, context_dir: str, *, max_bytes: int, on_line: LineSink) -> BinaryIO:
        """A tar of `context_dir` at commit `sha`, in a temporary file with no name
        (gone from the disk once closed), at its start."""
        self.mirror.parent.mkdir(parents=True, exist_ok=True)
        out = tempfile.TemporaryFile(dir=self.mirror.parent)  # noqa: SIM115 (the caller closes it)
        try:
            with self._locked():
                self._ensure_commit(sha, on_line)
                if self._has(f"{sha}:.gitmodules"):
                    on_line("[generator] The commit has submodules: checking them out")
                    self._checkout_context(sha, context_dir, out, max_bytes)
                else:
                    tree = f"{sha}:{context_dir.strip('/')}" if context_dir.strip("/") else sha
                    if not self._has(tree):
                        raise SourceError(f"the build context {context_dir!r} does not exist at commit {sha[:12]}")
                    self._archive(tree, out, max_bytes)
        except BaseException:
            out.close()
            raise
        out.seek(0)
        return out

    def resolve(self, ref: str, *, on_line: LineSink) -> str:
        """The commit a ref (refs/heads/main, refs/tags/v1, main) points to now."""
        self.mirror.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if not self.mirror.exists():
                on_line(f"[generator] Cloning {self.clone_url} (first build of it on this host)")
                self._git("clone", "--mirror", "--quiet", self.clone_url, str(self.mirror), network=True)
            else:
                on_line(f"[generator] Fetching {self.clone_url}")
                self._git("fetch", "--prune", "--quiet", "origin", cwd=self.mirror, network=True)
            try:
                sha = self._git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", cwd=self.mirror, capture=True)
            except SourceError:
                raise SourceError(f"{ref!r} is not a branch, tag or commit of {self.clone_url}") from None
        return sha.decode().strip()

    def changed_files(self, before: str, after: str) -> list[str]:
        """The paths that differ between two commits, as `git diff --name-only
        before after` (renames as a removal and an addition, like GitHub's lists),
        both fetched into the mirror first. `before` may be a branch of the mirror
        (refs/heads/main): then the paths changed since `after` left it (`...`).
        All within `timeout` seconds, or SourceError."""
        self.mirror.parent.mkdir(parents=True, exist_ok=True)
        self._deadline = time.monotonic() + self.timeout
        try:
            with self._locked():
                self._ensure_commit(after, lambda line: None)
                if _FULL_SHA.fullmatch(before):
                    self._ensure_commit(before, lambda line: None)
                    span = [before, after]
                else:
                    span = [f"{before}...{after}"]
                names = self._git(
                    "diff", "--name-only", "-z", "--no-renames", *span, "--", cwd=self.mirror, capture=True
                )
        finally:
            self._deadline = None
        return [name for name in names.decode(errors="replace").split("\0") if name]

    def _seconds_left(self) -> float:
        if self._deadline is None:
            return GIT_TIMEOUT
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise SourceError(f"git took longer than {self.timeout:g} s")
        return left

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # Two builds of one repository on one host must not fetch into the mirror at once.
        with open(self.mirror.with_suffix(".lock"), "w") as lock:
            if self._deadline is None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            else:  # a bounded call waits for the lock within its time too
                while True:
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        self._seconds_left()
                        time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _ensure_commit(self, sha: str, on_line: LineSink) -> None:
        if not self.mirror.exists():
            on_line(f"[generator] Cloning {self.clone_url} (first build of it on this host)")
            self._git("clone", "--mirror", "--quiet", self.clone_url, str(self.mirror), network=True)
        elif not self._has(f"{sha}^{{commit}}"):
            on_line(f"[generator] Fetching {self.clone_url}")
            self._git("fetch", "--prune", "--quiet", "origin", cwd=self.mirror, network=True)
        if not self._has(f"{sha}^{{commit}}"):
            # Not on any ref any more (a force push since): ask for the commit itself.
            with suppress(SourceError):
                self._git("fetch", "--quiet", "origin", sha, cwd=self.mirror, network=True)
        if not self._has(f"{sha}^{{commit}}"):
            raise SourceError(f"commit {sha} is not in {self.clone_url}")
        on_line(f"[generator] Source: {self.clone_url} at {sha}")

    def _has(self, object_name: str) -> bool:
        result = subprocess.run(
            ["git", "cat-file", "-e", object_name], cwd=self.mirror, capture_output=True, env=self._env()
        )
        return result.returncode == 0

    def _archive(self, tree: str, out: BinaryIO, max_bytes: int) -> None:
        """`git archive` of the tree, copied into `out` a chunk at a time up to the limit."""
        with (
            tempfile.TemporaryFile() as errors,
            subprocess.Popen(
                ["git", "archive", "--format=tar", tree],
                cwd=self.mirror,
                stdout=subprocess.PIPE,
                stderr=errors,
                env=self._env(),
            ) as git,
        ):
            try:
                bounded = _Bounded(out, max_bytes)
                while chunk := git.stdout.read(CHUNK):
                    bounded.write(chunk)
            except BaseException:
                git.kill()
                raise
            if git.wait(timeout=GIT_TIMEOUT) != 0:
                errors.seek(0)
                message = errors.read().decode(errors="replace").strip().splitlines()
                raise SourceError(f"git archive failed: {self._scrub(message[-1] if message else str(git.returncode))}")

    def _checkout_context(self, sha: str, context_dir: str, out: BinaryIO, max_bytes: int) -> None:
        with tempfile.TemporaryDirectory(prefix="generator-src-", dir=self.mirror.parent) as tmp:
            work = Path(tmp) / "src"
            self._git("clone", "--quiet", "--no-checkout", str(self.mirror), str(work))
            # Relative submodule URLs resolve against the repository's own URL.
            self._git("remote", "set-url", "origin", self.clone_url, cwd=work)
            self._git("checkout", "--quiet", sha, cwd=work)
            self._update_submodules(work, depth=1)
            root = (work / context_dir.strip("/")).resolve()
            if not root.is_dir() or not root.is_relative_to(work.resolve()):
                raise SourceError(f"the build context {context_dir!r} does not exist at commit {sha[:12]}")
            with tarfile.open(fileobj=_Bounded(out, max_bytes), mode="w|") as tar:
                tar.add(root, arcname=".", filter=lambda info: None if _is_git_metadata(info.name) else info)

    def _update_submodules(self, work: Path, *, depth: int) -> None:
        """Checks out the submodules of `work`, level by level: each level's URLs
        (relative ones made absolute by `submodule init`) are checked and pinned
        before git contacts them."""
        if not (work / ".gitmodules").is_file():
            return
        if depth > MAX_SUBMODULE_DEPTH:
            raise SourceError(f"submodules are nested more than {MAX_SUBMODULE_DEPTH} deep")
        self._git("submodule", "init", "--quiet", cwd=work)
        for url in self._config_values(work, r"^submodule\..*\.url$"):
            self._pin(url, what="the submodule URL")
        self._git("submodule", "update", "--quiet", cwd=work, network=True)
        for path in self._config_values(work, r"^submodule\..*\.path$", "--file", ".gitmodules"):
            inner = (work / path).resolve()
            if inner.is_relative_to(work.resolve()) and inner != work.resolve():
                self._update_submodules(inner, depth=depth + 1)

    def _config_values(self, cwd: Path, pattern: str, *where: str) -> list[str]:
        result = subprocess.run(
            ["git", "config", *where, "--get-regexp", pattern], cwd=cwd, capture_output=True, env=self._env()
        )
        lines = result.stdout.decode(errors="replace").splitlines() if result.returncode == 0 else []
        return [line.split(" ", 1)[1] for line in lines if " " in line]

    def _pin(self, url: str, *, what: str) -> None:
        """Resolves the host `url` names, refuses it where the egress rules would,
        and holds git to the addresses checked."""
        remote = parse_remote(url)
        if remote is None:  # a local path: git's protocol.file rules decide (refused for submodules)
            return
        try:
            addresses = self.resolver(remote.host, remote.port)
        except OSError as exc:
            raise SourceError(f"cannot resolve {remote.host}, the host of {what}: {exc}") from None
        if not addresses:
            raise SourceError(f"{remote.host}, the host of {what}, resolves to no address")
        if not self.allow_local:
            for address in addresses:
                if why := refusal_reason(address):
                    raise SourceError(
                        f"{what} {self._scrub(url)} leads to {address}, {why}; the farm does not clone from there"
                        " (GENERATOR_ALLOW_LOCAL_REPOSITORIES=true allows local addresses)"
                    )
        if remote.origin and not _is_address(remote.host):
            listed = ",".join(f"[{a}]" if ":" in a else a for a in addresses)
            self._pins.append(f"{remote.host}:{remote.port}:{listed}")
        elif remote.scheme == "ssh":
            if not _SSH_HOST.fullmatch(remote.host):
                raise SourceError(f"{what} {self._scrub(url)} does not name a host ssh can be held to")
            self._ssh_pins.setdefault(remote.host, (addresses[0], remote.port))

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}
        config = [("http.followRedirects", "false")]
        if self.token and self.remote and self.remote.origin:
            basic = base64.b64encode(f"x-access-token:{self.token}".encode()).decode()
            config.append((f"http.{self.remote.origin}.extraHeader", f"Authorization: Basic {basic}"))
        if self.allow_local:
            config.append(("protocol.file.allow", "always"))
        config += [("http.curloptResolve", pin) for pin in self._pins]
        env["GIT_CONFIG_COUNT"] = str(len(config))
        for index, (key, value) in enumerate(config):
            env[f"GIT_CONFIG_KEY_{index}"] = key
            env[f"GIT_CONFIG_VALUE_{index}"] = value
        return env

    def _git(self, *args: str, cwd: Path | None = None, capture: bool = False, network: bool = False) -> bytes:
        if network and not self._clone_host_checked:  # resolved when git is about to connect, not before
            self._pin(self.clone_url, what="the clone URL")
            self._clone_host_checked = True
        with self._ssh() if network else _no_ssh() as ssh_env:
            try:
                timeout = self._seconds_left()
                result = subprocess.run(
                    ["git", *args], cwd=cwd, capture_output=True, env={**self._env(), **ssh_env}, timeout=timeout
                )
            except subprocess.TimeoutExpired:
                raise SourceError(f"git {args[0]} took longer than {timeout:g} s") from None
        if result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip().splitlines()
            detail = self._ssh_failure(message) or (message[-1] if message else f"exit status {result.returncode}")
            raise SourceError(f"git {args[0]} failed: {self._scrub(detail)}")
        return result.stdout if capture else b""

    @contextmanager
    def _ssh(self) -> Iterator[dict[str, str]]:
        """GIT_SSH_COMMAND for one git command: ssh with the farm's own config, the
        deploy key and the known hosts, in files removed when the command ends."""
        files = {"config": "", "known_hosts": self.known_hosts}
        if self.ssh_key:
            files["key"] = self.ssh_key
        with secret_values.as_files(files) as paths:
            Path(paths["config"]).write_text(self._ssh_config(paths))
            yield {"GIT_SSH_COMMAND": f"ssh -F {shlex.quote(paths['config'])}", "GIT_SSH_VARIANT": "ssh"}

    def _ssh_config(self, paths: dict[str, str]) -> str:
        """First match wins in ssh_config: each checked host's block, then the
        farm's rules for all, then a refusal of any host not checked."""
        clone_host = self.remote.host if self.remote and self.remote.scheme == "ssh" else None
        lines = []
        for host, (address, port) in self._ssh_pins.items():
            alias = host if port == 22 else f"[{host}]:{port}"  # how known_hosts names it
            lines += [f"Host {host}", f"  HostName {address}", f"  HostKeyAlias {alias}", "  ProxyCommand none"]
            if host == clone_host and "key" in paths:
                lines += [f'  IdentityFile "{paths["key"]}"']
            else:
                lines += ["  PubkeyAuthentication no"]
        lines += [
            "Host *",
            "  BatchMode yes",
            "  IdentitiesOnly yes",
            "  IdentityAgent none",
            "  PasswordAuthentication no",
            "  KbdInteractiveAuthentication no",
            "  StrictHostKeyChecking yes",
            f'  UserKnownHostsFile "{paths["known_hosts"]}"',
            "  GlobalKnownHostsFile /dev/null",
            "  UpdateHostKeys no",
            "  CheckHostIP no",
            "  ForwardAgent no",
            "  ClearAllForwardings yes",
            "  PermitLocalCommand no",
            "  ControlMaster no",
            "  ControlPath none",
            "  ConnectTimeout 30",
            "  LogLevel ERROR",
            # Reached only by a host that was never checked against the egress rules.
            # (No %h in it: ssh 9.2 would give the shell a host name as written in .gitmodules.)
            "  ProxyCommand sh -c 'echo the host was not checked against the egress rules of the farm >&2; exit 1'",
        ]
        return "\n".join(lines) + "\n"

    def _ssh_failure(self, stderr: list[str]) -> str | None:
        """ssh's reason in words a user can act on; git's own last lines say only
        "Could not read from remote repository"."""
        text = "\n".join(stderr)
        host = self.remote.host if self.remote else "the host"
        if "Host key verification failed" in text or "host key is known for" in text:
            if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
                return f"the SSH host key of {host} is not the one in the repository's known_hosts"
            return (
                f"no SSH host key of {host} is known: add it to the repository's known_hosts "
                "(ssh-keyscan prints it; check it against the host's published fingerprints)"
            )
        if "Permission denied (" in text:
            if self.ssh_key:
                return f"{host} refused the repository's deploy key (Permission denied): is it a deploy key there?"
            return f"{host} asks for an SSH key (Permission denied) and the repository has no deploy key"
        reasons = [line for line in stderr if line.startswith(("ssh:", "kex_", "Connection ")) or "egress" in line]
        return reasons[0] if reasons else None

    def _scrub(self, text: str) -> str:
        return text.replace(self.token, "***") if self.token else text


@contextmanager
def _no_ssh() -> Iterator[dict[str, str]]:
    yield {}


class _Bounded:
    """A writer that refuses to go past the context size limit."""

    def __init__(self, out: BinaryIO, limit: int) -> None:
        self.out, self.limit, self.written = out, limit, 0

    def write(self, data: bytes) -> int:
        self.written += len(data)
        if self.written > self.limit:
            raise SourceError(
                f"the build context is larger than GENERATOR_MAX_CONTEXT_BYTES: the limit is {self.limit} bytes"
            )
        return self.out.write(data)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_git_metadata(name: str) -> bool:
    return any(part == ".git" for part in Path(name).parts)
