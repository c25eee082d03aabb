"""POST /webhooks/github/ with GitHub's own payload examples (shared/testdata) and
the cases they lack, written from GitHub's schemas and checked against them."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from django.test import override_settings
from django.utils import timezone
from referencing import Registry, Resource

from builds.github.webhooks import BAD_SIGNATURE, signature_of
from builds.models import BuildJob, BuildLogLine, BuildRule, Repository, WebhookDelivery
from builds.worker.builders import cache_candidates
from tests.conftest import SHARED

WEBHOOKS = SHARED / "testdata" / "github-webhooks"
EXAMPLES = WEBHOOKS / "payload-examples"
SECRET = "It's a Secret to Everybody"
SHA = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"


def test_the_signature_is_githubs_documented_vector():
    assert signature_of(SECRET, b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


def register(full_name: str) -> Repository:
    repo = Repository.objects.create(
        full_name=full_name,
        clone_url=f"https://git.example.invalid/{full_name}.git",
        webhook_secret=SECRET,
        image=f"localhost:5000/{full_name.lower()}",
    )
    BuildRule.objects.create(repository=repo, source="branch", pattern="master", tags="latest,sha-{short_sha}")
    BuildRule.objects.create(repository=repo, source="tag", pattern="/.*/", tags="{ref}")
    return repo


@pytest.fixture
def repository(daemon, allowed_registry):
    # GitHub Enterprise's examples come from Octocoders' copy of the same repository.
    register("Octocoders/Hello-World")
    return register("Codertocat/Hello-World")


def deliver(client, payload, *, event="push", secret=SECRET, delivery=None, signature=None, raw=None):
    body = raw if raw is not None else json.dumps(payload).encode()
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or f"d-{id(body)}-{len(body)}"}
    if signature is not False:
        headers["X-Hub-Signature-256"] = signature or signature_of(secret, body)
    return client.post("/webhooks/github/", body, content_type="application/json", headers=headers)


def example(path: str) -> dict:
    return json.loads((EXAMPLES / path).read_text())


def all_examples() -> list[tuple[str, str]]:
    return sorted((p.parent.name, str(p.relative_to(EXAMPLES))) for p in EXAMPLES.rglob("*.json"))


def expected_outcome(event: str, payload: dict) -> tuple[int, int]:
    """(status, jobs) that the rules above give for a payload."""
    if "repository" not in payload:
        return 202, 0  # an organization's hook: not supported, not recorded
    if event == "ping":
        return 200, 0
    if event != "push":
        return 202, 0
    return 202, 0 if payload["deleted"] else 1


@pytest.mark.parametrize(("event", "path"), all_examples(), ids=[p for _, p in all_examples()])
def test_every_github_example_is_handled(client, repository, event, path):
    payload = example(path)
    status, jobs = expected_outcome(event, payload)
    response = deliver(client, payload, event=event, delivery=path)
    assert response.status_code == status, response.json()
    assert len(response.json()["jobs"]) == jobs
    if "repository" not in payload:
        assert not WebhookDelivery.objects.exists()
        return
    repository = Repository.objects.get(full_name=payload["repository"]["full_name"])
    delivery = WebhookDelivery.objects.get(delivery_id=path)
    assert (delivery.event, delivery.status_code, delivery.repository) == (event, status, repository)
    if jobs:
        job = BuildJob.objects.get(pk=response.json()["jobs"][0])
        assert (job.commit_sha, job.ref, job.repository) == (payload["after"], payload["ref"], repository)
    if event == "ping":
        repository.refresh_from_db()
        assert repository.hook_verified_at is not None


@pytest.mark.parametrize(("event", "path"), all_examples(), ids=[p for _, p in all_examples()])
def test_a_wrong_signature_is_401_and_stores_nothing(client, repository, event, path):
    payload = example(path)
    response = deliver(client, payload, event=event, secret="not the secret")
    assert response.status_code == (401 if "repository" in payload else 202)
    assert not WebhookDelivery.objects.exists() and not BuildJob.objects.exists()


def test_a_missing_signature_is_401(client, repository):
    response = deliver(client, example("api.github.com/push/with-new-branch.payload.json"), signature=False)
    assert response.status_code == 401 and "X-Hub-Signature-256 is missing" in response.json()["result"]
    assert not WebhookDelivery.objects.exists()


def test_a_new_branch_push_builds_at_the_commit_with_every_tag(client, repository):
    response = deliver(client, example("api.github.com/push/with-new-branch.payload.json"))
    assert response.status_code == 202
    assert response.json()["result"] == "building branch master at 6113728f27ae as latest, sha-6113728"
    job = BuildJob.objects.get(pk=response.json()["jobs"][0])
    assert (job.image, job.extra_tags) == ("localhost:5000/codertocat/hello-world:latest", ["sha-6113728"])
    assert job.dockerfile == "" and job.status == "queued"


def test_the_clone_url_in_a_payload_is_never_used(client, repository):
    payload = example("api.github.com/push/with-new-branch.payload.json")
    payload["repository"]["clone_url"] = "file:///etc"
    payload["repository"]["git_url"] = "git://169.254.169.254/x"
    job = BuildJob.objects.get(pk=deliver(client, payload).json()["jobs"][0])
    assert job.repository.clone_url == "https://git.example.invalid/Codertocat/Hello-World.git"


def test_a_redelivery_answers_as_the_first_and_builds_nothing_more(client, repository):
    payload = example("api.github.com/push/with-new-branch.payload.json")
    first = deliver(client, payload, delivery="same-delivery")
    again = deliver(client, payload, delivery="same-delivery")
    assert (again.status_code, again.json()) == (first.status_code, first.json())
    assert again["X-Generator-Redelivery"] == "true"
    assert BuildJob.objects.count() == 1 and WebhookDelivery.objects.count() == 1


def test_malformed_json_is_400(client, repository):
    response = deliver(client, None, raw=b"{not json")
    assert response.status_code == 400 and "not JSON" in response.json()["result"]


@override_settings(GENERATOR_WEBHOOK_MAX_BYTES=1000)
def test_an_oversize_body_is_413(client, repository):
    response = deliver(client, example("api.github.com/push/with-new-branch.payload.json"))
    assert response.status_code == 413
    assert not WebhookDelivery.objects.exists()


def test_an_unknown_repository_is_401_as_a_bad_signature_and_not_recorded(client, repository):
    payload = example("api.github.com/push/with-new-branch.payload.json")
    payload["repository"]["full_name"] = "someone/else"
    response = deliver(client, payload)
    assert response.status_code == 401 and response.json()["result"] == BAD_SIGNATURE
    assert not WebhookDelivery.objects.exists() and not BuildJob.objects.exists()


@pytest.mark.parametrize("marker", ["[skip ci]", "[ci skip]"])
def test_a_skip_ci_commit_builds_nothing(client, repository, marker):
    payload = example("api.github.com/push/with-new-branch.payload.json")
    payload["head_commit"]["message"] = f"Update README {marker}"
    response = deliver(client, payload)
    assert response.status_code == 202 and "skip ci" in response.json()["result"]
    assert not BuildJob.objects.exists()


def test_a_push_no_rule_matches_builds_nothing_and_says_why(client, repository):
    payload = push_to_existing_branch()
    payload["ref"] = "refs/heads/develop"
    response = deliver(client, payload)
    assert response.json() == {"result": "ignored: no build rule matches branch develop", "jobs": []}
    assert WebhookDelivery.objects.get().result == "ignored: no build rule matches branch develop"


# --- the cases GitHub's examples lack, written from its schemas ---------------


@pytest.fixture(scope="module")
def push_schema():
    schemas = WEBHOOKS / "payload-schemas" / "api.github.com"
    registry = Registry().with_resources(
        (json.loads(path.read_text())["$id"], Resource.from_contents(json.loads(path.read_text())))
        for path in schemas.rglob("*.schema.json")
    )
    schema = json.loads((schemas / "push" / "event.schema.json").read_text())
    return jsonschema.Draft7Validator(schema, registry=registry)


def push_to_existing_branch(after: str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c") -> dict:
    payload = copy.deepcopy(example("api.github.com/push/with-new-branch.payload.json"))
    payload.update(before=SHA, after=after, created=False, base_ref=None)
    payload["head_commit"] = dict(payload["head_commit"], id=after, message="Second commit")
    payload["commits"] = [payload["head_commit"]]
    payload["compare"] = f"https://github.com/Codertocat/Hello-World/compare/{SHA[:12]}...{after[:12]}"
    return payload


def force_push() -> dict:
    payload = push_to_existing_branch(after="a10867b14bb761a232cd80139fbd4c0d33264240")
    payload["forced"] = True
    return payload


def branch_delete() -> dict:
    payload = push_to_existing_branch(after="0" * 40)
    payload.update(deleted=True, head_commit=None, commits=[])
    return payload


@pytest.mark.parametrize("make", [push_to_existing_branch, force_push, branch_delete])
def test_the_written_cases_follow_githubs_schema(push_schema, make):
    errors = [error.message for error in push_schema.iter_errors(make())]
    assert errors == []


def test_the_shared_examples_follow_the_schema_too(push_schema):
    # The check above could pass by accepting anything: it must refuse a broken payload.
    broken = push_to_existing_branch()
    del broken["ref"]
    assert list(push_schema.iter_errors(broken))
    assert not list(push_schema.iter_errors(example("api.github.com/push/with-new-branch.payload.json")))


def test_a_push_to_an_existing_branch_builds(client, repository):
    response = deliver(client, push_to_existing_branch())
    job = BuildJob.objects.get(pk=response.json()["jobs"][0])
    assert job.commit_sha == "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c" and job.extra_tags == ["sha-0d1a26e"]


def test_a_force_push_builds_the_new_head(client, repository):
    response = deliver(client, force_push())
    assert BuildJob.objects.get(pk=response.json()["jobs"][0]).commit_sha == "a10867b14bb761a232cd80139fbd4c0d33264240"


def test_a_branch_delete_builds_nothing(client, repository):
    response = deliver(client, branch_delete())
    assert response.json() == {"result": "ignored: the push deleted refs/heads/master", "jobs": []}
    assert not BuildJob.objects.exists()


def test_a_newer_push_supersedes_the_waiting_build_of_the_same_ref(client, repository):
    first = deliver(client, push_to_existing_branch(), delivery="one").json()["jobs"][0]
    second = deliver(client, force_push(), delivery="two").json()["jobs"][0]
    old = BuildJob.objects.get(pk=first)
    assert (old.status, old.superseded_by_id) == ("cancelled", second)
    assert BuildLogLine.objects.get(job=old).text.startswith(f"[generator] Superseded by {second}")
    assert BuildJob.objects.get(pk=second).status == "queued"


def test_a_newer_push_asks_a_running_build_to_stop_when_the_repository_says_so(client, repository):
    repository.cancel_superseded_running = True
    repository.save()
    first = deliver(client, push_to_existing_branch(), delivery="one").json()["jobs"][0]
    BuildJob.objects.filter(pk=first).update(status="building")
    second = deliver(client, force_push(), delivery="two").json()["jobs"][0]
    old = BuildJob.objects.get(pk=first)
    assert old.cancel_requested_at is not None and old.superseded_by_id == second


def test_an_empty_pool_is_503_and_recorded(client, repository):
    from pool.models import DockerDaemon

    DockerDaemon.objects.update(enabled=False)
    response = deliver(client, push_to_existing_branch())
    assert response.status_code == 503
    assert WebhookDelivery.objects.get().status_code == 503


def test_the_default_branch_a_push_names_is_kept_and_its_last_image_is_every_builds_cache(client, repository):
    # GitHub says the repository's default branch in every push (its example: master).
    payload = example("api.github.com/push/with-new-branch.payload.json")
    assert deliver(client, payload).status_code == 202
    repository.refresh_from_db()
    assert repository.default_branch == payload["repository"]["default_branch"] == "master"
    main = BuildJob.objects.get(repository=repository)
    BuildJob.objects.filter(pk=main.pk).update(status="succeeded", finished_at=timezone.now())

    feature = copy.deepcopy(payload) | {"ref": "refs/heads/feature/x", "after": "b" * 40, "before": "0" * 40}
    BuildRule.objects.create(repository=repository, source="branch", pattern="/feature/.*/", tags="wip")
    assert deliver(client, feature).status_code == 202
    branch_build = BuildJob.objects.get(repository=repository, ref="refs/heads/feature/x")
    assert cache_candidates(branch_build) == [
        "localhost:5000/codertocat/hello-world:wip",
        "localhost:5000/codertocat/hello-world:latest",  # the default branch's last image, among the image's own
    ]
    BuildJob.objects.filter(pk=main.pk).update(image="localhost:5000/codertocat/hello-world:sha-6113728")
    assert cache_candidates(branch_build)[-1] == "localhost:5000/codertocat/hello-world:sha-6113728"


def test_deliveries_are_counted_for_metrics_once_each(client, repository):
    from builds.models import MetricCounter

    payload = example("api.github.com/push/with-new-branch.payload.json")
    deliver(client, payload, delivery="counted")
    deliver(client, payload, delivery="counted")  # a redelivery of the same id: one delivery
    deliver(client, payload, delivery="a-copy")  # the same push again: answered 202, built nothing
    counted = MetricCounter.objects.get(
        name="generator_webhook_deliveries_total", labels='{"event":"push","status":"202"}'
    )
    assert counted.value == 2 == WebhookDelivery.objects.filter(event="push", status_code=202).count()
