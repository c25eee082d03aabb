"""The webhook front door and what it builds, under hostile input (issue 13):
deep nesting, pushes sent again with new delivery ids (one at a time and at
once), probing for registered repositories, rules that fail at push time or
backtrack, and clone URLs or a GitHub API base pointing into the farm."""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import Client
from django.utils import timezone

from builds.github import statuses, webhooks
from builds.github.webhook_json import MAX_CONTAINERS, MAX_DEPTH, brackets_close_within
from builds.models import BuildJob, BuildRule, Repository, WebhookDelivery, validate_clone_url
from builds.triggers.rules import PushedRef, match, tags_for
from lib.outbound import RefusedURL
from tests.builds.github.test_webhooks import (
    BAD_SIGNATURE,
    EXAMPLES,
    deliver,
    example,
    force_push,
    push_to_existing_branch,
    register,
)
from tests.fake_github import FakeGitHub


@pytest.fixture
def repository(daemon, allowed_registry):
    register("Octocoders/Hello-World")  # the example payloads' two owners, as in test_webhooks.py
    return register("Codertocat/Hello-World")


PUSH = "api.github.com/push/with-new-branch.payload.json"


def push_body() -> bytes:
    return json.dumps(example(PUSH)).encode()


# --- nesting ---------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000, b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000],
    ids=["100000-open", "100000-closed", "100000-objects"],
)
def test_deep_nesting_is_a_400_json_answer_before_any_signature_check(client, repository, body):
    response = deliver(client, None, raw=body, signature="sha256=" + "0" * 64)
    assert response.status_code == 400 and response["Content-Type"] == "application/json"
    assert "nests deeper than 64 levels" in response.json()["result"]
    assert not WebhookDelivery.objects.exists()


