"""Builds where teams work, on the real farm: a fork's pull request is built on a
pool daemon without the repository's secret and is not pushed, and its commit
status says so; a docs-only push builds nothing, git telling the web tier so;
a schedule fires once per tick from the control worker's beat."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from builds.jobs import build_secrets
from builds.models import BuildJob, Repository
from tests.conftest import SHARED
from tests.farm.conftest import follow, registry_digest, wait_for
from tests.farm.test_github_builds import SECRET, _team, _token, post_webhook, push_payload
from tests.gitrepos import Repo, git

pytestmark = pytest.mark.farm

PULL_REQUESTS = SHARED / "testdata/github-webhooks-events/payload-examples/api.github.com/pull_request"
SECRET_VALUE = "fork-must-never-see-this-9f3b"


@pytest.fixture
def repository(farm, farm_pool, tmp_path):
    source = Repo(tmp_path, "triggers")
    repository, _ = Repository.objects.update_or_create(
        full_name="Codertocat/Triggers",
        defaults=dict(
            clone_url=source.url,
            webhook_secret=SECRET,
            image=f"{farm.registry}/codertocat/triggers",
            builder="buildkit",
            pull_requests=Repository.PullRequests.ALL,
            team=_team(),
        ),
    )
    repository.rules.all().delete()
    # Encrypted under the farm's key, as its API would (the test process has its own).
    with override_settings(SECRET_KEY=farm.env["GENERATOR_SECRET_KEY"], GENERATOR_SECRETS_KEYS=[]):
        build_secrets.store({"repository": repository}, {"TOKEN": SECRET_VALUE})
    return source, repository


def fork_pull_request(full_name: str, number: int, sha: str) -> dict:
    """GitHub's own `opened` example, from a fork, pointed at a local commit."""
    payload = json.loads((PULL_REQUESTS / "opened.payload.json").read_text())
    payload["number"] = payload["pull_request"]["number"] = number
    payload["repository"]["full_name"] = full_name
    payload["pull_request"]["head"].update(sha=sha, ref="patch-1")
    payload["pull_request"]["head"]["repo"].update(full_name="Forker/Triggers", fork=True)
    payload["pull_request"]["base"]["ref"] = "main"
    return payload


def test_a_forks_pull_request_is_built_without_secrets_and_not_pushed(farm, repository, fake_github):
    source, repository = repository
    source.commit({"Dockerfile": "FROM busybox\n"})
    # The fork's commit, as GitHub keeps it in the base repository: refs/pull/N/head.
    # The secret's mount is not required, so BuildKit leaves it out unless the farm gives it:
    # the step fails if the file is there. The nonce keeps the step out of any cache.
    sha = source.commit(
        {"Dockerfile": "FROM busybox\nRUN --mount=type=secret,id=TOKEN test ! -e /run/secrets/TOKEN"
         f" && echo no-secret-here # {uuid.uuid4().hex}\n"},
        branch="fork-work",
    )  # fmt: skip
    git("push", "--quiet", "--force", "origin", f"{sha}:refs/pull/7/head", cwd=source.work)

    status, answer = post_webhook(
        farm, fork_pull_request(repository.full_name, 7, sha), event="pull_request", delivery=f"pr-{sha}"
    )
    assert status == 202 and answer["result"].startswith("building pull request #7 from the fork Forker/Triggers")
    [job_id] = answer["jobs"]
    followed = follow(farm, job_id, _token(farm))
    job = BuildJob.objects.get(pk=job_id)
    text = "\n".join(line for _, line in followed.lines)
    assert followed.end["status"] == job.status == "succeeded", job.error
    assert "no-secret-here" in text and SECRET_VALUE not in text
    assert "comes from a fork: no build secrets, deploy key or registry credentials" in text
    assert text.rstrip().endswith(f"Built {job.image}, not pushed: {job.not_pushed}")
    assert job.image_id.startswith("sha256:") and job.digest == ""
    assert registry_digest(farm, "codertocat/triggers", "pr-7") is None  # nothing pushed

    wait_for(lambda: "success" in fake_github.states_for(repository.full_name, sha), timeout=30, what="status")
    last = [s for s in fake_github.statuses if s["path"].endswith(sha)][-1]["body"]
    assert last["description"].startswith("Built, not pushed: a fork's pull request is never pushed")


def test_a_docs_only_push_builds_nothing_even_when_git_must_say_so(farm, repository):
    source, repository = repository
    repository.rules.create(source="branch", pattern="main", tags="latest", ignored=["docs/**", "**/*.md"])
    before = source.commit({"Dockerfile": "FROM busybox\n"})
    after = source.commit({"docs/guide.md": "only the docs change\n", "README.md": "and the README\n"})
    # A forced push: GitHub's commits list may not hold every change, so the web tier asks git.
    payload = push_payload(repository.full_name, "refs/heads/main", before, after)
    payload["forced"] = True
    status, answer = post_webhook(farm, payload, delivery=f"docs-{after}")
    assert (status, answer["jobs"]) == (202, [])
    assert answer["result"] == f"ignored: branch main at {after[:12]}: every changed file is ignored (docs/**, **/*.md)"
    assert not BuildJob.objects.filter(repository=repository, commit_sha=after).exists()


def test_a_schedule_fires_once_per_tick_through_the_farms_beat(farm, repository):
    source, repository = repository
    sha = source.commit({"Dockerfile": f"FROM busybox\nRUN echo nightly {uuid.uuid4().hex}\n"})
    # A daily tick two minutes ago, last fired the day before: due now, and not again until tomorrow.
    tick = (timezone.now() - timedelta(minutes=2)).replace(second=0, microsecond=0)
    rule = repository.rules.create(
        source="branch", pattern="main", tags="nightly", schedule=f"{tick.minute} {tick.hour} * * *",
        schedule_timezone="UTC", schedule_jitter=0, schedule_fired_at=tick - timedelta(days=1),
    )  # fmt: skip
    job = wait_for(lambda: BuildJob.objects.filter(schedule_rule=rule).first(), timeout=30, what="the scheduled build")
    followed = follow(farm, job.id, _token(farm))
    job.refresh_from_db()
    assert followed.end["status"] == "succeeded", [line for _, line in followed.lines]
    assert (job.ref, job.commit_sha) == ("refs/heads/main", sha)  # the branch's head, resolved by the worker
    assert registry_digest(farm, "codertocat/triggers", "nightly") == job.digest
    time.sleep(3)  # beat runs every second here: three more runs, no second build
    assert BuildJob.objects.filter(schedule_rule=rule).count() == 1
    rule.refresh_from_db()
    assert rule.schedule_fired_at == tick
