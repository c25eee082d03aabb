"""Warm daemons after a push (builds/worker/prepull.py), on the real database and
the test Redis as broker (no worker consumes these tests' messages): what a push
asks and of whom, once, at the lowest priority on the daemon's own queue, and a
warm that waits for the builds of its daemon. The pull itself, on real daemons:
tests/farm/test_prepull.py."""

from __future__ import annotations

import json
import time

import pytest
import redis
from django.test import override_settings

from builds.jobs import transitions
from builds.models import BuildJob, Registry
from builds.worker import prepull
from pool.models import DockerDaemon
from scripts import localfarm as lf
from tests.builds.triggers.test_base_images import push
from tests.registries import plain_registry

pytestmark = pytest.mark.django_db(transaction=True)

IMAGE = "localhost:5000/team/app"
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def broker(redis_url):
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{prepull.PREFIX}*"):
        client.delete(key)
    yield client


def daemon(name: str, **fields) -> DockerDaemon:
    return DockerDaemon.objects.create(name=name, url="tcp://127.0.0.1:9", **fields)


def low(queue: str) -> str:
    """Kombu's Redis list for a queue's messages of priority 9."""
    return f"{queue}\x06\x169"


def warms(broker, queue: str) -> list[list]:
    return [json.loads(m)["headers"]["argsrepr"] for m in broker.lrange(low(queue), 0, -1)]


def pushed(source: DockerDaemon, **fields) -> BuildJob:
    """A job pushed from `source`, its success announced as the runner's is."""
    job = BuildJob.objects.create(image=f"{IMAGE}:v1", dockerfile="FROM busybox\n", daemon=source, **fields)
    BuildJob.objects.filter(pk=job.pk).update(status=BuildJob.Status.PUSHING)
    assert transitions.succeed(job.id, job.attempt, DIGEST)  # announce() runs at once: no transaction here
    return job


def test_a_push_asks_each_other_daemon_of_its_group_once_at_the_lowest_priority(broker):
    source, peer, other = daemon("source"), daemon("peer"), daemon("team-b-1", group="team-b")
    for queue in (peer.queue, other.queue, source.queue):
        broker.delete(low(queue), queue)
    pushed(source)
    assert warms(broker, peer.queue) == [repr([peer.pk, IMAGE, DIGEST, None, 0, ["v1"]])]  # tagged as pushed
    assert broker.llen(peer.queue) == 0  # not among the builds' messages (priority 0)
    assert warms(broker, other.queue) == [] and warms(broker, source.queue) == []
    pushed(source)  # the same digest again while its warm is asked: not asked twice
    assert len(warms(broker, peer.queue)) == 1


def test_builds_that_push_no_image_of_their_own_warm_nothing(broker):
    source, peer = daemon("source"), daemon("peer")
    broker.delete(low(peer.queue))
    job = BuildJob.objects.create(
        image=f"{IMAGE}:pr-1", dockerfile="FROM busybox\n", daemon=source, not_pushed="a pull request's check"
    )
    BuildJob.objects.filter(pk=job.pk).update(status=BuildJob.Status.BUILDING)
    assert transitions.succeed_unpushed(job.id, job.attempt, "sha256:" + "cd" * 32)
    pushed(source, platform="linux/arm64")  # a multi-platform child: its tag is a helper
    assert warms(broker, peer.queue) == []
    with override_settings(GENERATOR_PREPULL_ENABLED=False):
        pushed(source)
    assert warms(broker, peer.queue) == []


def test_a_warm_waits_while_a_build_is_given_to_its_daemon(broker):
    peer = daemon("peer")
    broker.delete(low(peer.queue))
    BuildJob.objects.create(image=f"{IMAGE}:v2", dockerfile="FROM busybox\n", daemon=peer)  # queued for it
    said = prepull.warm(peer.pk, IMAGE, DIGEST, None)
    assert "a build runs there; again in" in said
    [message] = broker.lrange(low(peer.queue), 0, -1)
    message = json.loads(message)
    assert message["headers"]["eta"]  # later, not now
    assert message["headers"]["argsrepr"] == repr([peer.pk, IMAGE, DIGEST, None, 1, []])
    # After TRIES it gives up, and the digest may be asked again.
    assert f"{prepull.TRIES} times" in prepull.warm(peer.pk, IMAGE, DIGEST, None, prepull.TRIES - 1)
    assert not broker.exists(prepull._asked_key(peer.pk, DIGEST))


def test_one_warm_at_a_time_per_daemon_and_none_on_a_daemon_that_takes_no_builds(broker):
    peer, off = daemon("peer"), daemon("off", enabled=False)
    broker.delete(low(peer.queue))
    broker.set(f"{prepull.PREFIX}daemon:{peer.pk}", "another warm's")
    assert "another warm runs there" in prepull.warm(peer.pk, IMAGE, DIGEST, None)
    assert "it takes no builds" in prepull.warm(off.pk, IMAGE, DIGEST, None)


class Session:
    """Stands for the pull's engine session: only its `abort` is watched here."""

    def __init__(self) -> None:
        self.aborts = 0

    def abort(self) -> None:
        self.aborts += 1


def test_a_build_given_to_the_daemon_during_a_pull_cuts_it_within_a_poll(broker):
    peer = daemon("peer")
    session = Session()
    with prepull._BuildWatch(peer.pk, session) as watch:
        time.sleep(prepull.POLL_SECONDS * 2)
        assert session.aborts == 0 and not watch.build_came  # no build: the pull goes on
        BuildJob.objects.create(image=f"{IMAGE}:v3", dockerfile="FROM busybox\n", daemon=peer)
        deadline = time.monotonic() + 5
        while not session.aborts and time.monotonic() < deadline:
            time.sleep(0.02)
        waited = 5 - (deadline - time.monotonic())
    assert watch.build_came and session.aborts >= 1
    assert waited < prepull.POLL_SECONDS * 3, waited


@pytest.fixture(scope="module")
def registry(supervisor, services_dir) -> str:
    with plain_registry(supervisor, services_dir, "prepull-registry") as (host, _):
        yield host


def test_a_warm_tags_only_what_the_registry_still_gives_its_digest(registry):
    """A warm that runs after a later push of the same tag leaves that tag where the later one put it."""
    Registry.objects.get_or_create(host=registry)  # on the allow-list: the outbound rules let the warm ask it
    older = push(registry, "team/app", "v1", "older")
    newer = push(registry, "team/app", "v1", "newer")
    push(registry, "team/app", "v2", "older")
    assert older != newer
    assert prepull._current_tags(registry, None, "team/app", older, ["v1", "v2", "never-pushed"]) == ["v2"]
    assert prepull._current_tags(registry, None, "team/app", newer, ["v1", "v2"]) == ["v1"]
    assert prepull._current_tags(f"localhost:{lf.free_port()}", None, "team/app", newer, ["v1"]) == []  # no registry
