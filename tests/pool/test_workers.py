"""Which daemons have a live worker, from the workers' own heartbeats in Redis."""

from __future__ import annotations

import time

import pytest

from builds import tasks
from pool import health, workers
from pool.models import DockerDaemon


@pytest.fixture(autouse=True)
def no_heartbeats(redis_url):
    workers._redis().delete(workers.KEY)
    yield
    workers._redis().delete(workers.KEY)


def online(*names: str) -> list[bool]:
    return [DockerDaemon.objects.get(name=name).worker_online for name in names]


@pytest.fixture
def pool(db):
    # Nothing listens on port 9: the probes fail at once.
    return [DockerDaemon.objects.create(name=f"d{i}", url="tcp://127.0.0.1:9", capacity=2) for i in range(3)]


def test_a_daemon_is_served_while_its_worker_beats_and_not_once_the_beat_is_stale(pool, settings):
    settings.GENERATOR_WORKER_STALE_SECONDS = 15
    now = time.time()
    workers.beat(["build.d0", "farm"], "w0@host", now=now - 5)
    workers.beat(["build.d1"], "w1@host", now=now - 16)  # stopped beating 16 s ago: killed
    assert workers.live_queues(now=now) == {"build.d0", "farm"}
    health.record_workers(workers.live_queues(now=now))
    assert online("d0", "d1", "d2") == [True, False, False]
    # Its worker comes back.
    workers.beat(["build.d1"], "w1@host", now=now)
    health.record_workers(workers.live_queues(now=now))
    assert online("d0", "d1", "d2") == [True, True, False]


def test_a_worker_that_stops_leaves_at_once_but_not_for_another_on_the_same_queue(pool):
    workers.beat(["build.d0"], "a@host")
    workers.beat(["build.d0"], "b@host")
    workers.beat(["build.d1"], "c@host")
    workers.leave(["build.d0"], "a@host")
    workers.leave(["build.d1"], "c@host")
    assert workers.live_queues() == {"build.d0"}


def test_the_heartbeat_thread_beats_until_stopped(pool):
    heartbeat = workers.Heartbeat(["build.d2"], "t@host", interval=0.05).start()
    try:
        first = workers._redis().zscore(workers.KEY, "build.d2 t@host")
        time.sleep(0.3)
        assert workers._redis().zscore(workers.KEY, "build.d2 t@host") > first
        assert "build.d2" in workers.live_queues()
    finally:
        heartbeat.stop()
    assert workers.live_queues() == set()


def test_recording_the_workers_takes_three_queries_whatever_the_pool(db, django_assert_num_queries):
    DockerDaemon.objects.bulk_create(
        DockerDaemon(name=f"big{i}", url="tcp://127.0.0.1:9", capacity=2, worker_online=i % 2 == 0) for i in range(500)
    )
    workers.beat([f"build.big{i}" for i in range(250)], "w@host")
    with django_assert_num_queries(3):  # the names, then those that came and those that went
        health.record_workers(workers.live_queues())
    with django_assert_num_queries(1):  # nothing changed: nothing written
        health.record_workers(workers.live_queues())
    served = set(DockerDaemon.objects.filter(worker_online=True).values_list("name", flat=True))
    assert served == {f"big{i}" for i in range(250)}


def test_the_health_check_reads_the_heartbeats(pool, settings):
    settings.GENERATOR_WORKER_STALE_SECONDS = 15
    workers.beat(["build.d0"], "w0@host")
    workers.beat(["build.d2"], "w2@host", now=time.time() - 60)
    tasks.check_health()
    assert online("d0", "d1", "d2") == [True, False, False]


def qemu_installed(binfmt_dir, name: str = "aarch64") -> None:
    (binfmt_dir / f"qemu-{name}").write_text(f"enabled\ninterpreter /usr/libexec/qemu-binfmt/{name}-binfmt-P\n")


def test_each_beat_reports_qemu_installed_after_the_worker_started(pool, tmp_path, django_assert_num_queries):
    report = workers.EmulationReport(["d0", "d1"], binfmt_dir=tmp_path)
    assert report.refresh() == []  # no QEMU, and the rows say none
    qemu_installed(tmp_path)
    assert sorted(report.refresh()) == ["d0", "d1"]
    assert DockerDaemon.objects.get(name="d0").builds_platforms == ["linux/arm64"]
    assert DockerDaemon.objects.get(name="d2").detected_emulation == ""  # another worker's daemon
    with django_assert_num_queries(1):  # unchanged: one read, no write
        assert report.refresh() == []
    (tmp_path / "qemu-aarch64").write_text("disabled\n")
    assert sorted(report.refresh()) == ["d0", "d1"]
    assert DockerDaemon.objects.get(name="d1").detected_emulation == ""


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_thread_reports_the_hosts_emulation_for_its_build_queues(tmp_path):
    for name in ("d0", "d1"):
        DockerDaemon.objects.create(name=name, url="tcp://127.0.0.1:9", capacity=2)
    heartbeat = workers.Heartbeat(["build.d0", "farm"], "t@host", interval=0.05, binfmt_dir=tmp_path).start()
    try:
        qemu_installed(tmp_path)
        deadline = time.monotonic() + 5
        while DockerDaemon.objects.get(name="d0").detected_emulation != "linux/arm64":
            assert time.monotonic() < deadline, "the heartbeat never reported the emulation"
            time.sleep(0.05)
    finally:
        heartbeat.stop()
    assert DockerDaemon.objects.get(name="d1").detected_emulation == ""
