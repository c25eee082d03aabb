"""Building with BuildKit through Docker's own client: a context in, log lines
and an image id out.

docker-py has no BuildKit (docker/docker-py#2230), and BuildKit's protocol is
gRPC over a hijacked session: rather than write our own, the worker runs a
docker CLI that speaks it, against the same daemon address and TLS client
certificate as the rest of the farm. Like builds/engine/docker.py, this module knows no
Django models.

Which CLI: `find_client` tries the configured path, then Debian's
/usr/bin/docker (20.10, which still embeds a BuildKit client behind
DOCKER_BUILDKIT=1), then whatever `docker` is on PATH; a CLI counts if it has
the `buildx` plugin or is older than 23 (when the embedded client went). PATH
alone is not trusted: these machines put a docker 28 CLI without buildx first.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from builds.dockerfiles import text as dockerfile_text
from builds.engine.docker import BuildFailed, DaemonUnavailable, LineSink

DEBIAN_CLI = "/usr/bin/docker"
PR_SET_PDEATHSIG = 1
SETPRIV = "/usr/bin/setpriv"  # util-linux, Essential on Debian: the CLI's death signal without a preexec_fn


class NoBuildKitClient(RuntimeError):
    pass


@dataclass(frozen=True)
class BuildKitClient:
    """A docker CLI that can drive BuildKit: `buildx` (the plugin, default docker
    driver) or `embedded` (a CLI before 23 with DOCKER_BUILDKIT=1)."""

    path: str
    kind: str
    version: str

    def describe(self) -> str:
        how = "buildx plugin" if self.kind == "buildx" else "embedded BuildKit client, DOCKER_BUILDKIT=1"
        return f"{self.path} {self.version} ({how})"

    def build_argv(self) -> list[str]:
        return [self.path, "buildx", "build", "--load"] if self.kind == "buildx" else [self.path, "build"]


def find_client(configured: str = "") -> BuildKitClient:
    candidates = [configured] if configured else [DEBIAN_CLI, shutil.which("docker") or ""]
    tried = []
    for path in dict.fromkeys(c for c in candidates if c):
        client = _probe(path)
        if client:
            return client
        tried.append(path)
    raise NoBuildKitClient(
        f"no docker CLI that drives BuildKit among {', '.join(tried) or 'none found'}: install Debian's "
        "docker.io (its /usr/bin/docker embeds a BuildKit client) or a docker CLI with the buildx plugin, "
        "and set GENERATOR_DOCKER_CLI to its path"
    )


def _probe(path: str) -> BuildKitClient | None:
    if not os.access(path, os.X_OK):
        return None
    version = _run_quietly([path, "version", "--format", "{{.Client.Version}}"])
    if not version:
        return None
    if _run_quietly([path, "buildx", "version"]):
        return BuildKitClient(path, "buildx", version)
    major = re.match(r"(\d+)", version)
    if major and int(major[1]) < 23:
        return BuildKitClient(path, "embedded", version)
    return None


def _run_quietly(argv: list[str]) -> str:
    """The command's first line of output, or "" if it failed; no daemon needed."""
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent"}  # version's client part needs no daemon
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=20, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = result.stdout.strip().splitlines()
    return lines[0].strip() if lines and (result.returncode == 0 or "version" in argv) else ""


@dataclass(frozen=True)
class DaemonAddress:
    """How the CLI reaches the daemon: `host` as in DOCKER_HOST, and for TLS the
    PEM files of pool/tls.py (the same CA and client certificate as docker-py)."""

    host: str
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""

    def argv(self) -> list[str]:
        argv = ["--host", self.host]
        if self.tls_key:
            argv += ["--tlsverify", f"--tlscacert={self.tls_ca}", f"--tlscert={self.tls_cert}"]
            argv += [f"--tlskey={self.tls_key}"]
        return argv


