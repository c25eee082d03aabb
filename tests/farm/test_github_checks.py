"""GitHub Checks end to end: a signed push to a repository the farm's GitHub App
is installed on (in the fake GitHub, which checks the App's JWT with its public
key and the installation token on each call) -> a check run queued, in
progress, then completed; a failing build's step in it; a "Re-run" from GitHub
builds the commit again."""

from __future__ import annotations

import copy
import json

import pytest

from builds.models import BuildJob, BuildRule, Repository
from pool.models import DockerDaemon
from tests.conftest import SHARED
from tests.farm.conftest import GITHUB_APP_WEBHOOK_SECRET, follow, wait_for
from tests.farm.test_github_builds import SECRET, _team, _token, post_webhook, push_payload
from tests.gitrepos import Repo

pytestmark = pytest.mark.farm

FULL_NAME = "Codertocat/Checks"
INSTALLATION = 31337
RERUN = SHARED / "testdata/github-webhooks-events/payload-examples/api.github.com/check_run/rerequested.payload.json"


@pytest.fixture
def checked_repo(farm, farm_pool, fake_github, tmp_path):
    source = Repo(tmp_path, "checks")
    repository, _ = Repository.objects.update_or_create(
        full_name=FULL_NAME,
        defaults=dict(
            clone_url=source.url,
            webhook_secret=SECRET,
            image=f"{farm.registry}/codertocat/checks",
            team=_team(),
            github_installation_id=None,  # learnt from GitHub, as a new farm would
        ),
    )
    repository.rules.all().delete()
    BuildRule.objects.create(repository=repository, source="branch", pattern="main", tags="latest")
    fake_github.installations[FULL_NAME] = INSTALLATION
    yield source, repository
    del fake_github.installations[FULL_NAME]


def push(farm, source: Repo, files: dict, delivery: str) -> tuple[str, str]:
    sha = source.commit(files)
    status, answer = post_webhook(farm, push_payload(FULL_NAME, "refs/heads/main", "0" * 40, sha), delivery=delivery)
    assert status == 202, answer
    return sha, answer["jobs"][0]


def completed_run(fake_github, sha: str) -> dict:
    runs = wait_for(
        lambda: [r for r in fake_github.runs_for(FULL_NAME, sha) if r["fields"].get("status") == "completed"],
        timeout=60,
        what="a completed check run",
    )
    return runs[-1]


def test_a_push_s_check_run_goes_queued_in_progress_then_success(farm, farm_pool, checked_repo, fake_github):
    source, repository = checked_repo
    # The pool drains, so the build waits and its queued check run is seen before it starts.
    pool = DockerDaemon.objects.filter(pk__in=[daemon.pk for daemon in farm_pool])
    pool.update(draining=True)
    # A step of a few seconds: the in_progress report (sent as the build starts, with the state
    # it reads then) lands while the build runs, however busy the control worker is.
    sha, job_id = push(farm, source, {"Dockerfile": "FROM busybox\nRUN sleep 4 && echo checked\n"}, "checks-1")
    wait_for(lambda: fake_github.run_states(FULL_NAME, sha) == [["queued"]], timeout=30, what="a queued check run")
    pool.update(draining=False)

    assert follow(farm, job_id, _token(farm)).end["status"] == "succeeded"
    run = completed_run(fake_github, sha)
    assert fake_github.run_states(FULL_NAME, sha) == [["queued", "in_progress", "success"]]
    assert run["fields"]["details_url"] == f"http://generator.example.invalid/builds/{job_id}/"
    assert run["fields"]["external_id"] == job_id
    assert fake_github.states_for(FULL_NAME, sha) == []  # check runs, not commit statuses
    assert Repository.objects.get(pk=repository.pk).github_installation_id == INSTALLATION

    # "Re-run" on GitHub: the App's delivery builds the commit again, with a check run of its own.
    rerun = copy.deepcopy(json.loads(RERUN.read_text()))
    rerun["repository"]["full_name"] = FULL_NAME
    rerun["check_run"].update(id=run["id"], external_id=job_id, head_sha=sha)
    rerun["check_run"]["app"]["id"] = fake_github.app_id
    rerun["installation"]["id"] = INSTALLATION
    status, answer = post_webhook(
        farm, rerun, event="check_run", delivery="checks-rerun", secret=GITHUB_APP_WEBHOOK_SECRET
    )
    assert (status, answer["result"]) == (202, f"building {sha[:12]} again (re-run of build {job_id})")
    [again] = answer["jobs"]
    assert BuildJob.objects.get(pk=again).retry_of_id == job_id
    assert follow(farm, again, _token(farm)).end["status"] == "succeeded"
    wait_for(lambda: len(fake_github.runs_for(FULL_NAME, sha)) == 2, timeout=30, what="a second check run")
    wait_for(lambda: fake_github.run_states(FULL_NAME, sha)[1][-1:] == ["success"], timeout=60, what="its success")
    assert fake_github.runs_for(FULL_NAME, sha)[1]["fields"]["external_id"] == again


def test_a_failing_build_s_check_run_fails_with_the_failing_step(farm, checked_repo, fake_github):
    source, _ = checked_repo
    dockerfile = "FROM busybox\nRUN echo fine\nRUN echo about to fail && exit 7\n"
    sha, job_id = push(farm, source, {"Dockerfile": dockerfile}, "checks-2")
    assert follow(farm, job_id, _token(farm)).end["status"] == "failed"
    output = completed_run(fake_github, sha)["fields"]["output"]
    assert completed_run(fake_github, sha)["fields"]["conclusion"] == "failure"
    failing = output.get("text", "") + "".join(a["message"] for a in output.get("annotations", []))
    assert "about to fail" in failing and "exit code: 7" in failing
    assert "echo fine" not in failing  # the failing step's lines, not the whole log
    assert "exit code: 7" in output["summary"]
