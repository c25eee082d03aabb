"""The attestations' read from the daemon: base images in a thread of their own during the push, versions from the
build session's `GET /info`."""

from __future__ import annotations

import threading

import pytest

from builds.engine.docker import EngineError
from builds.provenance.slsa import BaseImage
from builds.worker.attestation_reads import Reading, versions

BY_DIGEST = BaseImage("busybox", "sha256:" + "d" * 64, "daemon-repo-digest")


class Daemon:
    """A stand-in for one EngineSession: its `GET /info`, and one image it holds by digest."""

    def __init__(self) -> None:
        self.thread = ""
        self.asked: list[str] = []

    def __enter__(self):
        self.thread = threading.current_thread().name
        return self

    def __exit__(self, *exc) -> None:
        pass

    def info(self) -> dict:
        return {"ServerVersion": "20.10.24", "DockerRootDir": "/var/lib/docker"}

    def image_digest(self, reference: str) -> tuple[str, str]:
        self.asked.append(reference)
        return BY_DIGEST.digest, "sha256:" + "1" * 64


def test_a_base_named_without_a_digest_is_resolved_in_a_thread_of_its_own():
    daemon = Daemon()
    assert Reading(lambda: daemon, [BaseImage("busybox", "", "")]).result() == [BY_DIGEST]
    assert daemon.thread == "attestation-read" and daemon.asked == ["busybox"]


def test_bases_all_named_by_digest_need_no_daemon():
    def open_engine():
        raise AssertionError("no daemon connection was needed")

    named = BaseImage("alpine", "sha256:" + "a" * 64, "buildkit-log")
    assert Reading(open_engine, [named]).result() == [named]


def test_a_failed_read_is_raised_to_the_one_waiting():
    def open_engine():
        raise EngineError("the daemon did not answer")

    reading = Reading(open_engine, [BaseImage("busybox", "", "")])
    with pytest.raises(EngineError, match="did not answer"):
        reading.result()


def test_the_engine_version_is_the_one_info_said():
    found = versions(Daemon(), "classic")
    assert found["docker-engine"] == "20.10.24" and "buildkit" not in found