def test_one_level_past_the_limit_is_refused_and_the_limit_itself_is_read(client, repository):
    at_limit = example(PUSH)
    at_limit["deep"] = json.loads("[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1))  # the payload is level 1
    assert deliver(client, at_limit).status_code == 202
    past = example(PUSH)
    past["deep"] = json.loads("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    assert deliver(client, past).status_code == 400


def depth_of(value) -> int:
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    return 0 if children is None else 1 + max(map(depth_of, children), default=0)


def random_document(rng: random.Random, levels: int):
    """Nested arrays and objects whose strings hold brackets, quotes and backslashes."""

    def text() -> str:
        return "".join(rng.choices(["[", "]", "{", "}", '"', "\\", "a", "\n", "é", '\\"'], k=rng.randint(0, 6)))

    kind = rng.random()
    if levels and kind < 0.4:
        return [random_document(rng, levels - 1) for _ in range(rng.randint(0, 3))]
    if levels and kind < 0.7:
        return {text(): random_document(rng, levels - 1) for _ in range(rng.randint(0, 3))}
    return text() if kind < 0.9 else rng.choice([1, None, True, 2.5])


def test_the_depth_scan_agrees_with_the_parsed_depth_whatever_the_strings_hold():
    rng = random.Random(13)
    for _ in range(5000):
        document = random_document(rng, rng.randint(0, 8))
        body = json.dumps(document, ensure_ascii=rng.random() < 0.5).encode()
        depth = depth_of(document)
        assert brackets_close_within(body, depth, MAX_CONTAINERS), body
        assert depth == 0 or not brackets_close_within(body, depth - 1, MAX_CONTAINERS), body


def test_brackets_and_quotes_inside_a_commit_message_do_not_count(client, repository):
    payload = example(PUSH)
    payload["head_commit"]["message"] = '[{"\\' * 100_000
    payload["deep"] = json.loads("[" * 100 + "]" * 100)
    response = deliver(client, payload)
    assert response.status_code == 400 and "nests deeper than 64" in response.json()["result"]
    del payload["deep"]
    assert deliver(client, payload).status_code == 202


def test_too_many_arrays_and_objects_are_refused():
    body = b"[" + b"[]," * MAX_CONTAINERS + b"[]]"
    assert not brackets_close_within(body, MAX_DEPTH, MAX_CONTAINERS)
    assert brackets_close_within(b"[" + b"[]," * (MAX_CONTAINERS - 2) + b"[]]", MAX_DEPTH, MAX_CONTAINERS)


def test_every_real_payload_is_well_within_the_limits():
    for path in EXAMPLES.rglob("*.json"):
        assert brackets_close_within(path.read_bytes(), 5, 100), path


def test_the_depth_scan_of_a_25_mb_body_takes_a_fraction_of_a_second():
    bodies = [b"[" + b'"[",[],' * 3_500_000 + b'""]', b"[" + b'"",' * 8_000_000 + b'""]', b"[" * 25_000_000]
    for body in bodies:
        started = time.perf_counter()
        brackets_close_within(body, MAX_DEPTH, MAX_CONTAINERS)
        assert time.perf_counter() - started < 1.0


# --- one build per (repository, ref, commit) ---------------------------------


def test_a_push_sent_again_with_new_delivery_ids_builds_once(client, repository):
    first = deliver(client, example(PUSH), delivery="first")
    [job] = first.json()["jobs"]
    for delivery in ("second", "third"):
        again = deliver(client, example(PUSH), delivery=delivery)
        assert again.status_code == 202 and again.json()["jobs"] == [job]
        assert again.json()["result"] == (
            "already built: branch master at 6113728f27ae came in delivery first; one build per commit of a ref"
        )
    assert BuildJob.objects.count() == 1
    assert WebhookDelivery.objects.count() == 3  # every verified delivery is listed, with what came of it
    assert deliver(client, example(PUSH), delivery="third").json()["jobs"] == [job]  # a redelivery of a repeat
    # The key is (repository, ref, commit): the same commit as a tag, or in another repository, builds.
    tag = example(PUSH)
    tag["ref"] = "refs/tags/v1"
    other = example(PUSH)
    other["repository"]["full_name"] = "Octocoders/Hello-World"
    assert len(deliver(client, tag, delivery="tag").json()["jobs"]) == 1
    assert len(deliver(client, other, delivery="other-repository").json()["jobs"]) == 1
    assert BuildJob.objects.count() == 3


def test_the_same_push_builds_again_once_its_window_is_over(client, repository, settings):
    settings.GENERATOR_WEBHOOK_DEDUPE_SECONDS = 3600
    [first] = deliver(client, example(PUSH), delivery="first").json()["jobs"]
    WebhookDelivery.objects.update(received_at=timezone.now() - timedelta(seconds=3601))
    [second] = deliver(client, example(PUSH), delivery="second").json()["jobs"]
    assert second != first and BuildJob.objects.count() == 2
    assert deliver(client, example(PUSH), delivery="third").json()["jobs"] == [second]


def test_a_force_push_back_to_a_built_commit_builds_it_again_but_a_copy_of_the_old_push_does_not(client, repository):
    old = push_to_existing_branch()
    [built] = deliver(client, old, delivery="old").json()["jobs"]
    deliver(client, force_push(), delivery="newer")
    assert deliver(client, old, delivery="copy-of-old").json()["jobs"] == [built]
    back = push_to_existing_branch()
    back.update(before=force_push()["after"], forced=True)  # main moved from the newer commit back
    [rebuilt] = deliver(client, back, delivery="back").json()["jobs"]
    assert rebuilt != built and BuildJob.objects.filter(commit_sha=old["after"]).count() == 2


def test_a_push_that_built_nothing_builds_when_delivered_again_then_only_once(client, repository):
    from pool.models import DockerDaemon

    DockerDaemon.objects.update(enabled=False)
    assert deliver(client, example(PUSH), delivery="empty-pool").status_code == 503
    DockerDaemon.objects.update(enabled=True)
    [job] = deliver(client, example(PUSH), delivery="again").json()["jobs"]
    assert deliver(client, example(PUSH), delivery="once-more").json()["jobs"] == [job]
    assert BuildJob.objects.count() == 1


def deliver_at_once(deliveries: list[str], payload: dict) -> list[dict]:
    """Each delivery from its own thread (its own database connection), released together."""
    start = threading.Barrier(len(deliveries))
    answers: dict[str, dict] = {}

    def send(delivery: str) -> None:
        try:
            start.wait()
            response = deliver(Client(), payload, delivery=delivery)
            answers[delivery] = {"status": response.status_code, **response.json()}
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(d,)) for d in deliveries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return [answers[d] for d in deliveries]


@pytest.mark.django_db(transaction=True)
def test_deliveries_of_one_push_at_once_build_once(transactional_db, repository):
    answers = deliver_at_once([f"burst-{n}" for n in range(6)], example(PUSH))
    [job] = BuildJob.objects.values_list("pk", flat=True)
    assert [(a["status"], a["jobs"]) for a in answers] == [(202, [job])] * 6
    assert sum(a["result"].startswith("building") for a in answers) == 1
    assert WebhookDelivery.objects.count() == 6


@pytest.mark.django_db(transaction=True)
def test_two_deliveries_past_the_check_at_once_still_build_once(transactional_db, repository, monkeypatch):
    """Both deliveries look for an earlier one before either has recorded its
    push (on PostgreSQL; SQLite lets the second begin only once the first has
    committed): the unique key decides."""
    both_looked = threading.Barrier(2)
    look = webhooks._first_delivery

    def look_then_wait(*args):
        found = look(*args)
        # Broken when the other cannot come (SQLite: it waits for this transaction) or on a second look.
        with contextlib.suppress(threading.BrokenBarrierError):
            both_looked.wait(timeout=2)
        return found

    monkeypatch.setattr(webhooks, "_first_delivery", look_then_wait)
    answers = deliver_at_once(["racer-1", "racer-2"], example(PUSH))
    [job] = BuildJob.objects.values_list("pk", flat=True)
    assert [(a["status"], a["jobs"]) for a in answers] == [(202, [job])] * 2


# --- who is registered -------------------------------------------------------


def test_an_unregistered_repository_is_answered_as_a_bad_signature_byte_for_byte(client, repository):
    wrong = deliver(client, example(PUSH), secret="not the secret")
    unregistered = example(PUSH)
    unregistered["repository"]["full_name"] = "someone/else"
    # Signed with the right secret of another repository, or any at all: the same answer.
    answers = [wrong, deliver(client, unregistered), deliver(client, unregistered, secret="guess")]
    for response in answers:
        assert response.status_code == 401
        assert response.content == wrong.content == json.dumps({"result": BAD_SIGNATURE, "jobs": []}).encode()
        assert sorted(response.items()) == sorted(wrong.items())
    assert not WebhookDelivery.objects.exists() and not BuildJob.objects.exists()


@pytest.mark.parametrize("full_name", ["someone/else", "x" * 5000, "nul\x00name", ["a", "list"]])
def test_an_unregistered_repository_costs_an_hmac_of_the_whole_body(client, repository, monkeypatch, full_name):
    checked = []
    real = webhooks.signature_matches

    def recording(secret, body, header):
        checked.append(len(body))
        return real(secret, body, header)

    monkeypatch.setattr(webhooks, "signature_matches", recording)
    payload = example(PUSH)
    payload["repository"]["full_name"] = full_name
    body = json.dumps(payload).encode()
    response = deliver(client, None, raw=body)
    assert (response.status_code, response.json()["result"], checked) == (401, BAD_SIGNATURE, [len(body)])


# --- build rules -------------------------------------------------------------


def test_a_template_naming_a_missing_group_is_refused_by_the_api(client, operator):
    client.force_login(operator)
    response = client.post(
        "/api/v1/repositories/",
        {
            "full_name": "team/app",
            "clone_url": "https://github.com/team/app.git",
            "webhook_secret": "s",
            "image": "localhost:5000/team/app",
            "rules": [{"source": "tag", "pattern": "/^v(.*)$/", "tags": "{9}"}],
        },
        content_type="application/json",
    )
    assert response.status_code == 400, response.content
    assert "{9} in '{9}': the rule's expression has 1 group" in json.dumps(response.json())
    assert not Repository.objects.filter(full_name="team/app").exists()


def test_a_template_naming_a_missing_group_is_refused_by_admin_validation(repository):
    rule = BuildRule(repository=repository, source="tag", pattern="/^v(.*)$/", tags="{9}")
    with pytest.raises(ValidationError, match="has 1 group"):
        rule.full_clean()


def test_a_rule_saved_around_the_checks_is_a_recorded_400_at_push_not_a_500(client, repository):
    BuildRule.objects.create(repository=repository, source="branch", pattern="/^(mas)ter$/", tags="{9}")
    response = deliver(client, example(PUSH))
    assert response.status_code == 400
    assert response.json()["result"] == (
        "a build rule of Codertocat/Hello-World cannot be applied: {9}: the expression has 1 group(s) (fix it in admin)"
    )
    assert WebhookDelivery.objects.get().status_code == 400 and not BuildJob.objects.exists()


def test_a_backtracking_expression_matches_a_50000_character_name_in_linear_time():
    crafted = "a" * 50_000 + "!"
    started = time.perf_counter()
    assert match("/(a+)+$/", crafted) is None
    assert match("/^(a|aa)+$/", crafted) is None
    assert tags_for([BuildRule(source="branch", pattern="/(a+)+$/", tags="x")], PushedRef("branch", crafted), "0") == []
    assert time.perf_counter() - started < 0.2


@pytest.mark.timeout(20)  # Python's re would take longer than the universe's age
def test_a_push_of_a_crafted_branch_against_a_backtracking_rule_answers_at_once(client, repository):
    BuildRule.objects.create(repository=repository, source="branch", pattern="/(a+)+$/", tags="evil")
    payload = example(PUSH)
    payload["ref"] = "refs/heads/" + "a" * 200 + "!"
    started = time.perf_counter()
    response = deliver(client, payload)
    assert time.perf_counter() - started < 1.0
    assert response.json()["result"] == f"ignored: no build rule matches branch {'a' * 200}!"


def test_a_50000_character_ref_is_ignored_saying_why(client, repository):
    payload = example(PUSH)
    payload["ref"] = "refs/heads/" + "a" * 50_000
    response = deliver(client, payload)
    assert response.status_code == 202 and not BuildJob.objects.exists()
    assert response.json()["result"] == "ignored: the ref is 50011 characters long; the farm builds refs of 255"


@pytest.mark.parametrize("ref", ["refs/heads/nul\x00byte", "refs/heads/\ud800", "refs/heads/a..b", "refs/heads/a b"])
def test_a_ref_git_would_refuse_is_a_400_that_does_not_echo_it(client, repository, ref):
    payload = example(PUSH)
    payload["ref"] = ref
    response = deliver(client, payload)
    assert response.status_code == 400
    assert response.json()["result"] == "the payload's ref has characters git refuses in a ref name"


@pytest.mark.parametrize(
    ("event", "delivery"), [("push", "x" * 101), ("push", "has space"), ("x" * 51, "ok"), ("Push\x7f", "ok")]
)
def test_unsigned_headers_past_what_github_sends_are_a_400(client, repository, event, delivery):
    response = deliver(client, example(PUSH), event=event, delivery=delivery)
    assert response.status_code == 400 and not WebhookDelivery.objects.exists()


# --- clone URLs and the GitHub API base --------------------------------------

REFUSED_CLONE_URLS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://127.0.0.1:6379/",
    "https://10.1.2.3/team/app.git",
    "https://192.168.1.10/team/app.git",
    "https://172.16.0.1/team/app.git",
    "http://[::1]:8080/x.git",
    "ssh://git@[fe80::1%25eth0]/x.git",
    "http://2130706433/x.git",
    "http://0x7f.1/x.git",
    "http://0177.0.0.1/x.git",
    "http://github.com@127.0.0.1/x.git",
    "git@127.0.0.1:team/app.git",
    "git@[::ffff:169.254.169.254]:team/app.git",
    "http://localhost:8080/x.git",
    "https://evil.localhost./x.git",
]


