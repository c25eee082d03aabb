"""The attestations' read from the daemon, in its own thread during the push."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest

from builds.engine.docker import EngineError
from builds.worker.attestation_reads import Reading
from tests.builds.worker.test_cache_scope import tar_of

APK = b"P:musl\nV:1.2.4-r2\nA:x86_64\nL:MIT\n\n"


class Daemon:
    """A stand-in for one EngineSession: the export of an image with one apk
    package, whose container's removal waits until the test lets it go."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.removing, self.let_remove, self.removed = threading.Event(), threading.Event(), threading.Event()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def version(self) -> dict:
        return {"Version": "20.10.24"}

    @contextmanager
    def exported(self, image: str, platform: str = ""):
        if self.fail:
            raise EngineError("export failed: no such image")
        try:
            yield tar_of({"lib/apk/db/installed": APK})
        finally:
            self.removing.set()
            self.let_remove.wait(10)
            self.removed.set()


def test_the_facts_are_handed_over_before_the_exported_container_is_removed():
    daemon = Daemon()
    reading = Reading(lambda: daemon, "sha256:abc", [], "classic")
    facts = reading.result()
    assert [p.name for p in facts.contents.packages] == ["musl"] and facts.versions["docker-engine"] == "20.10.24"
    assert daemon.removing.is_set() and not daemon.removed.is_set()  # the removal goes on after the answer
    daemon.let_remove.set()
    assert daemon.removed.wait(10)


def test_a_failed_read_is_raised_to_the_one_waiting():
    reading = Reading(lambda: Daemon(fail=True), "sha256:abc", [], "classic")
    with pytest.raises(EngineError, match="no such image"):
        reading.result()
