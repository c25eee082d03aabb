"""Talking to one Docker Engine: a context stream in, log lines and a result out.

This module knows no Django models. Each interaction is one `EngineSession`
(a context manager) that closes its connection whatever happens; SDK and
transport errors leave it as the project's own exceptions, which say whether
trying again could help.

Both the build and the push endpoints report failure inside an HTTP 200 stream,
so every decoded chunk is checked for an `error`.
"""

from __future__ import annotations

import io
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import BinaryIO

import docker
import requests
import urllib3
from docker.errors import APIError, DockerException, NotFound

LineSink = Callable[[str], None]


class EngineError(Exception):
    """A build or push did not complete. `transient` errors may succeed on retry."""

    transient = False

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        if transient is not None:
            self.transient = transient


class DaemonUnavailable(EngineError):
    transient = True


class BuildFailed(EngineError):
    """The build itself failed: the Dockerfile or the context is at fault.
    `exit_code` is the failing RUN step's, when the daemon gave one;
    `refused_image` the image a registry refused to let it pull."""

    def __init__(
        self, message: str, *, transient: bool | None = None, exit_code: int | None = None, refused_image: str = ""
    ) -> None:
        super().__init__(message, transient=transient)
        self.exit_code = exit_code
        self.refused_image = refused_image


class PushFailed(EngineError):
    """The registry refused or could not take the push. Refusals (credentials,
    permissions, a bad name) are final; anything else may pass on a retry."""


_FINAL_PUSH_ERRORS = (
    "denied",
    "unauthorized",
    "authentication required",
    "no basic auth credentials",
    "forbidden",
    "name invalid",
)


def push_failure(message: str) -> PushFailed:
    final = any(word in message.lower() for word in _FINAL_PUSH_ERRORS)
    return PushFailed(message, transient=not final)


@dataclass(frozen=True)
class PushResult:
    digest: str
    size: int | None


@dataclass(frozen=True)
class PullResult:
    fetched: tuple[str, ...]  # the layers fetched from the registry, as the daemon names them (12 hex digits)
    reported_bytes: int  # their compressed bytes as its progress said (a layer of a few bytes may say none)
    seconds: float
    held: int  # layers the daemon had already


def dockerfile_context(dockerfile: str) -> bytes:
    """A build context (tar) holding one file, the Dockerfile."""
    data = dockerfile.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class LineAssembler:
    """Joins stream fragments into whole lines.

    The daemon's chunks are not lines: `Step 1/3 : FROM busybox` can arrive apart
    from its newline, and one chunk can carry two lines. A line that never ends
    is kept to `max_line` characters (the log cuts it shorter still, with a
    marker): a build printing megabytes without a newline costs the worker
    neither memory nor quadratic re-joining.
    """

    def __init__(self, max_line: int = 1 << 20) -> None:
        self._partial = ""
        self.max_line = max_line

    def feed(self, text: str) -> Iterator[str]:
        text = self._partial + text
        *lines, partial = text.split("\n")
        self._partial = partial[: self.max_line]
        for line in lines:
            yield line[: self.max_line].rstrip("\r")

    def flush(self) -> Iterator[str]:
        if self._partial:
            line, self._partial = self._partial.rstrip("\r"), ""
            yield line


def progress_lines(chunks: Iterable[dict], on_line: LineSink) -> Iterator[dict]:
    """Turns `status` chunks (pulls, pushes) into log lines, as the docker CLI
    prints them without a terminal: one line per layer state, no progress bars.
    Yields every chunk on for the caller to read results and errors from."""
    last_status: dict[str, str] = {}
    for chunk in chunks:
        status = chunk.get("status")
        if status and not chunk.get("progressDetail"):
            layer = chunk.get("id")
            if layer is None:
                on_line(status)
            elif last_status.get(layer) != status:
                last_status[layer] = status
                on_line(f"{layer}: {status}")
        yield chunk


def _error_message(chunk: dict) -> str | None:
    if "error" not in chunk and "errorDetail" not in chunk:
        return None
    detail = chunk.get("errorDetail") or {}
    return (detail.get("message") or chunk.get("error") or "unknown error").strip()