@pytest.mark.parametrize("url", REFUSED_CLONE_URLS)
def test_a_clone_url_on_a_refused_address_is_refused_at_save(client, operator, url):
    client.force_login(operator)
    response = client.post(
        "/api/v1/repositories/",
        {"full_name": "team/app", "clone_url": url, "webhook_secret": "s", "image": "localhost:5000/team/app"},
        content_type="application/json",
    )
    assert response.status_code == 400
    [message] = response.json()["clone_url"]
    assert message.startswith(f"the clone URL {url} names ") and "GENERATOR_ALLOW_LOCAL_REPOSITORIES" in message
    assert not Repository.objects.exists()


def test_the_refusal_names_the_rule_and_public_or_allowed_hosts_pass(settings):
    with pytest.raises(ValidationError) as refused:
        validate_clone_url("http://169.254.169.254/")
    assert refused.value.messages == [
        "the clone URL http://169.254.169.254/ names 169.254.169.254, a link-local address (such as the cloud"
        " metadata service): not reachable from a build (the farm's egress rules, docs/security.md;"
        " GENERATOR_ALLOW_LOCAL_REPOSITORIES=true allows local addresses)"
    ]
    for public in ("https://github.com/team/app.git", "https://140.82.112.3/team/app.git", "git@github.com:t/a.git"):
        validate_clone_url(public)
    settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES = True
    for local in ("http://169.254.169.254/", "http://127.0.0.1:6379/", "file:///srv/git/app.git", "git@10.0.0.5:t/a"):
        validate_clone_url(local)


