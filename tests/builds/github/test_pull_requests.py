"""GitHub's pull_request events with its own payload examples
(shared/testdata/github-webhooks-events): what builds, what is pushed, what a
fork's build gets, and what closing cancels."""

from __future__ import annotations

import copy
import json

import pytest

from builds.github import pull_requests, statuses
from builds.jobs import build_secrets, transitions
from builds.models import BuildJob, BuildRule, BuildSecret, WebhookDelivery
from builds.sources import deploy_keys
from builds.worker import builders
from tests.builds.github.test_webhooks import deliver, register
from tests.conftest import SHARED

EXAMPLES = SHARED / "testdata" / "github-webhooks-events" / "payload-examples" / "api.github.com" / "pull_request"
HEAD = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"


def example(action: str) -> dict:
    return json.loads((EXAMPLES / f"{action}.payload.json").read_text())


def from_fork(action: str = "opened") -> dict:
    payload = copy.deepcopy(example(action))
    payload["pull_request"]["head"]["repo"]["full_name"] = "Forker/Hello-World"
    payload["pull_request"]["head"]["repo"]["fork"] = True
    return payload


@pytest.fixture
def repository(daemon, allowed_registry):
    return register("Codertocat/Hello-World")


def only_job(response) -> BuildJob:
    [job_id] = response.json()["jobs"]
    return BuildJob.objects.get(pk=job_id)


@pytest.mark.parametrize("action", pull_requests.BUILDING_ACTIONS)
def test_a_pull_request_builds_its_head_and_is_not_pushed_without_a_rule(client, repository, action):
    response = deliver(client, example(action), event="pull_request", delivery=action)
    assert response.status_code == 202
    assert response.json()["result"] == (
        f"building pull request #2 at {HEAD[:12]}, not pushed: no pull_request rule of "
        "Codertocat/Hello-World pushes pull requests into master"
    )
    job = only_job(response)
    assert (job.ref, job.commit_sha, job.pull_request, job.fork) == ("refs/pull/2/head", HEAD, 2, False)
    assert job.image == "localhost:5000/codertocat/hello-world:pr-2" and job.extra_tags == []
    assert job.not_pushed.startswith("no pull_request rule")
    assert job.pull_request_url == "https://github.com/Codertocat/Hello-World/pull/2"


def test_a_pull_request_rule_for_the_base_branch_pushes_it_under_its_tags(client, repository):
    BuildRule.objects.create(
        repository=repository, source="pull_request", pattern="master", tags="pr-{number},{ref}-pr"
    )
    response = deliver(client, example("opened"), event="pull_request")
    assert response.json()["result"] == f"building pull request #2 at {HEAD[:12]}, as pr-2, master-pr"
    job = only_job(response)
    assert (job.image, job.extra_tags, job.not_pushed) == (
        "localhost:5000/codertocat/hello-world:pr-2",
        ["master-pr"],
        "",
    )


def test_a_pull_request_into_another_base_branch_is_only_built(client, repository):
    BuildRule.objects.create(repository=repository, source="pull_request", pattern="release", tags="pr-{number}")
    assert only_job(deliver(client, example("opened"), event="pull_request")).not_pushed


def test_other_actions_build_nothing(client, repository):
    response = deliver(client, example("labeled"), event="pull_request")
    assert response.json() == {"result": "ignored: a pull request's labeled action does not build", "jobs": []}


def test_a_repository_may_build_no_pull_requests(client, repository):
    repository.pull_requests = "off"
    repository.save()
    response = deliver(client, example("opened"), event="pull_request")
    assert "does not build pull requests (pull_requests: off)" in response.json()["result"]
    assert not BuildJob.objects.exists()


def test_a_forks_pull_request_does_not_build_by_default(client, repository):
    assert repository.pull_requests == "internal"
    response = deliver(client, from_fork(), event="pull_request")
    assert response.json()["result"] == (
        "ignored: pull request #2 comes from Forker/Hello-World, a fork; Codertocat/Hello-World builds pull "
        "requests from its own branches only (pull_requests: internal; all builds forks' too)"
    )
    assert not BuildJob.objects.exists()


def test_a_pull_request_whose_fork_was_deleted_counts_as_a_fork(client, repository):
    payload = copy.deepcopy(example("opened"))
    payload["pull_request"]["head"]["repo"] = None
    assert "comes from a deleted fork" in deliver(client, payload, event="pull_request").json()["result"]


def test_a_forks_pull_request_builds_when_allowed_and_is_never_pushed(client, repository):
    repository.pull_requests = "all"
    repository.save()
    BuildRule.objects.create(repository=repository, source="pull_request", pattern="master", tags="pr-{number}")
    response = deliver(client, from_fork(), event="pull_request")
    assert response.json()["result"] == (
        f"building pull request #2 from the fork Forker/Hello-World at {HEAD[:12]}, not pushed: "
        f"{pull_requests.FORK_NOT_PUSHED}"
    )
    job = only_job(response)
    assert job.fork and job.not_pushed == pull_requests.FORK_NOT_PUSHED


