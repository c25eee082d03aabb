"""The GitHub App's webhook events, with GitHub's own payload examples
(shared/testdata/github-webhooks-events): a re-run of the farm's check run or
suite builds the commit again; installation events record which registered
repositories the App is on. Signed with the App's webhook secret."""

from __future__ import annotations

import copy
import json

import pytest

from builds.models import BuildJob, CheckRun, Repository
from tests.builds.github.test_webhooks import deliver, register
from tests.builds.github.test_webhooks import example as push_example
from tests.conftest import SHARED

EXAMPLES = SHARED / "testdata" / "github-webhooks-events" / "payload-examples" / "api.github.com"
APP_SECRET = "the App's webhook secret"
APP_ID = "2"  # the app.id of GitHub's check_run examples


def example(path: str) -> dict:
    return json.loads((EXAMPLES / path).read_text())


@pytest.fixture(autouse=True)
def app(settings):
    settings.GENERATOR_GITHUB_APP_ID = APP_ID
    settings.GENERATOR_GITHUB_APP_PRIVATE_KEY_FILE = "/nonexistent/app.pem"  # not read: nothing is reported here
    settings.GENERATOR_GITHUB_APP_WEBHOOK_SECRET = APP_SECRET


@pytest.fixture
def repository(daemon, allowed_registry):
    return register("github/hello-world")  # the repository of the check_run examples


def finished_build(repository: Repository, sha: str, **fields) -> BuildJob:
    return BuildJob.objects.create(
        image=f"{repository.image}:latest",
        extra_tags=[f"sha-{sha[:7]}"],
        repository=repository,
        commit_sha=sha,
        ref="refs/heads/master",
        status="failed",
        error="exit code: 3",
        **fields,
    )


def rerun(job: BuildJob) -> dict:
    payload = copy.deepcopy(example("check_run/rerequested.payload.json"))
    payload["check_run"].update(external_id=job.id, head_sha=job.commit_sha)
    return payload


def test_a_rerun_of_the_farm_s_check_run_builds_the_commit_again(client, repository):
    sha = example("check_run/rerequested.payload.json")["check_run"]["head_sha"]
    job = finished_build(repository, sha)
    response = deliver(client, rerun(job), event="check_run", secret=APP_SECRET)
    assert response.status_code == 202, response.json()
    [again_id] = response.json()["jobs"]
    again = BuildJob.objects.get(pk=again_id)
    assert response.json()["result"] == f"building {sha[:12]} again (re-run of build {job.id})"
    assert (again.commit_sha, again.ref, again.retry_of_id) == (sha, "refs/heads/master", job.id)
    assert (again.image, again.extra_tags, again.status) == (job.image, job.extra_tags, "queued")
    # The App's delivery names its installation: kept, so reports need not ask GitHub.
    assert Repository.objects.get(pk=repository.pk).github_installation_id == 1


def test_a_rerun_is_found_by_its_check_run_id_when_it_has_no_external_id(client, repository):
    payload = example("check_run/rerequested.payload.json")  # external_id "", id 4
    job = finished_build(repository, payload["check_run"]["head_sha"])
    CheckRun.objects.create(job=job, run_id=payload["check_run"]["id"], sent_status="completed")
    response = deliver(client, payload, event="check_run", secret=APP_SECRET)
    assert BuildJob.objects.get(pk=response.json()["jobs"][0]).retry_of_id == job.id


@pytest.mark.usefixtures("daemon", "allowed_registry")
def test_a_rerun_of_all_checks_builds_the_suite_s_commit_again(client, settings):
    payload = example("check_suite/rerequested.payload.json")
    settings.GENERATOR_GITHUB_APP_ID = str(payload["check_suite"]["app"]["id"])
    repository = register(payload["repository"]["full_name"])
    job = finished_build(repository, payload["check_suite"]["head_sha"])
    response = deliver(client, payload, event="check_suite", secret=APP_SECRET)
    assert response.status_code == 202, response.json()
    assert BuildJob.objects.get(pk=response.json()["jobs"][0]).retry_of_id == job.id


