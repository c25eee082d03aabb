"""Notifications of build events: real receivers on loopback that answer, fail,
time out and answer slowly; signatures a receiver can check; Slack's body;
e-mail through Django's locmem backend; refused addresses."""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import urlsplit

import pytest
from django.core import mail

from builds.jobs import transitions
from builds.models import BuildJob, Repository
from lib import crypto
from notifications import events, sending, signing
from notifications.models import Attempt, Delivery, Endpoint
from notifications.tasks import deliver, fan_out
from tests.receivers import Behaviour, Receiver, closed_port

SHA = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"


@pytest.fixture
def notify_settings(settings):
    settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES = True  # the receivers are on loopback (notifications/receivers.py)
    settings.GENERATOR_SITE_URL = "https://farm.example.invalid"
    settings.GENERATOR_NOTIFY_TIMEOUT = 1.0
    settings.GENERATOR_NOTIFY_CONNECT_TIMEOUT = 0.5
    settings.GENERATOR_NOTIFY_BACKOFF_SECONDS = 0.2
    settings.GENERATOR_NOTIFY_MAX_TRIES = 4
    settings.GENERATOR_NOTIFY_RESPONSE_BYTES = 100
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    return settings


@pytest.fixture
def receiver():
    server = Receiver().start()
    yield server
    server.close()


@pytest.fixture
def repository(db, team):
    return Repository.objects.create(
        full_name="octo/app", clone_url="https://x.invalid/r.git", webhook_secret="s", image="localhost:5000/octo/app",
        team=team,
    )  # fmt: skip


@pytest.fixture
def job(repository):
    return BuildJob.objects.create(
        image="localhost:5000/octo/app:main",
        extra_tags=["6113728"],
        repository=repository,
        team=repository.team,
        ref="refs/heads/main",
        commit_sha=SHA,
        build_args={"NPM_TOKEN": "build-arg-value-not-for-receivers"},
        dockerfile="FROM busybox\nARG NPM_TOKEN\n",
        status=BuildJob.Status.FAILED,
        error="the RUN step exited 1",
        pusher_email="pusher@example.com",
    )


def webhook(repository, url: str, secret: str = "", **flags) -> Endpoint:
    return Endpoint.objects.create(
        name="ci", repository=repository, url=url, secret=crypto.encrypt(secret) if secret else "", **flags
    )


def only_delivery(job: BuildJob, event: str) -> Delivery:
    ids = events.fan_out(job.id, event)
    assert len(ids) == 1
    return Delivery.objects.get(pk=ids[0])


def test_a_receiver_verifies_the_signature_and_reads_the_build(notify_settings, receiver, job):
    webhook(job.repository, receiver.url, secret="hook-secret")
    delivery = only_delivery(job, "failed")

    assert sending.attempt(str(delivery.pk)) is None

    (got,) = receiver.received
    assert got.path == "/hook?x=1"
    assert signing.verify("hook-secret", got.body, got.headers["X-Generator-Signature-256"])
    assert not signing.verify("another-secret", got.body, got.headers["X-Generator-Signature-256"])
    assert got.headers["X-Generator-Event"] == "failed"
    assert got.headers["X-Generator-Delivery"] == str(delivery.pk)
    document = json.loads(got.body)
    assert document["event"] == "failed"
    build = document["build"]
    assert build["id"] == job.id and build["status"] == "failed" and build["error"] == "the RUN step exited 1"
    assert build["tags"] == ["main", "6113728"]
    assert (build["repository"], build["ref"], build["sha"]) == ("octo/app", "refs/heads/main", SHA)
    assert build["links"]["page"] == f"https://farm.example.invalid/builds/{job.id}/"
    assert build["links"]["log"] == f"https://farm.example.invalid/api/v1/builds/{job.id}/log/"
    assert b"build-arg-value-not-for-receivers" not in got.body and b"NPM_TOKEN" not in got.body
    assert b"FROM busybox" not in got.body and b"pusher@example.com" not in got.body
    delivery.refresh_from_db()
    assert (delivery.state, delivery.tries) == ("delivered", 1)
    (attempt,) = delivery.attempts.all()
    assert (attempt.status_code, attempt.response_excerpt, attempt.error) == (200, "ok", "")


def test_an_unsigned_endpoint_sends_no_signature(notify_settings, receiver, job):
    webhook(job.repository, receiver.url)
    sending.attempt(str(only_delivery(job, "failed").pk))
    assert "X-Generator-Signature-256" not in receiver.received[0].headers


