"""What an image's attestations read from its build daemon: its base images by
digest and the daemon's versions (builds/worker/attestations.py makes the
statements from them, after the push, with the digest; the SBOM is read from
the pushed image's layers in the registry: builds/worker/layer_reads.py).

The versions are the build session's `GET /info` (asked as the build began).
A base named without a digest needs the daemon, but not the image's digest, so
the worker starts that look-up as the push starts (`Reading`, a thread with a
daemon connection of its own) and takes it after: the two overlap rather than
follow each other (issue 26). Nothing here touches the database.
"""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache

from django.conf import settings

from builds.engine.docker import EngineError, EngineSession
from builds.provenance.slsa import BaseImage


@dataclass(frozen=True)
class DaemonFacts:
    bases: list[BaseImage]
    versions: dict[str, str]


def read(engine: EngineSession, bases: Iterable[BaseImage], builder: str) -> DaemonFacts:
    return DaemonFacts(resolved(engine, bases), versions(engine, builder))


class Reading:
    """`resolved` in a thread of its own, started now, for bases BuildKit's log
    named without a digest; `result()` waits for it. Bases all named by digest
    (most BuildKit builds) need no daemon: nothing is started."""

    def __init__(self, open_engine: Callable[[], EngineSession], bases: list[BaseImage]) -> None:
        self._done = threading.Event()
        self._bases: list[BaseImage] | None = None
        self._error: BaseException | None = None
        if all(base.digest for base in bases):
            self._bases = list(bases)
            self._done.set()
            return
        threading.Thread(target=self._run, args=(open_engine, bases), name="attestation-read", daemon=True).start()

    def _run(self, open_engine, bases: list[BaseImage]) -> None:
        try:
            with open_engine() as engine:
                self._bases = resolved(engine, bases)
        except BaseException as exc:  # handed to the thread that waits for the result
            self._error = exc
        finally:
            self._done.set()

    def result(self, tick: Callable[[], None] | None = None) -> list[BaseImage]:
        """The bases, once resolved (`tick`, the build's heartbeat, called meanwhile); raises what the read raised."""
        while not self._done.wait(0.2):
            if tick:
                tick()
        if self._error is not None:
            raise self._error
        assert self._bases is not None
        return self._bases


def resolved(engine: EngineSession, bases: Iterable[BaseImage]) -> list[BaseImage]:
    """The base images as BuildKit's log named them; those it named without a
    digest (the daemon had the image and asked no registry; every FROM of the
    classic builder) by what the daemon holds under that name."""
    found = []
    for base in bases:
        if base.digest:
            found.append(base)
            continue
        try:
            digest, image_id = engine.image_digest(base.reference)
        except EngineError:
            found.append(base)
            continue
        if digest:
            found.append(BaseImage(base.reference, digest, "daemon-repo-digest"))
        else:  # an image never pulled or pushed (docker import): only its id names it
            found.append(BaseImage(base.reference, image_id, "daemon-image-id"))
    return found


def versions(engine: EngineSession, builder: str) -> dict[str, str]:
    # The build's session has asked GET /info already; GET /version would run runc and docker-init again.
    engine_version = str(engine.info().get("ServerVersion", ""))
    found = {"generator": farm_version(), "docker-engine": engine_version}
    if builder == "buildkit":
        from builds.worker.builders import buildkit_client

        # Engine 20.10 reports no BuildKit version: its BuildKit is the one vendored into that Engine.
        found["buildkit"] = f"built into Docker Engine {engine_version}"
        found["docker-cli"] = buildkit_client().version
    return found


@cache
def farm_version() -> str:
    with open(settings.BASE_DIR / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]["version"]
