"""Notifications on the real farm: a build's events reach a signed webhook
receiver from the notify worker, in order, while a failing receiver beside it
changes nothing about the build, and a hung one delays nothing the control
worker does."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from django.utils import timezone

from builds.models import BuildJob
from notifications import signing
from notifications.models import Delivery, Endpoint
from pool.models import DockerDaemon
from tests.farm.conftest import follow, submit, wait_for
from tests.receivers import Behaviour, Receiver

pytestmark = pytest.mark.farm


def make_endpoint(farm, token, body: dict) -> int:
    request = urllib.request.Request(
        f"http://{farm.web}/api/v1/notification-endpoints/",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["id"]


def test_a_builds_events_reach_a_signed_receiver_and_a_failing_one_changes_nothing(farm, token):
    good, bad = Receiver().start(), Receiver(Behaviour(status=500)).start()
    events = ["queued", "started", "succeeded", "failed", "cancelled"]
    # Farm-wide (staff), made through the farm's own API so its key encrypts the secret.
    signed = {"name": "good", "repository": None, "url": good.url, "secret": "k", "events": events}
    ids = [
        make_endpoint(farm, token, signed),
        make_endpoint(farm, token, {"name": "bad", "repository": None, "url": bad.url, "events": events}),
    ]
    try:
        job_id = submit(farm, token, f"{farm.registry}/notify/app", "FROM busybox\nRUN echo notified\n")
        assert follow(farm, job_id, token).end["status"] == "succeeded"

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(good.received) < 3:
            time.sleep(0.2)
        mine = [r for r in good.received if json.loads(r.body)["build"]["id"] == job_id]
        assert [r.headers["X-Generator-Event"] for r in mine] == ["queued", "started", "succeeded"]
        assert all(signing.verify("k", r.body, r.headers["X-Generator-Signature-256"]) for r in mine)
        last = json.loads(mine[-1].body)["build"]
        assert last["status"] == "succeeded" and last["digest"].startswith("sha256:")

        job = BuildJob.objects.get(pk=job_id)
        assert job.status == "succeeded" and job.error == ""
        failing = Delivery.objects.filter(endpoint_id=ids[1], job_id=job_id)
        assert failing.count() == 3 and all(d.state == "pending" and d.tries >= 1 for d in failing)
        assert {a.status_code for d in failing for a in d.attempts.all()} == {500}
    finally:
        Endpoint.objects.filter(pk__in=ids).delete()
        good.close()
        bad.close()


def test_a_hung_receiver_holds_up_no_dispatch(farm, farm_pool, token):
    """A receiver that answers after longer than a build takes. Its send holds a
    notify thread for the farm's whole GENERATOR_NOTIFY_TIMEOUT (15 s); meanwhile
    a job waiting for a free daemon is dispatched by beat (the control worker's
    `farm.dispatch`, every second here) within moments, and builds and succeeds
    before that send gives up. On the control worker, the send would have held
    the dispatch for those 15 s."""
    hung = Receiver(Behaviour(delay=60)).start()
    endpoint = make_endpoint(farm, token, {"name": "hung", "repository": None, "url": hung.url, "events": ["queued"]})
    daemons = DockerDaemon.objects.filter(pk__in=[d.pk for d in farm_pool])
    try:
        # No daemon takes builds: the submit's own dispatch leaves the job waiting.
        daemons.update(draining=True)
        job_id = submit(farm, token, f"{farm.registry}/notify/hung", "FROM busybox\nRUN echo not held up\n")
        wait_for(lambda: hung.received, "the queued event reaching the hung receiver", timeout=30)
        sent = time.monotonic()
        assert BuildJob.objects.get(pk=job_id).status == "queued"

        # Room again, told to nobody: only beat's next dispatch can start the job.
        freed = timezone.now()
        daemons.update(draining=False)
        job = wait_for(
            lambda: BuildJob.objects.filter(pk=job_id, started_at__isnull=False).first(),
            "the waiting job starting",
            timeout=30,
        )
        assert (job.started_at - freed).total_seconds() < 5
        assert follow(farm, job_id, token).end["status"] == "succeeded"
        assert time.monotonic() - sent < 15  # the hung send has not given up yet
        assert len(hung.received) == 1
    finally:
        daemons.update(draining=False)
        Endpoint.objects.filter(pk=endpoint).delete()
        hung.close()
