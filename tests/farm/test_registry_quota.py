"""A team's quota in the farm's registry (issue 24, part 4), with the real
registry under the farm's token auth, real daemons and the real docker CLI: a
team with a tiny quota pushes one image, and is then over it. The registry
itself refuses what it pushes next, whoever asks: the farm's build (which fails
naming the quota), a token asked with the team's own credentials, a `docker
push` of a person of the team. Its submits get 429; another team builds on."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import pytest
from django.contrib.auth.models import Permission

from builds.models import BuildJob
from builds.provenance import cosign_layout
from scripts import localfarm as lf
from teams.models import Membership, Namespace, RegistryBlob, Team
from tests.conftest import _user
from tests.farm.conftest import api_build, follow, http_get, wait_for
from tests.farm.test_registry_auth import docker, login, user_daemon  # noqa: F401  (a fixture)

pytestmark = pytest.mark.farm


@pytest.fixture
def quota_teams(farm_pool, farm):
    """Team qa-small may store 1 byte in REGISTRY/qa-small/ (so its first push
    is its last); team qa-other has the farm's default quota."""
    people = []
    for slug, quota in [("qa-small", 1), ("qa-other", None)]:
        team = Team.objects.update_or_create(slug=slug, defaults={"name": slug, "registry_quota_bytes": quota})[0]
        Namespace.objects.get_or_create(prefix=f"{farm.registry}/{slug}/", defaults={"team": team})
        person = _user(f"{slug}-person")
        Membership.objects.get_or_create(team=team, user=person)
        person.user_permissions.add(Permission.objects.get(codename="add_buildjob"))
        people.append((team, person))
    return people


def build(farm, person, image: str, dockerfile: str) -> BuildJob:
    """The build, ended; once pushed, counted too (the worker reads its use back just after the job's end)."""
    job_id = api_build(farm, person.api_token, {"image": image, "dockerfile": dockerfile})
    follow(farm, job_id, person.api_token)
    job = BuildJob.objects.get(pk=job_id)
    if job.digest:  # its attestation tag is the last the worker counts
        counted = RegistryBlob.objects.filter(tag=cosign_layout.attestation_tag(job.digest))
        wait_for(counted.exists, f"the registry use of {job.image} counted", timeout=30)
    return job


def submit_status(farm, person, image: str) -> tuple[int, dict, dict]:
    body = json.dumps({"image": image, "dockerfile": "FROM busybox\n"}).encode()
    request = urllib.request.Request(
        f"http://{farm.web}/api/v1/builds/", data=body, method="POST",
        headers={"Authorization": f"Token {person.api_token}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def token_actions(farm, person, repository: str) -> list[str]:
    """The actions the farm's token server grants `person` on `repository` when asked for pull and push."""
    basic = base64.b64encode(f"{person.username}:{person.api_token}".encode()).decode()
    request = urllib.request.Request(
        f"http://{farm.web}/v2/token?service=generator-registry&scope=repository:{repository}:pull,push",
        headers={"Authorization": f"Basic {basic}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        token = json.loads(response.read())["token"]
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    return [action for entry in claims["access"] for action in entry["actions"]]


def test_a_team_over_its_registry_quota_is_refused_by_the_registry_itself(
    farm,
    quota_teams,
    user_daemon,  # noqa: F811  (the fixture imported above)
    tmp_path,
):
    (small, person), (other, other_person) = quota_teams
    registry, tag = farm.registry, uuid.uuid4().hex[:8]

    first = build(farm, person, f"{registry}/qa-small/app:{tag}", "FROM busybox\nRUN echo one > /one\n")
    assert first.status == "succeeded", first.error
    small.refresh_from_db()
    assert small.registry_used_bytes > 1  # its image, signature and attestation, as the worker read them back

    # The team's own credentials: its token carries no push any more...
    assert token_actions(farm, person, "qa-small/app") == ["pull"]
    # ...so the registry refuses a person's `docker push` made with them.
    config = tmp_path / "small"
    assert login(user_daemon, config, registry, person).returncode == 0
    docker(user_daemon, config, "tag", "busybox:latest", f"{registry}/qa-small/pushed:{tag}", check=True)
    pushed = docker(user_daemon, config, "push", f"{registry}/qa-small/pushed:{tag}")
    assert pushed.returncode != 0, pushed.stdout
    assert "denied" in pushed.stderr.lower() or "unauthorized" in pushed.stderr.lower(), pushed.stderr

    # A submit now: 429, naming the quota and the team's use.
    status, body, headers = submit_status(farm, person, f"{registry}/qa-small/app:refused")
    assert status == 429, body
    assert "team qa-small uses" in body["detail"] and "of its 1 byte registry quota" in body["detail"], body
    assert headers.get("Retry-After")

    # A build taken before the team went over (its quota lifted for a moment) meets the
    # registry's refusal at its push: the farm's push token for it carries no push.
    Team.objects.filter(pk=small.pk).update(registry_quota_bytes=10 << 30)
    job_id = api_build(
        farm, person.api_token,
        {"image": f"{registry}/qa-small/app:{tag}-2", "dockerfile": "FROM busybox\nRUN sleep 4 && echo two > /two\n"},
    )  # fmt: skip
    Team.objects.filter(pk=small.pk).update(registry_quota_bytes=1)
    follow(farm, job_id, person.api_token)
    second = BuildJob.objects.get(pk=job_id)
    assert second.status == "failed"
    assert "the registry refused the push: team qa-small uses" in second.error, second.error
    assert "registry quota" in second.error and "(registry_quota_bytes)" in second.error

    # Another team is not held by it: it builds, pushes and still gets push in its tokens.
    theirs = build(farm, other_person, f"{registry}/qa-other/app:{tag}", "FROM busybox\nRUN echo other > /o\n")
    assert theirs.status == "succeeded", theirs.error
    assert token_actions(farm, other_person, "qa-other/app") == ["pull", "push"]

    # The API shows each team its use against its quota.
    status, text = http_get(f"http://{farm.web}/api/v1/teams/qa-small/", person.api_token)
    assert status == 200, text
    usage = json.loads(text)["registry_usage"]
    assert usage["over_quota"] is True and usage["quota_bytes"] == 1 and usage["used_bytes"] > 1


def test_the_recount_command_heals_a_figure_that_drifted(farm, quota_teams):
    (small, person), _ = quota_teams
    tag = uuid.uuid4().hex[:8]
    Team.objects.filter(pk=small.pk).update(registry_quota_bytes=None)
    assert build(farm, person, f"{farm.registry}/qa-small/heal:{tag}", "FROM busybox\n").status == "succeeded"
    small.refresh_from_db()
    counted = small.registry_used_bytes
    Team.objects.filter(pk=small.pk).update(registry_used_bytes=12345)  # drifted (rows lost, say)
    done = subprocess.run(
        [sys.executable, "manage.py", "registry_usage", "--team", "qa-small"],
        cwd=lf.ROOT, env={**os.environ, **farm.env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("qa-small: ") and "manifests read" in done.stdout, done.stdout
    small.refresh_from_db()
    assert small.registry_used_bytes == counted != 12345, done.stdout
    Team.objects.filter(pk=small.pk).update(registry_quota_bytes=1)
