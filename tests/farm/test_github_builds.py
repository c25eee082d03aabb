"""A signed push webhook for a local repository -> a build at the pushed commit on a
pool daemon -> the image in the registry under every tag the rules give ->
commit statuses recorded by a fake GitHub API."""

from __future__ import annotations

import json
import urllib.request

import pytest

from builds.github.webhooks import signature_of
from builds.models import BuildJob, BuildRule, Repository
from teams.models import Membership, Team
from tests.conftest import SHARED
from tests.farm.conftest import engine, follow, registry_digest, wait_for
from tests.gitrepos import Repo

pytestmark = pytest.mark.farm

SECRET = "a webhook secret"


def post_webhook(farm, payload: dict, *, event="push", delivery: str, secret: str = SECRET) -> tuple[int, dict]:
    body = json.dumps(payload).encode()
    request = urllib.request.Request(
        f"http://{farm.web}/webhooks/github/",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": signature_of(secret, body),
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def push_payload(full_name: str, ref: str, before: str, after: str) -> dict:
    """GitHub's own push example, pointed at a local repository's commit."""
    path = SHARED / "testdata/github-webhooks/payload-examples/api.github.com/push/with-new-branch.payload.json"
    payload = json.loads(path.read_text())
    payload.update(ref=ref, before=before, after=after, created=False)
    payload["repository"]["full_name"] = full_name
    payload["head_commit"]["id"] = after
    payload["head_commit"]["message"] = "Build me"
    return payload


@pytest.fixture
def github_repo(farm, farm_pool, tmp_path):
    source = Repo(tmp_path, "hello")
    repository, _ = Repository.objects.update_or_create(
        full_name="Codertocat/Hello-World",
        defaults=dict(
            clone_url=source.url,
            webhook_secret=SECRET,
            access_token="ghp_test_token_never_logged",
            image=f"{farm.registry}/codertocat/hello",
            context_dir="docker",
            build_args={"GREETING": "hello from a push"},
            team=_team(),  # the team that owns the farm's registry (tests/farm/conftest.py)
        ),
    )
    repository.rules.all().delete()
    BuildRule.objects.create(repository=repository, source="branch", pattern="main", tags="latest,sha-{short_sha}")
    BuildRule.objects.create(repository=repository, source="tag", pattern="/^v([0-9.]+)$/", tags="{1}")
    return source, repository


DOCKERFILE = """FROM busybox
ARG GREETING
COPY message.txt /message.txt
RUN echo "$GREETING" > /greeting.txt
CMD ["sh", "-c", "cat /message.txt /greeting.txt"]
"""


def test_a_push_builds_the_commit_pushes_every_tag_and_reports_on_github(farm, github_repo, fake_github):
    source, repository = github_repo
    old = source.commit({"docker/Dockerfile": DOCKERFILE, "docker/message.txt": "first\n", "README": "x"})
    sha = source.commit({"docker/message.txt": "second\n"})
    source.commit({"docker/message.txt": "third, pushed after the webhook's commit\n"})

    status, answer = post_webhook(
        farm, push_payload(repository.full_name, "refs/heads/main", old, sha), delivery="e2e-1"
    )
    assert status == 202 and answer["result"] == f"building branch main at {sha[:12]} as latest, sha-{sha[:7]}"
    [job_id] = answer["jobs"]

    followed = follow(farm, job_id, _token(farm))
    job = BuildJob.objects.get(pk=job_id)
    assert followed.end["status"] == job.status == "succeeded", job.error
    assert (job.commit_sha, job.ref) == (sha, "refs/heads/main")

    # Both tags, one manifest, the one the job recorded.
    assert registry_digest(farm, "codertocat/hello", "latest") == job.digest
    assert registry_digest(farm, "codertocat/hello", f"sha-{sha[:7]}") == job.digest
    output = engine(dict(farm.daemons)[job.daemon.name]).containers.run(
        f"{repository.image}:sha-{sha[:7]}", remove=True, network_mode="none"
    )
    assert output == b"second\nhello from a push\n"  # the pushed commit, the repository's build args

    wait_for(lambda: fake_github.states_for(repository.full_name, sha)[-1:] == ["success"], timeout=30, what="success")
    # Each report posts the job's state when it runs: "pending" is posted unless the
    # build ends first, and nothing older ever follows the final state.
    states = fake_github.states_for(repository.full_name, sha)
    assert set(states) <= {"pending", "success"} and states[-1] == "success"
    assert states == sorted(states, key=["pending", "success"].index)
    last = [s for s in fake_github.statuses if s["path"].endswith(sha)][-1]
    assert last["body"]["target_url"] == f"http://generator.example.invalid/builds/{job_id}/"
    assert last["body"]["context"] == "generator"
    assert last["authorization"] == "Bearer ghp_test_token_never_logged"
    # The token is in no log line.
    assert not [line for _, line in followed.lines if "ghp_test_token" in line]


def test_a_failing_build_is_reported_as_failure(farm, github_repo, fake_github):
    source, repository = github_repo
    sha = source.commit({"docker/Dockerfile": "FROM busybox\nRUN exit 7\n"})
    fake_github.fail_next = 2  # GitHub hiccups: the report is retried
    _, answer = post_webhook(
        farm, push_payload(repository.full_name, "refs/heads/main", "0" * 40, sha), delivery="e2e-2"
    )
    [job_id] = answer["jobs"]
    assert follow(farm, job_id, _token(farm)).end["status"] == "failed"
    wait_for(lambda: "failure" in fake_github.states_for(repository.full_name, sha), timeout=60, what="failure")
    failure = [s for s in fake_github.statuses if s["path"].endswith(sha) and s["body"]["state"] == "failure"][-1]
    # The farm's default builder (BuildKit) words it so; the classic one "returned a non-zero code: 7".
    assert "exit code: 7" in failure["body"]["description"]


def test_a_tag_push_builds_with_the_tag_rule(farm, github_repo):
    source, repository = github_repo
    sha = source.commit({"docker/Dockerfile": "FROM busybox\nCOPY message.txt /\n", "docker/message.txt": "v\n"})
    _, answer = post_webhook(
        farm, push_payload(repository.full_name, "refs/tags/v1.4.2", "0" * 40, sha), delivery="e2e-3"
    )
    assert answer["result"] == f"building tag v1.4.2 at {sha[:12]} as 1.4.2"
    assert follow(farm, answer["jobs"][0], _token(farm)).end["status"] == "succeeded"
    assert registry_digest(farm, "codertocat/hello", "1.4.2") == BuildJob.objects.get(pk=answer["jobs"][0]).digest


def _token(farm) -> str:
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user, _ = get_user_model().objects.get_or_create(username="watcher")
    Membership.objects.get_or_create(team=_team(), user=user)  # reads its team's builds
    return Token.objects.get_or_create(user=user)[0].key


def _team() -> Team:
    return Team.objects.get_or_create(slug="default", defaults={"name": "Default"})[0]