def test_a_failing_receiver_is_tried_again_with_backoff_until_the_limit(notify_settings, receiver, job):
    receiver.behaviour = Behaviour(status=500, body=b"x" * 5000)
    webhook(job.repository, receiver.url)
    delivery = only_delivery(job, "failed")

    delays = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for due in sending.due():  # what the sweep (notify.retry_due) sends
            delays.append(sending.attempt(due))
        if Delivery.objects.get(pk=delivery.pk).state != "pending":
            break
        time.sleep(0.02)

    assert delays == [0.2, 0.4, 0.8, None]
    gaps = [b.at - a.at for a, b in zip(receiver.received, receiver.received[1:], strict=False)]
    assert [round(g, 1) for g in gaps] == pytest.approx([0.2, 0.4, 0.8], abs=0.15)
    delivery.refresh_from_db()
    assert (delivery.state, delivery.tries, delivery.next_try_at) == ("failed", 4, None)
    attempts = list(delivery.attempts.all())
    assert [a.number for a in attempts] == [1, 2, 3, 4]
    assert all(a.status_code == 500 and a.response_excerpt == "x" * 100 for a in attempts)
    # Given up: no sweep sends it again, and a stray message changes nothing.
    assert sending.due() == [] and sending.attempt(str(delivery.pk)) is None
    assert len(receiver.received) == 4


def test_a_receiver_that_does_not_answer_is_given_up_at_the_deadline(notify_settings, receiver, job):
    receiver.behaviour = Behaviour(silent=True)
    webhook(job.repository, receiver.url)
    delivery = only_delivery(job, "failed")

    started = time.monotonic()
    assert sending.attempt(str(delivery.pk)) == 0.2
    assert 0.9 < time.monotonic() - started < 1.6

    (attempt,) = Attempt.objects.filter(delivery=delivery)
    assert attempt.status_code is None and attempt.error == "no complete answer within 1 s"
    assert 900 <= attempt.duration_ms < 1600


def test_a_receiver_trickling_its_answer_is_cut_at_the_deadline(notify_settings, receiver, job):
    receiver.behaviour = Behaviour(trickle=0.1)  # each byte within the read timeout, the whole far past it
    webhook(job.repository, receiver.url)
    delivery = only_delivery(job, "failed")

    started = time.monotonic()
    sending.attempt(str(delivery.pk))
    assert time.monotonic() - started < 1.6
    assert Attempt.objects.get(delivery=delivery).error == "no complete answer within 1 s"


def test_a_slow_answer_within_the_deadline_is_delivered(notify_settings, receiver, job):
    receiver.behaviour = Behaviour(delay=0.5)
    webhook(job.repository, receiver.url)
    delivery = only_delivery(job, "failed")
    assert sending.attempt(str(delivery.pk)) is None
    attempt = Attempt.objects.get(delivery=delivery)
    assert attempt.status_code == 200 and attempt.duration_ms >= 500


def test_nobody_listening_is_tried_again(notify_settings, job):
    webhook(job.repository, f"http://127.0.0.1:{closed_port()}/")
    delivery = only_delivery(job, "failed")
    assert sending.attempt(str(delivery.pk)) == 0.2
    assert "could not connect to 127.0.0.1" in Attempt.objects.get(delivery=delivery).error


def test_a_receiver_that_refuses_is_not_asked_again(notify_settings, receiver, job):
    receiver.behaviour = Behaviour(status=410, body=b"gone")
    webhook(job.repository, receiver.url)
    delivery = only_delivery(job, "failed")
    assert sending.attempt(str(delivery.pk)) is None
    delivery.refresh_from_db()
    assert (delivery.state, delivery.tries) == ("failed", 1)


def test_a_receiver_asking_to_slow_down_is_tried_again(notify_settings, receiver, job):
    receiver.behaviour = Behaviour(status=429)
    webhook(job.repository, receiver.url)
    assert sending.attempt(str(only_delivery(job, "failed").pk)) == 0.2


def test_a_duplicate_message_sends_nothing_twice(notify_settings, receiver, job):
    webhook(job.repository, receiver.url)
    delivery = only_delivery(job, "failed")
    deliver(str(delivery.pk))  # the task, called as the worker would
    deliver(str(delivery.pk))
    assert len(receiver.received) == 1


def test_only_the_events_an_endpoint_wants_are_sent(notify_settings, receiver, job):
    webhook(job.repository, receiver.url, on_succeeded=False, on_failed=True, on_cancelled=False)
    assert events.fan_out(job.id, "succeeded") == []
    assert events.fan_out(job.id, "started") == []
    assert len(events.fan_out(job.id, "failed")) == 1


