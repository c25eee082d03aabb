"""What an image's attestations read from its build daemon: its base images by
digest and the daemon's versions (builds/worker/attestations.py makes the
statements from them, after the push, with the digest; the SBOM is read from
the pushed image's layers in the registry: builds/worker/layer_reads.py).

None of it needs the digest, so the worker starts the read as the push starts
(`Reading`, a thread with a daemon connection of its own) and takes it after:
the read and the push overlap rather than follow each other (issue 26).
Nothing here touches the database.
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
    """`read` in a thread of its own, started now; `result()` waits for it."""

    def __init__(self, open_engine: Callable[[], EngineSession], bases: list[BaseImage], builder: str) -> None:
        self._done = threading.Event()
        self._facts: DaemonFacts | None = None
        self._error: BaseException | None = None
        args = (open_engine, bases, builder)
        threading.Thread(target=self._run, args=args, name="attestation-read", daemon=True).start()

    def _run(self, open_engine, bases: list[BaseImage], builder: str) -> None:
        try:
            with open_engine() as engine:
                self._facts = read(engine, bases, builder)
        except BaseException as exc:  # handed to the thread that waits for the result
            self._error = exc
        finally:
            self._done.set()

    def result(self, tick: Callable[[], None] | None = None) -> DaemonFacts:
        """The facts, once read (`tick`, the build's heartbeat, called meanwhile); raises what the read raised."""
        while not self._done.wait(0.2):
            if tick:
                tick()
        if self._error is not None:
            raise self._error
        assert self._facts is not None
        return self._facts


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
    engine_version = str(engine.version().get("Version", ""))
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
