"""Notification endpoints in REST and admin: a team's own (staff: all), secrets
write-only, refused receivers a 400, deliveries listed and redelivered; the
pusher's e-mail taken from GitHub's push."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from builds.models import BuildJob, Repository
from lib import crypto
from notifications import events, sending, signing
from notifications.models import Delivery, Endpoint
from tests.builds.github.test_webhooks import SECRET, deliver, example, register
from tests.receivers import Receiver

URL = "/api/v1/notification-endpoints/"


def api(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {user.api_token}")
    return client


@pytest.fixture
def local_receivers(settings):
    settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES = True  # the receivers are on loopback


@pytest.fixture
def receiver():
    server = Receiver().start()
    yield server
    server.close()


@pytest.fixture
def repo_a(teams):
    return Repository.objects.create(
        full_name="a/app", clone_url="https://x.invalid/a.git", webhook_secret="s", image="localhost:5000/team-a/app",
        team=teams[0],
    )  # fmt: skip


@pytest.fixture
def endpoint_a(repo_a):
    return Endpoint.objects.create(name="a-hook", repository=repo_a, url="https://hooks.example.com/a")


def test_a_team_member_makes_an_endpoint_whose_secret_is_never_answered(alice, repo_a, local_receivers, receiver):
    answer = api(alice).post(
        URL,
        {"name": "ci", "repository": "a/app", "url": receiver.url, "secret": "s3cret-value", "events": ["failed"]},
        format="json",
    )
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert "secret" not in body and "s3cret-value" not in answer.content.decode()
    assert body["has_secret"] is True and body["events"] == ["failed"] and body["kind"] == "webhook"
    endpoint = Endpoint.objects.get(pk=body["id"])
    assert endpoint.secret != "s3cret-value" and crypto.decrypt(endpoint.secret) == "s3cret-value"
    assert (endpoint.on_failed, endpoint.on_succeeded) == (True, False)
    listed = api(alice).get(URL).json()
    assert [e["name"] for e in listed["results"]] == ["ci"] and "s3cret-value" not in json.dumps(listed)


def test_an_update_is_checked_and_an_empty_secret_removes_it(alice, repo_a, settings):
    endpoint = Endpoint.objects.create(name="ci", repository=repo_a, url="https://hooks.example.com/a", secret="x")
    client = api(alice)
    moved = client.patch(f"{URL}{endpoint.pk}/", {"url": "http://169.254.169.254/"}, format="json")
    assert moved.status_code == 400 and "link-local" in moved.json()["url"][0]
    settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES = True
    Endpoint.objects.filter(pk=endpoint.pk).update(url="http://127.0.0.1:9/hook")
    cleared = client.patch(f"{URL}{endpoint.pk}/", {"secret": "", "events": ["started"]}, format="json")
    assert cleared.status_code == 200 and cleared.json()["has_secret"] is False
    endpoint.refresh_from_db()
    assert (endpoint.secret, endpoint.events) == ("", ["started"])


def test_another_team_neither_sees_nor_touches_an_endpoint(bob, endpoint_a):
    client = api(bob)
    assert client.get(URL).json()["results"] == []
    assert client.get(f"{URL}{endpoint_a.pk}/").status_code == 404
    assert (
        client.patch(f"{URL}{endpoint_a.pk}/", {"url": "https://evil.example.com/"}, format="json").status_code == 404
    )
    assert client.delete(f"{URL}{endpoint_a.pk}/").status_code == 404
    assert client.get(f"{URL}{endpoint_a.pk}/deliveries/").status_code == 404
    made = client.post(URL, {"name": "x", "repository": "a/app", "url": "https://hooks.example.com/b"}, format="json")
    assert made.status_code == 400 and "repository" in made.json()
    assert Endpoint.objects.filter(repository__full_name="a/app").count() == 1


def test_only_staff_make_farm_wide_endpoints(alice, operator, local_receivers, receiver):
    payload = {"name": "ops", "repository": None, "url": receiver.url}
    refused = api(alice).post(URL, payload, format="json")
    assert refused.status_code == 400
    assert refused.json()["repository"] == ["only staff set farm-wide endpoints: name one of your repositories"]
    assert api(operator).post(URL, payload, format="json").status_code == 201


def test_staff_see_every_teams_endpoints(operator, endpoint_a):
    assert [e["name"] for e in api(operator).get(URL).json()["results"]] == ["a-hook"]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254, a link-local address"),
        ("http://127.0.0.1:6379/", "127.0.0.1, a loopback address"),
        ("http://[::ffff:10.0.0.1]/", "a private address"),
    ],
)
def test_a_refused_receiver_is_a_400_that_says_why(alice, repo_a, url, says):
    answer = api(alice).post(URL, {"name": "x", "repository": "a/app", "url": url}, format="json")
    assert answer.status_code == 400
    assert says in answer.json()["url"][0]
    assert not Endpoint.objects.exists()


def test_an_email_endpoint_needs_someone_to_mail(alice, repo_a):
    # No receiver URL to check: e-mail goes through the farm's mail settings.
    client = api(alice)
    bad = client.post(URL, {"name": "m", "repository": "a/app", "kind": "email"}, format="json")
    assert bad.status_code == 400 and bad.json()["email_to"] == ["give an address, or mail the pusher"]
    wrong = client.post(URL, {"name": "m", "repository": "a/app", "kind": "email", "email_to": "no at"}, format="json")
    assert wrong.status_code == 400 and "is not an e-mail address" in wrong.json()["email_to"][0]
    ok = client.post(URL, {"name": "m", "repository": "a/app", "kind": "email", "email_pusher": True}, format="json")
    assert ok.status_code == 201


def test_no_events_is_a_400(alice, repo_a):
    answer = api(alice).post(
        URL, {"name": "x", "repository": "a/app", "url": "https://h.example.com/", "events": []}, format="json"
    )
    assert answer.status_code == 400 and "at least one event" in json.dumps(answer.json())


def test_deliveries_are_listed_and_redelivered_over_rest(alice, repo_a, local_receivers, receiver):
    endpoint = Endpoint.objects.create(name="ci", repository=repo_a, url=receiver.url)
    job = BuildJob.objects.create(image="localhost:5000/team-a/app:latest", repository=repo_a, team=repo_a.team)
    (first,) = events.fan_out(job.id, "succeeded")
    sending.attempt(first)

    listed = api(alice).get(f"{URL}{endpoint.pk}/deliveries/").json()
    assert [(d["id"], d["state"], d["attempts"][0]["status_code"]) for d in listed] == [(first, "delivered", 200)]
    again = api(alice).post(f"{URL}{endpoint.pk}/deliveries/{first}/redeliver/")
    assert again.status_code == 202 and again.json()["redelivery_of"] == first
    sending.attempt(again.json()["id"])
    one, two = receiver.received
    assert one.body == two.body and one.headers["X-Generator-Delivery"] != two.headers["X-Generator-Delivery"]
    missing = api(alice).post(f"{URL}{endpoint.pk}/deliveries/00000000-0000-0000-0000-000000000000/redeliver/")
    assert missing.status_code == 404


def test_the_admin_redeliver_action_sends_the_same_signed_body_again(
    client, operator, repo_a, local_receivers, receiver
):
    endpoint = Endpoint.objects.create(
        name="ci", repository=repo_a, url=receiver.url, secret=crypto.encrypt("k"), on_failed=True
    )
    job = BuildJob.objects.create(
        image="localhost:5000/team-a/app:latest", repository=repo_a, status="failed", error="boom"
    )
    (first,) = events.fan_out(job.id, "failed")
    sending.attempt(first)
    client.force_login(operator)

    page = client.get("/admin/notifications/delivery/")
    assert page.status_code == 200 and "200 (" in page.content.decode()
    answer = client.post(
        "/admin/notifications/delivery/", {"action": "redeliver", "_selected_action": [first]}, follow=True
    )
    assert answer.status_code == 200 and "1 redelivery(ies) queued" in answer.content.decode()
    again = Delivery.objects.get(redelivery_of=first)
    assert again.endpoint == endpoint and again.state == "pending"
    sending.attempt(str(again.pk))
    assert receiver.received[1].body == receiver.received[0].body
    assert signing.verify("k", receiver.received[1].body, receiver.received[1].headers["X-Generator-Signature-256"])
    detail = client.get(f"/admin/notifications/delivery/{again.pk}/change/").content.decode()
    assert "Attempts" in detail and "boom" in detail


def test_the_admin_form_keeps_the_secret_write_only(client, operator, repo_a, settings, receiver):
    settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES = True
    client.force_login(operator)
    form = {
        "name": "ci", "repository": repo_a.pk, "kind": "webhook", "url": receiver.url,
        "new_secret": "top-secret-value", "on_failed": "on", "active": "on", "email_to": "",
    }  # fmt: skip
    answer = client.post("/admin/notifications/endpoint/add/", form)
    assert answer.status_code == 302, answer.content.decode()[:3000]
    endpoint = Endpoint.objects.get()
    assert crypto.decrypt(endpoint.secret) == "top-secret-value"
    page = client.get(f"/admin/notifications/endpoint/{endpoint.pk}/change/").content.decode()
    assert "top-secret-value" not in page and endpoint.secret not in page
    settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES = False
    refused = client.post("/admin/notifications/endpoint/add/", {**form, "url": "http://169.254.169.254/"})
    assert refused.status_code == 200 and "link-local" in refused.content.decode()
    assert Endpoint.objects.count() == 1


def test_a_push_records_the_pushers_email_for_notifications(client, daemon, allowed_registry):
    register("Codertocat/Hello-World")
    response = deliver(client, example("api.github.com/push/with-new-branch.payload.json"))
    assert response.status_code == 202, response.content
    (job,) = BuildJob.objects.all()
    assert job.pusher_email == "21031067+Codertocat@users.noreply.github.com"


def test_a_push_without_a_usable_pusher_email_records_none(client, daemon, allowed_registry):
    register("Codertocat/Hello-World")
    payload = example("api.github.com/push/with-new-branch.payload.json")
    payload["pusher"] = {"name": "x", "email": "not an address"}
    assert deliver(client, payload, secret=SECRET).status_code == 202
    assert BuildJob.objects.get().pusher_email == ""
