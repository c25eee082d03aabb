"""Notifications on the real farm: a build's events reach a signed webhook
receiver from the control worker, in order, while a failing receiver beside it
changes nothing about the build."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from builds.models import BuildJob
from notifications import signing
from notifications.models import Delivery, Endpoint
from tests.receivers import Behaviour, Receiver

from .conftest import follow, submit

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
