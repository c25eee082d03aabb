"""The attestations' read from the daemon (base images, versions), in its own thread during the push."""

from __future__ import annotations

import threading

import pytest

from builds.engine.docker import EngineError
from builds.provenance.slsa import BaseImage
from builds.worker.attestation_reads import Reading


class Daemon:
    """A stand-in for one EngineSession: its version, and one image it holds by digest."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.thread = ""

    def __enter__(self):
        self.thread = threading.current_thread().name
        return self

    def __exit__(self, *exc) -> None:
        pass

    def version(self) -> dict:
        if self.fail:
            raise EngineError("the daemon did not answer")
        return {"Version": "20.10.24"}

    def image_digest(self, reference: str) -> tuple[str, str]:
        return "sha256:" + "d" * 64, "sha256:" + "1" * 64


def test_the_facts_are_read_in_a_thread_of_their_own():
    daemon = Daemon()
    facts = Reading(lambda: daemon, [BaseImage("busybox", "", "")], "classic").result()
    assert facts.versions["docker-engine"] == "20.10.24" and daemon.thread == "attestation-read"
    assert facts.bases == [BaseImage("busybox", "sha256:" + "d" * 64, "daemon-repo-digest")]


def test_a_failed_read_is_raised_to_the_one_waiting():
    reading = Reading(lambda: Daemon(fail=True), [], "classic")
    with pytest.raises(EngineError, match="did not answer"):
        reading.result()