@dataclass
class BuildKitRequest:
    tag: str
    dockerfile: str = "Dockerfile"  # its path in the tar context; "": the stream is the Dockerfile, no context
    buildargs: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    nocache: bool = False
    pull: bool = False  # --pull: the base images from their registry, even where the daemon holds them
    target: str = ""
    network: str = ""  # "none", or "" for the daemon's default (its sandbox's filtered bridge)
    secrets: dict[str, str] = field(default_factory=dict)  # id -> path of a 0600 file
    ssh: str = ""  # an SSH agent socket for RUN --mount=type=ssh
    cache_from: list[str] = field(default_factory=list)
    inline_cache: bool = True
    # Cache mounts are the daemon's, keyed by id: a namespace per repository keeps
    # one repository's `RUN --mount=type=cache` out of another's (docs/security.md).
    cache_namespace: str = ""
    platform: str = ""  # os/arch to build for (QEMU runs its RUN steps on another host); "": the daemon's
    # In every RUN step's NO_PROXY (after the build's own), which BuildKit keeps out of
    # its cache keys: how the worker knows its steps (cgroups.StepClaimer).
    step_marker: str = ""
    # The build's own DOCKER_CONFIG folder (builds/worker/docker_config.py): the credentials
    # its pulls go out with. "": an empty one, anonymous pulls.
    docker_config: str = ""


# `<<WORD` or `<<-"WORD"` in a RUN, COPY or ADD instruction; not `<<<` (a shell here-string).
_HEREDOC = re.compile(r"(?<!<)<<-?(?!<)\s*[\"']?[A-Za-z_][A-Za-z0-9_]*")
# The CLI's words for a daemon it cannot reach, or lost in the middle of a build.
_DAEMON_GONE = (
    "cannot connect to the docker daemon",
    "error during connect",
    "code = unavailable",
    "transport is closing",
    "failed to receive status",
    "unexpected eof",  # the CLI's last word when the daemon dies mid-build
)


def unsupported_features(text: str | bytes, buildargs: dict[str, str] | None = None) -> str | None:
    """Why the farm will not build this with BuildKit, said at once.

    - A syntax directive (or BUILDKIT_* build args) would run another frontend
      image, which emits its own build graph: any cache mount id, any cache
      wipe, past the farm's per-repository namespace. Only the daemon's built-in
      frontend runs here.
    - Docker 20.10's built-in frontend (BuildKit 0.8) predates heredocs, which
      need frontend 1.4; it would answer "unknown instruction" for their body.
    """
    reserved = sorted(name for name in (buildargs or {}) if name.upper().startswith("BUILDKIT_"))
    if reserved:
        return f"build args named BUILDKIT_* are the farm's to set: {', '.join(reserved)}"
    # As BuildKit reads it (builds/dockerfiles/text.py): DetectSyntax runs before the
    # parser, so a syntax directive counts even where the parser would then fail.
    found = dockerfile_text.directives(text)
    if "syntax" in found:
        return (
            f"the Dockerfile asks for another frontend (# syntax={found['syntax'][:80]!r}): the farm builds with the "
            "daemon's built-in Dockerfile frontend only, since a frontend image decides what the build "
            "may touch on the daemon. Remove the line."
        )
    try:
        instructions = dockerfile_text.instructions(text)
    except dockerfile_text.DockerfileError as exc:
        return f"BuildKit's Dockerfile parser refuses this Dockerfile: {exc}"
    for instruction in instructions:
        if instruction.keyword in ("RUN", "COPY", "ADD") and _HEREDOC.search(instruction.args):
            return (
                f"line {instruction.first_line} uses a heredoc ({instruction.line.strip()[:60]}): heredocs need "
                "Dockerfile frontend 1.4 or later, and this daemon's built-in frontend (Docker 20.10, BuildKit 0.8) "
                "predates them. Put the script in a file and COPY it, or chain the commands with &&."
            )
    return None