def test_a_forks_build_gets_no_secret_deploy_key_or_shared_cache(repository):
    repository.forward_ssh_to_build = True
    deploy_keys.assign(repository, deploy_keys.check(_ssh_key()))
    repository.save()
    build_secrets.store({"repository": repository}, {"NPM_TOKEN": "s3cret-value"})
    own = BuildJob.objects.create(image="localhost:5000/x:pr-2", repository=repository, pull_request=2)
    fork = BuildJob.objects.create(image="localhost:5000/x:pr-2", repository=repository, pull_request=2, fork=True)
    assert build_secrets.for_job(own) == {"NPM_TOKEN": "s3cret-value"}
    assert build_secrets.for_job(fork) == {}
    assert deploy_keys.forwarded(own) and deploy_keys.forwarded(fork) == ""
    refusal = deploy_keys.ssh_mount_refusal(
        "FROM busybox\nRUN --mount=type=ssh true\n", repository, forwarded=False, fork=True
    )
    assert "a fork's pull request never gets the repository's deploy key" in refusal
    assert builders.cache_namespace(own) != builders.cache_namespace(fork)
    assert BuildSecret.objects.filter(repository=repository).count() == 1  # kept for the repository's own builds


def test_closing_cancels_the_pull_requests_waiting_and_running_builds(client, repository):
    waiting = only_job(deliver(client, example("opened"), event="pull_request"))
    running = BuildJob.objects.create(
        image="localhost:5000/x:pr-2", repository=repository, pull_request=2, ref="refs/pull/2/head", status="building"
    )
    other = BuildJob.objects.create(image="localhost:5000/x:pr-3", repository=repository, pull_request=3)
    response = deliver(client, example("closed"), event="pull_request")
    assert response.json() == {"result": "pull request #2 closed: 2 of its builds cancelled", "jobs": []}
    waiting.refresh_from_db(), running.refresh_from_db(), other.refresh_from_db()
    assert waiting.status == "cancelled" and running.cancel_requested_at is not None
    assert other.status == "queued"


def test_a_reopened_pull_request_builds_its_head_again(client, repository):
    deliver(client, example("opened"), event="pull_request")
    deliver(client, example("closed"), event="pull_request")
    response = deliver(client, example("reopened"), event="pull_request")
    assert response.status_code == 202 and len(response.json()["jobs"]) == 1
    assert BuildJob.objects.filter(pull_request=2).count() == 2


def test_the_same_head_delivered_again_under_a_new_id_builds_once(client, repository):
    first = deliver(client, example("synchronize"), event="pull_request", delivery="a")
    again = deliver(client, example("synchronize"), event="pull_request", delivery="b")
    assert again.json()["jobs"] == first.json()["jobs"]
    assert again.json()["result"].startswith(f"already built: refs/pull/2/head at {HEAD[:12]}")
    assert WebhookDelivery.objects.count() == 2 and BuildJob.objects.count() == 1


def test_a_newer_head_supersedes_the_waiting_build_of_the_pull_request(client, repository):
    first = only_job(deliver(client, example("opened"), event="pull_request"))
    newer = copy.deepcopy(example("synchronize"))
    newer["pull_request"]["head"]["sha"] = "1" * 40
    second = only_job(deliver(client, newer, event="pull_request"))
    first.refresh_from_db()
    assert first.status == "cancelled" and first.superseded_by_id == second.id


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda p: p["pull_request"]["head"].update(sha="not-a-sha"), "head sha is not a commit SHA"),
        (lambda p: p["pull_request"].update(number="2"), "number is not a positive integer"),
        (lambda p: p["pull_request"]["base"].update(ref="a..b"), "base ref is not a branch name"),
        (lambda p: p.pop("pull_request"), "no pull_request"),
    ],
)
def test_a_malformed_pull_request_is_400(client, repository, change, why):
    payload = copy.deepcopy(example("opened"))
    change(payload)
    response = deliver(client, payload, event="pull_request")
    assert response.status_code == 400 and why in response.json()["result"]


def test_an_unpushed_build_succeeds_from_building_and_says_so_on_github(repository):
    job = BuildJob.objects.create(
        image="localhost:5000/x:pr-2", repository=repository, commit_sha=HEAD, status="building", not_pushed="a check"
    )
    assert transitions.succeed_unpushed(job.id, 1, "sha256:abc")
    job.refresh_from_db()
    assert (job.status, job.image_id, job.digest) == ("succeeded", "sha256:abc", "")
    assert statuses.status_for(job)["description"] == "Built, not pushed: a check"
    pushed = BuildJob.objects.create(image="localhost:5000/x:1", repository=repository, status="building")
    assert not transitions.succeed_unpushed(pushed.id, 1, "sha256:abc")  # a build to push must push


def test_the_api_shows_the_pull_request_and_why_it_was_not_pushed(client, repository, operator):
    job = only_job(deliver(client, example("opened"), event="pull_request"))
    client.force_login(operator)
    body = client.get(f"/api/v1/builds/{job.id}/").json()
    assert (body["pull_request"], body["fork"]) == (2, False)
    assert body["not_pushed"].startswith("no pull_request rule")
    assert body["links"]["pull_request"] == "https://github.com/Codertocat/Hello-World/pull/2"


def _ssh_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
