"""A team's registry quota enforced (teams/registry_quota.py): the token server
grants no push to a team at or over it (teams/registry_access.py), nor does the
farm's own push token for its builds (builds/registry/accounts.py); its submits
get 429 naming the quota; the API and pages show each team's use. Team A owns
localhost:5000/team-a/, team B localhost:5000/team-b/ (tests/conftest.py);
localhost:5000 is the farm's registry here."""

from __future__ import annotations

import jwt
import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from builds.models import BuildJob
from builds.registry.accounts import push_auth
from builds.worker.docker_config import build_password
from pool.models import DockerDaemon
from teams import registry_quota
from tests.builds.registry.test_token_server import access, ask, token_server  # noqa: F401  (autouse: localhost:5000 is the farm's)

DOCKERFILE = "FROM busybox\nRUN echo hi\n"


def fill(team, size: int) -> None:
    """`team`'s tags now name `size` bytes, as a push the farm recorded would."""
    registry_quota.record_tag(team.pk, f"{team.slug}/app", "1", [("sha256:" + "a" * 64, size)])
    team.refresh_from_db()


def api_as(user) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {user.api_token}")
    return api


def test_the_quota_is_on_out_of_the_box_and_a_team_may_have_its_own(teams, settings):
    a, _ = teams
    assert settings.GENERATOR_TEAM_REGISTRY_QUOTA_BYTES == 10 << 30 and a.registry_quota == 10 << 30
    a.registry_quota_bytes = 1000
    assert a.registry_quota == 1000
    settings.GENERATOR_TEAM_REGISTRY_QUOTA_BYTES = 0
    a.registry_quota_bytes = None
    assert a.registry_quota is None and not registry_quota.over_quota(a)


def test_a_team_at_its_quota_gets_no_push_in_its_tokens_and_another_team_still_does(alice, bob, teams, settings):
    a, b = teams
    a.registry_quota_bytes = b.registry_quota_bytes = 1000
    a.save()
    b.save()
    fill(a, 999)
    scopes = ("repository:team-a/app:pull,push", "repository:team-b/app:pull,push")
    assert access(ask(*scopes, user="alice", password=alice.api_token), settings) == {
        "repository:team-a/app": ["pull", "push"]
    }
    fill(a, 1000)  # at it: not one more byte
    assert access(ask(*scopes, user="alice", password=alice.api_token), settings) == {"repository:team-a/app": ["pull"]}
    assert access(ask(*scopes, user="bob", password=bob.api_token), settings) == {
        "repository:team-b/app": ["pull", "push"]
    }


def test_no_one_pushes_into_a_team_over_its_quota_not_staff_nor_its_builds_credential(
    alice, operator, teams, settings, daemon
):
    a, _ = teams
    a.registry_quota_bytes = 10
    a.save()
    fill(a, 11)
    staff = ask("repository:team-a/app:pull,push", user="operator", password=operator.api_token)
    assert access(staff, settings) == {"repository:team-a/app": ["pull"]}
    job = BuildJob.objects.create(
        image="localhost:5000/team-a/app:1", dockerfile=DOCKERFILE, team=a, submitted_by=alice,
        status=BuildJob.Status.BUILDING, daemon=daemon,
    )  # fmt: skip
    build = ask("repository:team-a/app:pull,push", user=f"build-{job.id}", password=build_password(job))
    assert access(build, settings) == {"repository:team-a/app": ["pull"]}


def test_the_daemons_push_token_for_a_team_over_its_quota_has_no_push(teams, settings):
    a, b = teams
    a.registry_quota_bytes = 10
    a.save()
    fill(a, 11)

    def actions(team) -> list[str]:
        token = push_auth("localhost:5000", team.pk, f"{team.slug}/app")["registrytoken"]
        return jwt.decode(token, options={"verify_signature": False})["access"][0]["actions"]

    assert actions(a) == ["pull"]
    assert actions(b) == ["pull", "push"]


def test_a_submit_of_a_team_over_its_quota_is_answered_429_naming_the_quota_and_its_use(alice, bob, teams):
    DockerDaemon.objects.create(name="one", url="tcp://127.0.0.1:9", capacity=2)
    a, _ = teams
    a.registry_quota_bytes = 1_000_000
    a.save()
    fill(a, 1_500_000)

    def submit(user, image):
        body = {"image": image, "dockerfile": DOCKERFILE, "builder": "classic"}
        return api_as(user).post("/api/v1/builds/", body, format="json")

    refused = submit(alice, "localhost:5000/team-a/app:2")
    assert refused.status_code == 429, refused.content
    detail = refused.json()["detail"]
    assert "team team-a uses 1.4 MB of its 976.6 KB registry quota" in detail, detail
    assert "registry_quota_bytes" in detail and refused["Retry-After"] == "3600"
    assert not BuildJob.objects.filter(team=a).exists()
    assert submit(bob, "localhost:5000/team-b/app:1").status_code == 201  # another team's quota is its own


def test_the_api_shows_each_teams_use_and_only_staff_set_its_quota(alice, carol, operator, teams):
    a, _ = teams
    fill(a, 2048)
    usage = api_as(alice).get("/api/v1/teams/team-a/").json()["registry_usage"]
    assert usage["used_bytes"] == 2048 and usage["quota_bytes"] == 10 << 30 and usage["over_quota"] is False
    refused = api_as(carol).patch("/api/v1/teams/team-a/", {"registry_quota_bytes": 1}, format="json")
    assert refused.status_code == 403 and "registry_quota_bytes" in refused.json()["detail"]
    changed = api_as(operator).patch("/api/v1/teams/team-a/", {"registry_quota_bytes": 1024}, format="json")
    assert changed.status_code == 200
    assert changed.json()["registry_usage"] == {**usage, "quota_bytes": 1024, "over_quota": True}


def test_the_insights_page_shows_the_use_of_the_viewers_teams(client, alice, teams):
    a, _ = teams
    a.registry_quota_bytes = 1024
    a.save()
    fill(a, 4096)
    client.force_login(alice)
    page = client.get("/insights/").content.decode()
    assert "Registry storage" in page and "4.0 KB of 1.0 KB, over its quota" in page
    assert "team-b" not in page


def test_the_recount_command_says_when_there_is_no_registry_to_count(teams, settings):
    settings.GENERATOR_REGISTRY_TOKEN_HOST = ""
    with pytest.raises(Exception, match="GENERATOR_REGISTRY_TOKEN_HOST"):
        call_command("registry_usage")


def test_admin_shows_a_teams_registry_use_and_takes_its_quota(client, operator, teams):
    a, _ = teams
    fill(a, 2048)
    client.force_login(operator)
    listed = client.get("/admin/teams/team/").content.decode()
    assert "2.0 KB of 10.0 GB" in listed
    page = client.get(f"/admin/teams/team/{a.pk}/change/").content.decode()
    assert 'name="registry_quota_bytes"' in page and "2.0 KB of 10.0 GB" in page