@pytest.mark.parametrize("url", ["https://github.com/a b.git", "https://github.com/a\\@127.0.0.1/x", "https://x\n"])
def test_a_clone_url_with_whitespace_or_a_backslash_is_refused_even_when_local_is_allowed(url, settings):
    settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES = True
    with pytest.raises(ValidationError, match="whitespace, a control character or a backslash"):
        validate_clone_url(url)


@pytest.mark.parametrize("base", ["http://169.254.169.254/api", "http://127.0.0.1:9", "https://10.0.0.1/api/v3"])
def test_a_github_api_base_on_a_refused_address_is_refused(settings, base):
    settings.GENERATOR_GITHUB_API_URL = base
    with pytest.raises(RefusedURL, match=r"GENERATOR_GITHUB_API_URL .* names "):
        statuses.api_base()
    settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES = True
    assert statuses.api_base() == base


def test_no_token_goes_to_a_refused_api_base(settings, db):
    github = FakeGitHub()  # on loopback
    try:
        settings.GENERATOR_GITHUB_API_URL = github.url
        repository = register("Codertocat/Hello-World")
        repository.access_token = "tok"
        repository.save()
        job = BuildJob.objects.create(
            image="localhost:5000/c/h:latest", repository=repository, commit_sha="1" * 40, ref="refs/heads/main"
        )
        statuses.report(job.id)  # refused: logged, nothing sent, nothing to retry
        assert github.statuses == []
        settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES = True
        statuses.report(job.id)
        assert [s["authorization"] for s in github.statuses] == ["Bearer tok"]
    finally:
        github.close()