class EngineSession:
    """One connection to a Docker Engine, for one job's build and push."""

    def __init__(
        self, base_url: str, *, api_version: str, timeout: int, tls: docker.tls.TLSConfig | bool = False
    ) -> None:
        """`base_url` and `tls` as pool/tls.py's `client_settings` gives them."""
        self.url = base_url
        self._info: dict | None = None
        self._info_asked: threading.Thread | None = None
        try:
            self._api = _StreamTrackingClient(base_url=base_url, version=api_version, timeout=timeout, tls=tls)
        except DockerException as exc:
            raise DaemonUnavailable(f"cannot use the Docker daemon at {base_url}: {exc}") from exc

    def __enter__(self) -> EngineSession:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Closing the connection also stops a build still running in the daemon."""
        self._api.close()

    def info(self) -> dict:
        """The daemon's `GET /info`, asked once a session: what an attempt reads of it
        (the data root, the remapped root) does not change while it runs, and the
        daemon takes 5-30 ms to answer it (it runs runc and docker-init to say
        their versions). Waits for `ask_info_now`'s answer if it is on its way."""
        if self._info_asked is not None:
            self._info_asked.join()
            self._info_asked = None
        if self._info is None:
            try:
                self._info = self._api.info()
            except (DockerException, requests.RequestException) as exc:
                raise DaemonUnavailable(f"cannot ask the Docker daemon at {self.url} about itself: {exc}") from exc
        return self._info

    def ask_info_now(self) -> None:
        """Asks `GET /info` in the background: the caller's next steps overlap the
        daemon's answer, which `info()` then takes (or asks again if it failed)."""
        if self._info is None and self._info_asked is None:
            self._info_asked = threading.Thread(target=self._take_info, name="engine-info", daemon=True)
            self._info_asked.start()

    def _take_info(self) -> None:
        with suppress(Exception):  # whatever went wrong, info() asks again and says it
            self._info = self._api.info()

    def answers(self, timeout: float = 5.0) -> bool:
        """Whether the daemon answers a ping now (a failure may be the daemon's)."""
        try:
            return self._api.get(self._api._url("/_ping"), timeout=timeout).ok
        except Exception:  # any way of not answering
            return False

    def abort(self) -> None:
        """Stops the build, push or pull in progress, from another thread.

        Shutting the socket of the streaming response wakes the thread blocked
        reading it, and the daemon, seeing its client gone, stops the build and
        (forcerm) removes its intermediate containers.
        """
        response = self._api.streaming
        if response is None:
            return
        with suppress(Exception):
            response.raw._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)
        with suppress(Exception):
            response.close()

    def build(
        self,
        context: BinaryIO | bytes,
        *,
        tag: str,
        on_line: LineSink,
        dockerfile: str = "Dockerfile",
        buildargs: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        nocache: bool = False,
        pull: bool = False,
        target: str | None = None,
        cgroup_parent: str | None = None,
        memory_bytes: int | None = None,
        cpu_period_us: int | None = None,
        cpu_quota_us: int | None = None,
        network_mode: str | None = None,
        registry_config: dict[str, dict[str, str]] | None = None,
    ) -> str:
        """Builds the context (a tar, as a file read in chunks as it is sent, or
        bytes), tags the image, and answers its id (sha256:...).

        Every RUN container is created under `cgroup_parent`, with `memory_bytes`
        (and no swap beyond it) and the CPU quota as its own limits, and with
        `network_mode` ("none": no network). `registry_config`: the accounts its
        pulls use, by registry (Docker's X-Registry-Config), and nothing else.
        """
        assembler = LineAssembler()
        image_id = None
        limits = {"memory": memory_bytes, "memswap": memory_bytes} if memory_bytes else None
        # docker-py's build() knows no cgroupparent, cpuperiod or cpuquota; the Engine API does.
        extra = {"cgroupparent": cgroup_parent, "cpuperiod": cpu_period_us, "cpuquota": cpu_quota_us}
        self._api.extra_build_params = {name: value for name, value in extra.items() if value}
        self._api.build_registry_config = registry_config or {}
        with self._translated_errors(BuildFailed, "build"):
            chunks = self._api.build(
                fileobj=io.BytesIO(context) if isinstance(context, bytes) else context,
                custom_context=True,
                tag=tag,
                dockerfile=dockerfile,
                buildargs=buildargs or None,
                labels=labels or None,
                nocache=nocache,
                pull=pull,
                target=target,
                rm=True,
                forcerm=True,
                decode=True,
                container_limits=limits,
                network_mode=network_mode,
            )
            for chunk in progress_lines(chunks, on_line):
                for line in assembler.feed(chunk.get("stream", "")):
                    on_line(line)
                if message := _error_message(chunk):
                    for line in assembler.flush():
                        on_line(line)
                    raise BuildFailed(message, exit_code=(chunk.get("errorDetail") or {}).get("code"))
                image_id = (chunk.get("aux") or {}).get("ID", image_id)
        for line in assembler.flush():
            on_line(line)
        if not image_id:
            raise BuildFailed("the daemon ended the build without producing an image")
        return image_id

    def tag(self, image_id: str, repository: str, tag: str) -> None:
        with self._translated_errors(BuildFailed, "tag"):
            self._api.tag(image_id, repository, tag=tag)

    def push(
        self, repository: str, tag: str, *, on_line: LineSink, credentials: dict[str, str] | None = None
    ) -> PushResult:
        """Pushes repository:tag and answers the digest the registry stored."""
        result = None
        with self._translated_errors(PushFailed, "push"):
            chunks = self._api.push(repository, tag=tag, stream=True, decode=True, auth_config=credentials)
            for chunk in progress_lines(chunks, on_line):
                if message := _error_message(chunk):
                    raise push_failure(f"pushing {repository}:{tag} failed: {message}")
                aux = chunk.get("aux") or {}
                if aux.get("Digest"):
                    result = PushResult(digest=aux["Digest"], size=aux.get("Size"))
        if result is None:
            raise PushFailed(f"pushing {repository}:{tag} ended without a digest from the registry", transient=True)
        return result

    def holds(self, reference: str) -> bool:
        """Whether the daemon has the image `reference` (e.g. repository@sha256:...)."""
        with self._translated_errors(EngineError, "image look-up"):
            try:
                self._api.inspect_image(reference)
            except NotFound:
                return False
        return True

    def pull(self, repository: str, digest: str, *, credentials: dict[str, str] | None = None) -> PullResult:
        """Pulls repository@digest into the daemon's image store; `abort` (from
        another thread) cuts it, and the daemon stops a pull whose client is gone."""
        started = time.perf_counter()
        sizes: dict[str, int] = {}
        held = 0
        with self._translated_errors(EngineError, "pull"):
            chunks = self._api.pull(repository, tag=digest, stream=True, decode=True, auth_config=credentials)
            for chunk in chunks:
                if message := _error_message(chunk):
                    raise EngineError(f"pulling {repository}@{digest} failed: {message}")
                status, layer = chunk.get("status", ""), chunk.get("id", "")
                if status == "Pulling fs layer":
                    sizes.setdefault(layer, 0)
                elif status in ("Downloading", "Extracting") and layer in sizes:
                    sizes[layer] = max(sizes[layer], int((chunk.get("progressDetail") or {}).get("total") or 0))
                elif status == "Already exists":
                    held += 1
        return PullResult(tuple(sizes), sum(sizes.values()), time.perf_counter() - started, held)

    def onbuild(self, reference: str) -> list[str] | None:
        """The ONBUILD triggers of the image the daemon holds under `reference`; None if it holds none."""
        with self._translated_errors(EngineError, "image look-up"):
            try:
                found = self._api.inspect_image(reference)
            except NotFound:
                return None
        return list((found.get("Config") or {}).get("OnBuild") or [])

    def image_digest(self, reference: str) -> tuple[str, str]:
        """What the daemon holds under `reference`: a registry digest it knows
        the image by (RepoDigests of that repository, else any), or "", and its image id."""
        with self._translated_errors(EngineError, "image look-up"):
            found = self._api.inspect_image(reference)
        digests = found.get("RepoDigests") or []
        name = reference.split("@", 1)[0].rsplit(":", 1)[0] if ":" in reference.rsplit("/", 1)[-1] else reference
        own = [d for d in digests if d.split("@", 1)[0] in (name, f"docker.io/{name}", f"docker.io/library/{name}")]
        chosen = (own or digests or [""])[0]
        return chosen.split("@", 1)[1] if "@" in chosen else "", found.get("Id", "")

    def _translated_errors(self, failure: type[EngineError], action: str):
        return _translated_errors(self.url, failure, action)


