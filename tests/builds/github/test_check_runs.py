"""Check runs through the farm's GitHub App, against the fake GitHub (which
verifies the App's JWT with its public key): the token cache, the conclusion of
each end, what each report sends, and the commit status where the App is not."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.utils import timezone

from builds.github import app as github_app
from builds.github import check_runs, statuses
from builds.logs import failing_step
from builds.models import BuildJob, BuildLogLine, CheckRun, Repository
from tests.builds.github.test_pull_requests import HEAD, only_job
from tests.builds.github.test_pull_requests import example as pull_request_example
from tests.builds.github.test_webhooks import deliver, register
from tests.fake_github import FakeGitHub

SHA = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
LOGS = Path(__file__).parents[2] / "logs"
# BuildKit's summary of a failed step as newer docker CLIs print it (the format
# moby/buildkit#2215 shows): the Dockerfile's line, the instruction quoted.
NEWER_BUILDKIT_FAILURE = """#7 [build 3/3] RUN make test
#7 0.412 compiling
#7 1.020 test_parser failed: expected 3, got 4
#7 ERROR: process "/bin/sh -c make test" did not complete successfully: exit code: 2
------
 > [build 3/3] RUN make test:
#7 1.020 test_parser failed: expected 3, got 4
------
Dockerfile:5
--------------------
   3 |     COPY . /src
   4 |     WORKDIR /src
   5 | >>> RUN make test
   6 |