def test_farm_wide_endpoints_hear_of_every_build(notify_settings, receiver, job, repository):
    Endpoint.objects.create(name="ops", url=receiver.url)  # no repository: farm-wide
    other = BuildJob.objects.create(image="localhost:5000/x/y:latest", status=BuildJob.Status.SUCCEEDED)
    assert len(events.fan_out(other.id, "succeeded")) == 1
    assert len(events.fan_out(job.id, "failed")) == 1


def test_another_repositorys_endpoint_hears_nothing(notify_settings, receiver, job, team):
    elsewhere = Repository.objects.create(full_name="octo/other", clone_url="https://x.invalid/o.git",
                                          webhook_secret="s", image="localhost:5000/octo/other", team=team)  # fmt: skip
    webhook(elsewhere, receiver.url)
    assert events.fan_out(job.id, "failed") == []


def test_a_started_build_is_described_as_it_was_then(notify_settings, receiver, job):
    job.status, job.digest = BuildJob.Status.SUCCEEDED, "sha256:" + "a" * 64
    job.save()
    webhook(job.repository, receiver.url, on_started=True)
    sending.attempt(str(only_delivery(job, "started").pk))
    build = json.loads(receiver.received[0].body)["build"]
    assert (build["status"], build["digest"], build["error"], build["finished_at"]) == ("building", "", "", None)


def test_slack_gets_a_message_it_can_show(notify_settings, receiver, job):
    Endpoint.objects.create(name="slack", repository=job.repository, kind="slack", url=receiver.url)
    sending.attempt(str(only_delivery(job, "failed").pk))

    (got,) = receiver.received
    assert "X-Generator-Signature-256" not in got.headers and got.headers["Content-Type"] == "application/json"
    message = json.loads(got.body)
    page = f"https://farm.example.invalid/builds/{job.id}/"
    assert message["text"] == (
        f"Build of localhost:5000/octo/app:main (octo/app main {SHA[:12]}) failed: <{page}|{job.id[:12]}>"
    )
    (attachment,) = message["attachments"]
    assert attachment["color"] == "danger" and attachment["title_link"] == page
    assert {"title": "Error", "value": "the RUN step exited 1", "short": False} in attachment["fields"]


def test_email_goes_to_the_pusher_and_the_list(notify_settings, job):
    Endpoint.objects.create(
        name="mail", repository=job.repository, kind="email", email_to="ops@example.com, team@example.com",
        email_pusher=True,
    )  # fmt: skip
    delivery = only_delivery(job, "failed")
    assert sending.attempt(str(delivery.pk)) is None

    (message,) = mail.outbox
    assert message.to == ["ops@example.com", "team@example.com", "pusher@example.com"]
    assert message.subject == f"[generator] Build of localhost:5000/octo/app:main (octo/app main {SHA[:12]}) failed"
    assert "the RUN step exited 1" in message.body and f"/builds/{job.id}/" in message.body
    assert message.extra_headers["X-Generator-Delivery"] == str(delivery.pk)
    assert Attempt.objects.get(delivery=delivery).response_excerpt == "sent to 3 recipient(s)"


def test_email_to_an_unknown_pusher_only_is_not_made(notify_settings, job):
    job.pusher_email = ""
    job.save()
    Endpoint.objects.create(name="mail", repository=job.repository, kind="email", email_pusher=True)
    assert events.fan_out(job.id, "failed") == []


def test_the_metadata_address_is_refused_at_send_time(notify_settings, job):
    notify_settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES = False
    webhook(job.repository, "http://169.254.169.254/latest/meta-data/")  # saved before the rules, or by hand
    delivery = only_delivery(job, "failed")
    assert sending.attempt(str(delivery.pk)) is None
    delivery.refresh_from_db()
    assert delivery.state == "failed"
    error = delivery.attempts.get().error
    assert error.startswith("the receiver URL http://169.254.169.254/latest/meta-data/ names 169.254.169.254")
    assert "link-local" in error


def test_the_farms_own_redis_is_refused_even_where_local_addresses_are_allowed(notify_settings, job):
    redis = urlsplit(notify_settings.REDIS_URL)
    webhook(job.repository, f"http://{redis.hostname}:{redis.port}/")
    delivery = only_delivery(job, "failed")
    assert sending.attempt(str(delivery.pk)) is None
    assert delivery.attempts.get().error == (
        f"the receiver URL leads to {redis.hostname}:{redis.port}, the farm's own Redis"
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.7/hook", "a private address"),
        ("http://localhost:8080/hook", "a loopback address"),
        ("http://2130706433/hook", "a loopback address"),
        ("ftp://example.com/hook", "is not an http(s) URL"),
        ("http://user:pw@example.com/hook", "carries a user or password"),
    ],
)
def test_refused_receivers_cannot_be_saved(settings, repository, url, says):
    from django.core.exceptions import ValidationError

    settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES = False
    endpoint = Endpoint(name="x", repository=repository, url=url)
    with pytest.raises(ValidationError) as refused:
        endpoint.clean()
    assert says in str(refused.value)