class BuildKitSession:
    """One BuildKit build on one daemon. `abort()` from another thread stops it.

    How a build is stopped on Docker 20.10 (measured, docs/security.md): not by
    SIGINT or SIGTERM to the CLI, which ask the daemon to cancel by build id, and
    the daemon keeps the wrong cancel function for a context sent on stdin (a
    race between the CLI's two /build requests, in builder-next's Build). The
    build request's connection is what the daemon's solve hangs on: SIGKILL
    closes it, and the daemon cancels the build. A worker that dies takes its
    CLI with it (PR_SET_PDEATHSIG).
    """

    def __init__(self, client: BuildKitClient, daemon: DaemonAddress) -> None:
        self.client, self.daemon = client, daemon
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._aborted = False

    def build(self, context: BinaryIO, request: BuildKitRequest, *, on_line: LineSink) -> str:
        """Builds the context (a tar or gzip file object), tags the image and
        answers its id (sha256:...)."""
        with tempfile.TemporaryDirectory(prefix="buildkit-") as scratch:
            iidfile = Path(scratch) / "iid"
            argv = self._argv(request, iidfile)
            tail: list[str] = []
            if request.dockerfile and _starts_with_extension_header(context):  # "": a Dockerfile, not a tar
                context = _Gzipped(context)
            if _has_fileno(context):
                # The CLI reads the descriptor, whose offset is not a buffered reader's position
                # (a seek inside its buffer moves no offset): set it where the reader stands.
                os.lseek(context.fileno(), context.tell(), os.SEEK_SET)
            launch, preexec = dying_with_parent(argv)
            with self._lock:
                if self._aborted:
                    raise BuildFailed("the build was stopped before it started")
                self._process = subprocess.Popen(
                    launch,
                    stdin=context if _has_fileno(context) else subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=self._env(request.docker_config),
                    preexec_fn=preexec,
                )
            if self._process.stdin is not None:  # not a file: fed in chunks from a thread
                threading.Thread(target=_feed, args=(context, self._process.stdin), daemon=True).start()
            assert self._process.stdout is not None
            # At most 1 MiB a read: a step printing without newlines costs no more (the log cuts it shorter).
            cache_steps: set[str] = set()
            titles: dict[str, str] = {}  # step number -> its first line, which names what it pulls
            while raw := self._process.stdout.readline(1 << 20):
                line = raw.decode(errors="replace").rstrip("\r\n")
                on_line(line)
                if (title := _STEP_TITLE.match(line)) and title[1] not in titles:
                    titles[title[1]] = title[2]
                if found := _CACHE_IMPORT.match(line):
                    cache_steps.add(found[1])
                elif not (found := _STEP_ERROR.match(line)) or found[1] not in cache_steps:
                    tail = [*tail[-19:], line]  # a cache source's error is no failure: BuildKit goes on
            code = self._process.wait()
            if code != 0:
                raise _failure(code, tail, self.daemon.host, titles)
            try:
                image_id = iidfile.read_text().strip()
            except OSError:
                image_id = ""
        if not image_id.startswith("sha256:"):
            raise BuildFailed("BuildKit ended the build without producing an image")
        return image_id

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            process = self._process
        if process is not None and process.poll() is None:
            process.kill()

    def _argv(self, request: BuildKitRequest, iidfile: Path) -> list[str]:
        client = self.client.build_argv()
        argv = [client[0], *self.daemon.argv(), *client[1:]]
        argv += ["--progress=plain", "--iidfile", str(iidfile), "--tag", request.tag]
        if request.dockerfile:  # "": stdin is the Dockerfile itself, and the build has no context
            argv += ["--file", request.dockerfile]
        for name, value in request.buildargs.items():
            argv += ["--build-arg", f"{name}={value}"]
        for name, value in request.labels.items():
            argv += ["--label", f"{name}={value}"]
        if request.inline_cache:
            argv += ["--build-arg", "BUILDKIT_INLINE_CACHE=1"]
        if request.step_marker:  # after the build's own args: the last one of a name wins
            theirs = request.buildargs.get("NO_PROXY") or request.buildargs.get("no_proxy") or ""
            argv += ["--build-arg", f"NO_PROXY={','.join(filter(None, [theirs, request.step_marker]))}"]
        if request.cache_namespace:  # after the build's own args: the last one of a name wins
            argv += ["--build-arg", f"BUILDKIT_CACHE_MOUNT_NS={request.cache_namespace}"]
        for image in request.cache_from:
            argv += ["--cache-from", image]
        for secret_id, path in request.secrets.items():
            argv += ["--secret", f"id={secret_id},src={path}"]
        if request.ssh:
            argv += ["--ssh", f"default={request.ssh}"]
        if request.nocache:
            argv.append("--no-cache")
        if request.pull:
            argv.append("--pull")
        if request.target:
            argv += ["--target", request.target]
        if request.network:
            argv += ["--network", request.network]
        if request.platform:
            argv += ["--platform", request.platform]
        return [*argv, "-"]

    def _env(self, docker_config: str = "") -> dict[str, str]:
        keep = ("PATH", "HOME", "LANG", "TMPDIR")
        env = {name: os.environ[name] for name in keep if name in os.environ}
        # No DOCKER_* of the worker's own environment, and no user config with credentials:
        # the build's own, or none.
        config = docker_config or tempfile.gettempdir() + "/generator-docker-config"
        env.update(DOCKER_BUILDKIT="1", DOCKER_CONFIG=config)
        return env