--------------------
ERROR: failed to solve: process "/bin/sh -c make test" did not complete successfully: exit code: 2"""


@pytest.fixture
def github(settings, tmp_path, monkeypatch):
    fake = FakeGitHub()
    settings.GENERATOR_GITHUB_API_URL = fake.url
    settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES = True  # the fake is on loopback (lib/outbound.py)
    settings.GENERATOR_SITE_URL = "https://farm.example.invalid"
    settings.GENERATOR_GITHUB_APP_ID = str(fake.app_id)
    settings.GENERATOR_GITHUB_APP_PRIVATE_KEY_FILE = str(fake.write_private_key(tmp_path / "app.pem"))
    # Nothing cached by another test.
    monkeypatch.setattr(github_app, "tokens", github_app.TokenCache(github_app.buy_token))
    monkeypatch.setattr(github_app, "absences", github_app.Absences())
    yield fake
    fake.close()


@pytest.fixture
def repository(db):
    return Repository.objects.create(
        full_name="Codertocat/Hello-World",
        clone_url="https://x.invalid/r.git",
        webhook_secret="s",
        access_token="tok",
        image="localhost:5000/c/h",
        context_dir="docker",
    )


@pytest.fixture
def job(repository):
    return BuildJob.objects.create(
        image="localhost:5000/c/h:latest", repository=repository, commit_sha=SHA, ref="refs/heads/main"
    )


def installed(github: FakeGitHub, repository: Repository, installation: int = 77) -> None:
    github.installations[repository.full_name] = installation


def move(job: BuildJob, status: str, **fields) -> None:
    BuildJob.objects.filter(pk=job.pk).update(status=status, **fields)


def store_log(job: BuildJob, text: str) -> None:
    BuildLogLine.objects.bulk_create(
        BuildLogLine(job=job, seq=i, text=line) for i, line in enumerate(text.splitlines(), 1)
    )


def report_failure(github: FakeGitHub, repository: Repository, job: BuildJob, log: str, error: str) -> dict:
    """The fields of the check run of a job that failed with this log."""
    installed(github, repository)
    store_log(job, log)
    move(job, "failed", error=error)
    check_runs.report(job.id)
    [run] = github.runs_for(repository.full_name, SHA)
    return run["fields"]


def test_the_token_cache_buys_once_then_again_shortly_before_expiry():
    now = [1000.0]
    bought = []

    def buy(installation: int) -> github_app.Token:
        bought.append(installation)
        return github_app.Token(f"t{len(bought)}", now[0] + 3600)

    cache = github_app.TokenCache(buy, clock=lambda: now[0])
    assert [cache.get(5), cache.get(5)] == ["t1", "t1"]
    now[0] += 3600 - github_app.REFRESH_BEFORE - 1
    assert cache.get(5) == "t1"  # still more than REFRESH_BEFORE to live
    now[0] += 1
    assert cache.get(5) == "t2"  # within REFRESH_BEFORE of expiry: bought again
    assert cache.get(6) == "t3"  # each installation its own
    cache.forget(5)
    assert cache.get(5) == "t4"
    assert bought == [5, 5, 6, 5]


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        ("succeeded", "", "success"),
        ("failed", "ERROR: executor failed running [/bin/sh -c exit 3]: exit code: 3", "failure"),
        ("failed", "timed out after 20 s", "timed_out"),
        ("failed", "the step timed out after a while", "failure"),
        ("cancelled", "", "cancelled"),
    ],
)
def test_each_end_has_its_conclusion(job, status, error, expected):
    move(job, status, error=error)
    job.refresh_from_db()
    assert check_runs.github_status(job) == "completed"
    assert check_runs.conclusion(job) == expected


@pytest.mark.parametrize(
    ("status", "expected"), [("queued", "queued"), ("building", "in_progress"), ("pushing", "in_progress")]
)
def test_a_running_job_is_queued_or_in_progress(job, status, expected):
    move(job, status)
    job.refresh_from_db()
    assert check_runs.github_status(job) == expected


def test_the_fake_takes_a_jwt_signed_by_the_app_key_and_refuses_another(github, settings, tmp_path):
    github.installations["Codertocat/Hello-World"] = 77
    assert github_app.buy_token(77).value.startswith("ghs_")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "other.pem").write_bytes(
        other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    settings.GENERATOR_GITHUB_APP_PRIVATE_KEY_FILE = str(tmp_path / "other.pem")
    with pytest.raises(github_app.NotInstalled, match="401"):
        github_app.buy_token(77)
    assert "Signature verification failed" in github.refused[-1]
    assert github.tokens_issued == 1


def test_a_job_goes_queued_in_progress_then_success_with_one_token(github, repository, job):
    installed(github, repository)
    check_runs.report(job.id)
    move(job, "building", started_at=timezone.now())
    check_runs.report(job.id)
    move(job, "succeeded", finished_at=timezone.now(), digest="sha256:" + "a" * 64)
    check_runs.report(job.id)
    check_runs.report(job.id)  # a late duplicate: the end is final, nothing more is sent

    assert github.run_states(repository.full_name, SHA) == [["queued", "in_progress", "success"]]
    [run] = github.runs_for(repository.full_name, SHA)
    assert run["fields"]["name"] == "generator"
    assert run["fields"]["external_id"] == job.id
    assert run["fields"]["details_url"] == f"https://farm.example.invalid/builds/{job.id}/"
    assert run["fields"]["output"]["title"] == "Pushed localhost:5000/c/h:latest"
    assert github.tokens_issued == 1  # cached across the reports
    assert github.statuses == []  # the App's repositories get check runs instead
    row = CheckRun.objects.get(job=job)
    assert (row.run_id, row.sent_status, row.installation_id, row.sending_until) == (run["id"], "completed", 77, None)
    assert Repository.objects.get(pk=repository.pk).github_installation_id == 77  # asked once, kept


def test_a_failed_step_is_annotated_on_the_dockerfile_line_buildkit_names(github, repository, job):
    error = 'process "/bin/sh -c make test" did not complete successfully: exit code: 2'
    fields = report_failure(github, repository, job, NEWER_BUILDKIT_FAILURE, error)
    assert fields["conclusion"] == "failure"
    [annotation] = fields["output"]["annotations"]
    assert (annotation["path"], annotation["start_line"], annotation["end_line"]) == ("docker/Dockerfile", 5, 5)
    assert annotation["title"] == "[build 3/3] RUN make test"
    assert "test_parser failed: expected 3, got 4" in annotation["message"]
    assert "text" not in fields["output"]


def test_without_a_named_line_the_failing_step_goes_in_the_text(github, repository, job):
    # Docker 20.10's BuildKit (this machine's) names no Dockerfile line.
    error = "ERROR: executor failed running [/bin/sh -c echo about to fail && exit 3]: exit code: 3"
    output = report_failure(github, repository, job, (LOGS / "buildkit-failed-step.log").read_text(), error)["output"]
    assert "annotations" not in output
    assert "#10 0.315 about to fail" in output["text"] and "#9 0.307 normal step" not in output["text"]
    assert "the builder named no Dockerfile line" in output["summary"]


def test_a_timed_out_build_shows_the_step_it_was_in(github, repository, job):
    log = (LOGS / "buildkit-timeout.log").read_text()
    fields = report_failure(github, repository, job, log, "timed out after 20 s")
    assert fields["conclusion"] == "timed_out"
    assert "#5 0.155 1c49fe34" in fields["output"]["text"]


def test_the_classic_builder_s_failing_step():
    step = failing_step.find((LOGS / "classic-failed-step.log").read_text().splitlines())
    assert step.title == "Step 4/4 : RUN echo about to fail && exit 3" and step.dockerfile_line is None
    assert "about to fail" in step.lines and "normal" not in step.lines


def test_a_successful_build_has_no_failing_step():
    assert failing_step.find((LOGS / "buildkit-parallel-stages.log").read_text().splitlines()) is None


def test_a_repository_without_the_app_gets_a_commit_status_and_github_is_not_asked_again(github, repository, job):
    check_runs.report(job.id)  # the fake answers 404 to /repos/.../installation
    assert github.states_for(repository.full_name, SHA) == ["pending"]
    assert github.check_runs == {}
    assert Repository.objects.get(pk=repository.pk).github_installation_id is None
    assert github.installation_lookups == 1
    check_runs.report(job.id)
    assert github.installation_lookups == 1  # believed for NOT_INSTALLED_SECONDS
    assert github.states_for(repository.full_name, SHA) == ["pending", "pending"]


def test_absences_are_forgotten_after_a_while():
    now = [0.0]
    absences = github_app.Absences(clock=lambda: now[0])
    absences.note("Codertocat/Hello-World")
    assert absences.known("codertocat/hello-world")
    now[0] += github_app.NOT_INSTALLED_SECONDS
    assert not absences.known("Codertocat/Hello-World")


def test_without_the_app_configured_statuses_are_sent_as_before(github, settings, repository, job):
    settings.GENERATOR_GITHUB_APP_ID = ""
    installed(github, repository)
    check_runs.report(job.id)
    assert github.states_for(repository.full_name, SHA) == ["pending"] and github.check_runs == {}


def test_a_report_meeting_another_s_lease_is_retried(github, repository, job):
    installed(github, repository)
    CheckRun.objects.create(job=job, sending_until=timezone.now() + timedelta(seconds=30))
    with pytest.raises(check_runs.Busy):
        check_runs.report(job.id)
    assert github.check_runs == {}
    CheckRun.objects.filter(job=job).update(sending_until=timezone.now() - timedelta(seconds=1))  # its sender died
    check_runs.report(job.id)
    assert github.run_states(repository.full_name, SHA) == [["queued"]]


def test_github_down_is_retried_and_frees_the_lease(github, repository, job):
    installed(github, repository)
    check_runs.report(job.id)
    github.fail_next = 1
    move(job, "building")
    with pytest.raises(statuses.ReportFailed, match="502"):
        check_runs.report(job.id)
    assert CheckRun.objects.get(job=job).sending_until is None
    check_runs.report(job.id)
    assert github.run_states(repository.full_name, SHA) == [["queued", "in_progress"]]


def test_an_uninstalled_app_falls_back_to_statuses(github, repository, job):
    installed(github, repository)
    check_runs.report(job.id)
    del github.installations[repository.full_name]
    github_app.tokens.forget(77)
    move(job, "failed", error="boom")
    with pytest.raises(statuses.ReportFailed, match="404"):
        check_runs.report(job.id)  # the token is refused: forgotten, retried
    assert Repository.objects.get(pk=repository.pk).github_installation_id is None
    check_runs.report(job.id)
    assert github.states_for(repository.full_name, SHA) == ["failure"]


def test_no_app_token_or_jwt_goes_to_a_refused_api_base(github, settings, repository, job):
    installed(github, repository)
    Repository.objects.filter(pk=repository.pk).update(github_installation_id=77)
    settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES = False  # the fake is on loopback: refused
    check_runs.report(job.id)  # logged, nothing sent, nothing to retry
    assert (github.tokens_issued, github.check_runs, github.statuses, github.refused) == (0, {}, [], [])


def test_an_unreadable_app_key_means_statuses_and_one_error(github, settings, repository, job, caplog, tmp_path):
    installed(github, repository)
    Repository.objects.filter(pk=repository.pk).update(github_installation_id=77)
    (tmp_path / "broken.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot a key, secret-looking text\n")
    settings.GENERATOR_GITHUB_APP_PRIVATE_KEY_FILE = str(tmp_path / "broken.pem")
    check_runs.report(job.id)
    check_runs.report(job.id)
    assert github.states_for(repository.full_name, SHA) == ["pending", "pending"] and github.check_runs == {}
    [logged] = [r.getMessage() for r in caplog.records if "check runs are not sent" in r.getMessage()]
    assert "broken.pem" in logged and "secret-looking" not in logged
    assert Repository.objects.get(pk=repository.pk).github_installation_id == 77  # not the App's fault


@pytest.mark.usefixtures("daemon", "allowed_registry")
def test_a_pull_request_s_check_run_is_on_its_head_commit(github, client):
    repository = register("Codertocat/Hello-World")
    installed(github, repository)
    job = only_job(deliver(client, pull_request_example("opened"), event="pull_request"))
    check_runs.report(job.id)
    [run] = github.runs_for(repository.full_name, HEAD)
    assert (run["fields"]["status"], run["fields"]["external_id"]) == ("queued", job.id)