def test_every_notification_task_is_routed_to_the_notify_queue_and_the_farms_own_to_farm():
    """By default: beat's sweeps and prunes too, so no send ever waits on or holds
    the control worker (dispatch, health checks, reaper)."""
    from celery import current_app

    def queue_of(name: str) -> str:
        return current_app.amqp.router.route({}, name)["queue"].name

    notify = [name for name in current_app.tasks if name.startswith("notify.")]
    assert {"notify.fan_out", "notify.deliver", "notify.retry_due", "notify.prune"} <= set(notify)
    assert {queue_of(name) for name in notify} == {"notify"}
    assert {queue_of(name) for name in ("farm.dispatch", "farm.reap", "farm.check_health")} == {"farm"}


def test_a_status_change_queues_one_message_on_the_notify_queue_not_the_control_workers(
    notify_settings, receiver, job, daemon, django_capture_on_commit_callbacks
):
    """The build's own path: the transition commits, one task message goes to the
    notify queue (by default "notify", served by the notify worker, not the control
    worker's "farm"), nothing is sent from the build's process."""
    import redis as redis_client

    receiver.behaviour = Behaviour(silent=True)  # would hold a sender for the whole timeout
    webhook(job.repository, receiver.url, on_started=True)
    BuildJob.objects.filter(pk=job.pk).update(status="queued", daemon=daemon, error="")
    broker = redis_client.Redis.from_url(notify_settings.CELERY_BROKER_URL)
    before, farm_before = broker.llen("notify"), broker.llen("farm")

    started = time.monotonic()
    with django_capture_on_commit_callbacks(execute=True):
        assert transitions.claim(job.id, 1, daemon.pk, "w", 60)
    assert time.monotonic() - started < 0.5
    assert receiver.received == []
    assert broker.llen("notify") == before + 1
    # The control worker's queue gets no notification: only the commit's GitHub
    # check run going in_progress (farm.report_status, builds/github/check_runs.py).
    added_to_farm = [
        json.loads(m)["headers"]["task"] for m in broker.lrange("farm", 0, broker.llen("farm") - farm_before - 1)
    ]
    assert added_to_farm in ([], ["farm.report_status"])
    message = json.loads(broker.lindex("notify", 0))
    assert message["headers"]["task"] == "notify.fan_out"
    args, _, _ = json.loads(base64.b64decode(message["body"]))
    assert args == [job.id, "started"]
    job.refresh_from_db()
    assert job.status == "building" and job.started_at is not None


def test_a_broken_notifier_changes_nothing_about_the_build(
    notify_settings, job, daemon, django_capture_on_commit_callbacks
):
    from builds.signals import job_event

    def broken(**kwargs):
        raise RuntimeError("the notifier is broken")

    job_event.connect(broken, dispatch_uid="test-broken")
    try:
        BuildJob.objects.filter(pk=job.pk).update(status="pushing", error="", finished_at=None)
        with django_capture_on_commit_callbacks(execute=True):
            assert transitions.succeed(job.id, 1, "sha256:" + "b" * 64)
    finally:
        job_event.disconnect(dispatch_uid="test-broken")
    job.refresh_from_db()
    assert job.status == "succeeded" and job.finished_at is not None


def test_the_fan_out_task_creates_deliveries_and_queues_them(notify_settings, receiver, job):
    webhook(job.repository, receiver.url)
    fan_out(job.id, "failed")  # the task function, as the control worker runs it
    (delivery,) = Delivery.objects.filter(job=job)
    assert delivery.event == "failed" and delivery.state == "pending"
    # Sent now (a message per delivery); the sweep would find it due too.
    assert sending.due() == [str(delivery.pk)]


def test_old_finished_deliveries_are_pruned_and_pending_ones_kept(notify_settings, receiver, job):
    from datetime import timedelta

    from django.utils import timezone

    webhook(job.repository, receiver.url)
    old_done, old_pending, recent = (only_delivery(job, "failed") for _ in range(3))
    Delivery.objects.filter(pk=old_done.pk).update(state="delivered", created_at=timezone.now() - timedelta(days=31))
    Delivery.objects.filter(pk=old_pending.pk).update(created_at=timezone.now() - timedelta(days=31))
    assert sending.prune() == 1
    assert set(Delivery.objects.values_list("pk", flat=True)) == {old_pending.pk, recent.pk}