class _StreamTrackingClient(docker.APIClient):
    """Remembers the streaming response in progress, so `abort` can cut it, and
    adds to a build the query parameters docker-py does not know."""

    streaming = None
    extra_build_params: dict = {}  # replaced per build, never changed in place
    build_registry_config: dict = {}  # likewise

    def _post(self, url, **kwargs):
        if url == self._url("/build"):
            kwargs["params"] = {**(kwargs.get("params") or {}), **self.extra_build_params}
            # The build's own accounts, never docker-py's (the worker's ~/.docker/config.json).
            registry_config = docker.auth.encode_header(self.build_registry_config)
            kwargs["headers"] = {**(kwargs.get("headers") or {}), "X-Registry-Config": registry_config}
        return super()._post(url, **kwargs)

    def _stream_helper(self, response, decode=False):
        self.streaming = response
        return super()._stream_helper(response, decode)


@contextmanager
def _translated_errors(url: str, failure: type[EngineError], action: str) -> Iterator[None]:
    """Turns SDK and transport exceptions into EngineError subclasses."""
    try:
        yield
    except EngineError:
        raise
    except APIError as exc:
        message = exc.explanation or str(exc)
        if isinstance(message, bytes):
            message = message.decode(errors="replace")
        message = str(message).strip()
        if exc.is_server_error() and failure is PushFailed:
            raise DaemonUnavailable(f"the Docker daemon at {url} failed the {action}: {message}") from exc
        raise failure(message, transient=False) from exc
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise DaemonUnavailable(f"lost the Docker daemon at {url} during the {action}: {exc}") from exc
    except DockerException as exc:
        raise DaemonUnavailable(f"the Docker daemon at {url} failed the {action}: {exc}") from exc