def _starts_with_extension_header(context: BinaryIO) -> bool:
    """Whether the tar's first member is a PAX or GNU extension (git archive's
    global header, a long or non-ASCII name): the CLI reads 1 KiB of stdin to
    tell a tar from a Dockerfile, and sees no tar header there then. A gzip it
    knows by its magic bytes."""
    start = context.tell()
    header = context.read(tarfile.BLOCKSIZE)
    context.seek(start)
    return (
        len(header) == tarfile.BLOCKSIZE and header[:2] != b"\x1f\x8b" and header[156:157] in (b"x", b"g", b"L", b"K")
    )


class _Gzipped:
    """A stream's bytes gzipped on the fly (fastest level): read, never seek."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw, self._done = raw, False
        self._deflate = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def read(self, size: int = 1 << 16) -> bytes:
        while not self._done:
            chunk = self._raw.read(size)
            if not chunk:
                self._done = True
                return self._deflate.flush()
            if out := self._deflate.compress(chunk):
                return out
        return b""


def _has_fileno(stream: BinaryIO) -> bool:
    try:
        stream.fileno()
    except (OSError, AttributeError, ValueError):
        return False
    return True


def _feed(source: BinaryIO, sink) -> None:
    try:
        while chunk := source.read(1 << 16):
            sink.write(chunk)
    except (BrokenPipeError, OSError):
        pass  # the CLI stopped reading: it failed or was aborted, and says why itself
    finally:
        with contextlib.suppress(OSError):
            sink.close()


def dying_with_parent(argv: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """The argv and preexec_fn that start `argv` so that it gets SIGKILL when the
    thread that started it ends (the worker's build thread, alive for the whole
    build, or the worker). util-linux's setpriv sets the death signal and execs
    the command, which keeps it: Python then starts it with vfork, ~0.4 ms, where
    a preexec_fn forces a fork of the whole worker, ~14 ms for its 160 MB (issue
    26, docs/benchmarks.md). Without setpriv, the preexec_fn."""
    if os.access(SETPRIV, os.X_OK):
        return [SETPRIV, "--pdeathsig", "KILL", "--", *argv], None
    return argv, _die_with_parent


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the thread that started it ends."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


_CACHE_IMPORT = re.compile(r"^#(\d+) importing cache manifest from ")
_STEP_ERROR = re.compile(r"^#(\d+) ERROR\b")
_STEP_TITLE = re.compile(r"^#(\d+) (\[.*)$")
# A registry's refusal of a pull, in BuildKit's words and the registry's.
_PULL_REFUSED = re.compile(r"pull access denied|insufficient_scope|authorization failed|401 unauthorized", re.I)
# Where a step's title names the image it pulls: `[internal] load metadata for IMAGE`,
# `[stage 1/2] FROM IMAGE`, `[stage 2/3] COPY --from=IMAGE ...`, `RUN --mount=...,from=IMAGE`.
_PULLED_IMAGE = re.compile(r"load metadata for (\S+)|\] FROM (\S+)|--from=([^\s,]+)|\bfrom=([^\s,]+)")


def _failure(code: int, tail: list[str], host: str, titles: dict[str, str] | None = None) -> Exception:
    errors = [line for line in tail if re.match(r"^(#\d+ )?ERROR\b|^error:|^failed to ", line, re.IGNORECASE)]
    message = (errors[-1] if errors else (tail[-1] if tail else f"the docker CLI exited with {code}")).strip()
    if refused := _refused_image(errors, titles or {}):
        return BuildFailed(re.sub(r"^#\d+ ", "", message), refused_image=refused)
    message = re.sub(r"^#\d+ ", "", message)
    if any(sign in line.lower() for sign in _DAEMON_GONE for line in tail[-3:]):
        return DaemonUnavailable(f"lost the Docker daemon at {host} during the build: {message}")
    step_exit = re.search(r"exit code: (\d+)\s*$", message)  # a RUN step's, as the classic builder reports it
    return BuildFailed(message, exit_code=int(step_exit.group(1)) if step_exit else None)


def _refused_image(errors: list[str], titles: dict[str, str]) -> str:
    """The image a registry refused to let the build pull, named by the failing
    step's title (BuildKit's error line itself may not name it)."""
    for line in reversed(errors):
        step = re.match(r"^#(\d+) ", line)
        if not _PULL_REFUSED.search(line) or not step or step[1] not in titles:
            continue
        if found := _PULLED_IMAGE.search(titles[step[1]]):
            return next(group for group in found.groups() if group)
    return ""