def test_another_app_s_rerun_or_a_running_build_builds_nothing(client, repository, settings):
    job = finished_build(repository, "d6fde92930d4715a2b49857d24b940956b26d2d3")
    settings.GENERATOR_GITHUB_APP_ID = "99"
    response = deliver(client, rerun(job), event="check_run", secret=APP_SECRET)
    assert response.json() == {"result": "ignored: the check_run is not the farm's (another App's)", "jobs": []}
    settings.GENERATOR_GITHUB_APP_ID = APP_ID
    BuildJob.objects.filter(pk=job.pk).update(status="building")
    response = deliver(client, rerun(job), event="check_run", secret=APP_SECRET, delivery="second")
    assert response.json()["result"] == f"ignored: build {job.id} of d6fde92930d4 is still building"
    assert BuildJob.objects.count() == 1


@pytest.mark.usefixtures("daemon", "allowed_registry")
def test_other_check_run_actions_build_nothing(client):
    register("Codertocat/Hello-World")
    response = deliver(client, example("check_run/created.payload.json"), event="check_run", secret=APP_SECRET)
    assert response.json() == {"result": "ignored: a check_run's created action does not build", "jobs": []}


def test_a_rerun_signed_with_the_repository_s_secret_is_accepted_and_a_wrong_one_refused(client, repository):
    job = finished_build(repository, "d6fde92930d4715a2b49857d24b940956b26d2d3")
    assert deliver(client, rerun(job), event="check_run").status_code == 202  # the repository's own webhook
    assert deliver(client, rerun(job), event="check_run", secret="guess", delivery="bad").status_code == 401


def test_the_app_s_delivery_for_a_repository_the_farm_does_not_build_is_ignored(client, db):
    response = deliver(client, example("check_run/rerequested.payload.json"), event="check_run", secret=APP_SECRET)
    assert response.status_code == 202
    assert response.json()["result"] == "ignored: the repository is not registered in the farm"


def test_installation_events_record_and_forget_the_app_on_registered_repositories(client, db):
    register("Codertocat/Hello-World")
    created = deliver(client, example("installation/created.payload.json"), event="installation", secret=APP_SECRET)
    assert created.status_code == 200
    assert created.json()["result"] == "installation 957387 created: recorded for Codertocat/Hello-World"
    assert Repository.objects.get(full_name="Codertocat/Hello-World").github_installation_id == 957387

    deleted = copy.deepcopy(example("installation/deleted.payload.json"))
    deleted["installation"]["id"] = 957387
    response = deliver(client, deleted, event="installation", secret=APP_SECRET)
    assert response.json()["result"] == "installation 957387 deleted: forgotten for Codertocat/Hello-World"
    assert Repository.objects.get(full_name="Codertocat/Hello-World").github_installation_id is None


def test_installation_repositories_events_add_and_remove(client, db):
    register("Codertocat/Space")
    added = example("installation_repositories/added.payload.json")
    response = deliver(client, added, event="installation_repositories", secret=APP_SECRET)
    installation = added["installation"]["id"]
    assert response.json()["result"] == (
        f"installation {installation}: added to Codertocat/Space; removed from no registered repository"
    )
    removed = copy.deepcopy(added)
    removed.update(repositories_added=[], repositories_removed=added["repositories_added"])
    deliver(client, removed, event="installation_repositories", secret=APP_SECRET, delivery="removed")
    assert Repository.objects.get(full_name="Codertocat/Space").github_installation_id is None


def test_an_installation_event_not_signed_by_the_app_changes_nothing(client, db):
    register("Codertocat/Hello-World")
    payload = example("installation/created.payload.json")
    response = deliver(client, payload, event="installation", secret="the repository's secret")
    assert response.status_code == 202 and response.json()["result"].startswith(
        "ignored: the payload names no repository"
    )
    assert Repository.objects.get(full_name="Codertocat/Hello-World").github_installation_id is None


@pytest.mark.usefixtures("daemon", "allowed_registry")
def test_a_push_delivered_by_the_app_and_by_the_repository_s_webhook_builds_once(client):
    register("Codertocat/Hello-World")
    payload = push_example("api.github.com/push/with-new-branch.payload.json")
    by_app = deliver(client, payload, secret=APP_SECRET, delivery="app")
    assert by_app.status_code == 202 and len(by_app.json()["jobs"]) == 1
    by_hook = deliver(client, payload, delivery="hook")
    assert by_hook.json()["jobs"] == by_app.json()["jobs"] and by_hook.json()["result"].startswith("already built")
    assert BuildJob.objects.count() == 1
