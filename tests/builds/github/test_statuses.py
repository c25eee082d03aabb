"""Commit statuses: the job's current state, posted to the GitHub API (a fake one)."""

from __future__ import annotations

import pytest

from builds.github import statuses
from builds.models import BuildJob, Repository
from tests.fake_github import FakeGitHub

SHA = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"


@pytest.fixture
def github(settings):
    fake = FakeGitHub()
    settings.GENERATOR_GITHUB_API_URL = fake.url
    settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES = True  # the fake is on loopback (lib/outbound.py)
    settings.GENERATOR_SITE_URL = "https://farm.example.invalid"
    yield fake
    fake.close()


@pytest.fixture
def job(db):
    repository = Repository.objects.create(
        full_name="Codertocat/Hello-World",
        clone_url="https://x.invalid/r.git",
        webhook_secret="s",
        access_token="tok",
        image="localhost:5000/c/h",
    )
    return BuildJob.objects.create(
        image="localhost:5000/c/h:latest", repository=repository, commit_sha=SHA, ref="refs/heads/main"
    )


@pytest.mark.parametrize(
    ("status", "state", "description"),
    [
        ("queued", "pending", "Building localhost:5000/c/h:latest"),
        ("pushing", "pending", "Building localhost:5000/c/h:latest"),
        ("succeeded", "success", "Pushed localhost:5000/c/h:latest"),
        ("failed", "failure", "Failed: boom"),
        ("cancelled", "error", "Cancelled"),
    ],
)
def test_the_current_state_is_posted_on_the_commit(github, job, status, state, description):
    BuildJob.objects.filter(pk=job.pk).update(status=status, error="boom")
    statuses.report(job.id)
    [posted] = github.statuses
    assert posted["path"] == f"/repos/Codertocat/Hello-World/statuses/{SHA}"
    assert posted["body"] == {
        "state": state,
        "target_url": f"https://farm.example.invalid/builds/{job.id}/",
        "description": description,
        "context": "generator",
    }
    assert posted["authorization"] == "Bearer tok"


def test_a_superseded_build_says_by_which(github, job):
    newer = BuildJob.objects.create(image=job.image, repository=job.repository, commit_sha=SHA)
    BuildJob.objects.filter(pk=job.pk).update(status="cancelled", superseded_by=newer)
    statuses.report(job.id)
    assert github.statuses[0]["body"]["description"] == f"Superseded by {newer.id[:8]}"


def test_github_failing_is_retried_and_refusals_are_not(github, job, settings):
    github.fail_next = 1
    with pytest.raises(statuses.ReportFailed, match="502"):
        statuses.report(job.id)
    github.fail_next, github.fail_code = 1, 401
    statuses.report(job.id)  # a wrong token: logged, not retried
    assert github.fail_next == 0 and github.statuses == []
    settings.GENERATOR_GITHUB_API_URL = "http://127.0.0.1:9"
    with pytest.raises(statuses.ReportFailed, match="did not answer"):
        statuses.report(job.id)


def test_jobs_not_built_from_a_push_report_nothing(github, daemon):
    plain = BuildJob.objects.create(image="a/b:latest", dockerfile="FROM busybox\n")
    statuses.report(plain.id)
    assert github.statuses == []
