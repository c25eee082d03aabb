"""Teams and ownership: who may build, push, read, retry and cancel what
(builds/jobs/ownership.py). Per rule, a member can and an outsider cannot, through
each front door: REST, /b1, the WebSocket, the pages, badges, webhooks, admin.

Team A owns localhost:5000/team-a/, team B localhost:5000/team-b/. alice (A)
and bob (B) may build; carol is A's admin; dave is a member of A.
"""

from __future__ import annotations

import base64
import importlib
import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.apps import apps
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from builds.github.webhooks import signature_of
from builds.models import BuildJob, BuildLogLine, BuildRule, Registry, Repository
from generator_site.asgi import application
from teams.models import Membership, Namespace, Team, canonical_image
from tests.conftest import _user, builder, member_of

DOCKERFILE = "FROM busybox\nRUN echo hi\n"
SHA = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"


def api_as(user) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {user.api_token}")
    return api


def rest_build(user, image: str, **fields):
    source = {} if "repository" in fields else {"dockerfile": DOCKERFILE}
    return api_as(user).post("/api/v1/builds/", {"image": image, **source, **fields}, format="json")


def seed_build(client, user, image: str, **params):
    encoded = base64.b64encode(DOCKERFILE.encode()).decode()
    return client.get(
        "/b1/build",
        {"imagename": image, "dockerfile": encoded, **params},
        headers={"Authorization": f"Token {user.api_token}"},
    )


def finished_job(team, *, submitted_by=None, repository=None, status="succeeded") -> BuildJob:
    job = BuildJob.objects.create(
        image=f"localhost:5000/{team.slug}/app:latest",
        dockerfile=DOCKERFILE if repository is None else "",
        repository=repository,
        ref="main" if repository else "",
        team=team,
        submitted_by=submitted_by,
        status=status,
        build_args={"TOKEN_HINT": "team-only"},
        finished_at=timezone.now(),
        log_line_count=1,
    )
    BuildLogLine.objects.create(job=job, seq=1, text="Step 1/2 : FROM busybox")
    return job


def repository_of(team, *, public=False, name="team-a/app") -> Repository:
    repository = Repository.objects.create(
        full_name=name,
        clone_url=f"https://git.example.invalid/{name}.git",
        webhook_secret="s3cret",
        image=f"localhost:5000/{team.slug}/app",
        team=team,
        public=public,
    )
    BuildRule.objects.create(repository=repository, source="branch", pattern="main", tags="latest")
    return repository


# --- namespaces --------------------------------------------------------------------


def test_an_image_belongs_to_the_longest_namespace_that_holds_it(teams):
    a, b = teams
    Namespace.objects.create(team=b, prefix="localhost:5000/")
    owning = Namespace.objects.owning
    assert owning("localhost:5000/team-a/app").team == a
    assert owning("localhost:5000/team-a/deep/app").team == a
    assert owning("localhost:5000/team-ab/app").team == b  # a prefix ends at a '/', not mid-name
    assert owning("localhost:5000/other").team == b
    assert owning("127.0.0.1:5000/team-a/app") is None  # another host, as the allow-list reads it


def test_docker_hub_images_are_read_as_docker_reads_them():
    assert canonical_image("busybox") == "docker.io/library/busybox/"
    assert canonical_image("team/app") == "docker.io/team/app/"
    assert canonical_image("index.docker.io/team/app") == "docker.io/team/app/"
    assert canonical_image("localhost:5000/a/b") == "localhost:5000/a/b/"


# --- pushing: the first attack -----------------------------------------------------


def test_a_member_pushes_into_their_teams_namespace(alice, teams, daemon):
    response = rest_build(alice, "localhost:5000/team-a/app:1")
    assert response.status_code == 201, response.json()
    assert response.json()["team"] == "team-a"
    assert BuildJob.objects.get(pk=response.json()["id"]).team == teams[0]


def test_a_build_may_not_push_over_another_teams_image(bob, alice, client, daemon):
    response = rest_build(bob, "localhost:5000/team-a/app:latest")
    assert response.status_code == 403
    assert response.json()["detail"] == (
        "localhost:5000/team-a/app is in namespace localhost:5000/team-a/, which team team-b does not own"
    )
    seed = seed_build(client, bob, "localhost:5000/team-a/app")
    assert seed.status_code == 403 and "namespace localhost:5000/team-a/" in seed.content.decode()
    assert not BuildJob.objects.exists()


def test_an_image_in_no_teams_namespace_is_refused_naming_it(alice, daemon):
    response = rest_build(alice, "localhost:5000/nobody/app")
    assert response.status_code == 403
    assert "localhost:5000/nobody/app is in no team's namespace" in response.json()["detail"]


def test_the_registry_allow_list_is_checked_first_as_a_400(alice, daemon):
    response = rest_build(alice, "registry.invalid:5000/team-a/app")
    assert response.status_code == 400 and "registry registry.invalid:5000" in response.json()["detail"]


def test_a_user_in_two_teams_builds_for_the_one_owning_the_image(alice, teams, daemon, client):
    member_of(teams[1], alice)
    response = rest_build(alice, "localhost:5000/team-b/tool")
    assert response.status_code == 201 and response.json()["team"] == "team-b"
    named = rest_build(alice, "localhost:5000/team-b/tool", team="team-a")
    assert named.status_code == 403 and "which team team-a does not own" in named.json()["detail"]
    seed = seed_build(client, alice, "localhost:5000/team-a/tool", team="team-a")
    assert seed.status_code == 200 and BuildJob.objects.get(pk=seed.content.decode()).team == teams[0]


def test_a_team_one_is_not_in_cannot_be_named(alice, daemon):
    for name in ("team-b", "no-such-team"):
        response = rest_build(alice, "localhost:5000/team-b/x", team=name)
        assert response.status_code == 403
        assert response.json()["detail"] == f"you are not a member of a team named {name!r}"


def test_a_user_in_no_team_may_not_build(teams, daemon):
    loner = _user("loner")
    loner.user_permissions.add(Permission.objects.get(codename="add_buildjob"))
    response = rest_build(loner, "localhost:5000/team-a/app")
    assert response.status_code == 403 and "you are in no team" in response.json()["detail"]


def test_staff_push_anywhere_and_the_build_goes_to_the_namespaces_team(operator, teams, daemon):
    response = rest_build(operator, "localhost:5000/team-b/app")
    assert response.status_code == 201 and response.json()["team"] == "team-b"
    elsewhere = rest_build(operator, "localhost:5000/nobody/app")
    assert elsewhere.status_code == 201 and elsewhere.json()["team"] is None  # staff read it


# --- repositories: the second attack -----------------------------------------------


def test_only_its_team_builds_a_repository(alice, bob, teams, daemon):
    private = repository_of(teams[0])
    build = {"repository": private.full_name, "ref": "main"}
    outsider = rest_build(bob, "localhost:5000/team-b/stolen:1", **build)
    # Another team's private repository reads as one that does not exist.
    assert outsider.json() == {"repository": ["Object with full_name=team-a/app does not exist."]}
    private.public = True
    private.save()
    outsider = rest_build(bob, "localhost:5000/team-b/stolen:1", **build)
    assert outsider.status_code == 403
    assert outsider.json()["detail"] == "repository team-a/app is not your team's: only its own team builds it"
    assert not BuildJob.objects.exists()
    member = rest_build(alice, "localhost:5000/team-a/app:dev", **build)
    assert member.status_code == 201 and member.json()["team"] == "team-a"


def _deliver(client, repository, *, delivery="d-1"):
    payload = {
        "ref": "refs/heads/main",
        "after": SHA,
        "before": "0" * 40,
        "repository": {"full_name": repository.full_name},
    }
    body = json.dumps(payload).encode()
    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": signature_of(repository.webhook_secret, body),
    }
    return client.post("/webhooks/github/", body, content_type="application/json", headers=headers)


def test_a_webhook_builds_for_its_repositorys_team(client, teams, daemon):
    repository = repository_of(teams[0])
    response = _deliver(client, repository)
    assert response.status_code == 202, response.json()
    assert BuildJob.objects.get(pk=response.json()["jobs"][0]).team == teams[0]


def test_a_webhook_refuses_once_the_namespace_went_to_another_team(client, teams, daemon):
    repository = repository_of(teams[0])
    Namespace.objects.filter(prefix="localhost:5000/team-a/").update(team=teams[1])
    response = _deliver(client, repository)
    assert response.status_code == 403
    assert "namespace localhost:5000/team-a/, which team team-a does not own" in response.json()["result"]
    assert not BuildJob.objects.exists()


def test_a_repository_is_saved_only_with_an_image_in_its_teams_namespace(bob, teams):
    bob.user_permissions.add(Permission.objects.get(codename="add_repository"))
    api = api_as(bob)
    repository = {
        "full_name": "b/app",
        "clone_url": "https://git.example.invalid/b/app.git",
        "webhook_secret": "s",
        "image": "localhost:5000/team-a/app",
    }
    response = api.post("/api/v1/repositories/", repository, format="json")
    assert response.status_code == 400
    assert "which team team-b does not own" in response.json()["image"][0]
    assert api.post("/api/v1/repositories/", {**repository, "team": "team-a"}, format="json").json() == {
        "team": ["Object with slug=team-a does not exist."]
    }
    created = api.post("/api/v1/repositories/", {**repository, "image": "localhost:5000/team-b/app"}, format="json")
    assert created.status_code == 201 and created.json()["team"] == "team-b"


def test_another_teams_private_repository_is_not_listed_or_changed(alice, bob, teams):
    private = repository_of(teams[0])
    bob.user_permissions.add(Permission.objects.get(codename="change_repository"))
    api = api_as(bob)
    assert api.get("/api/v1/repositories/").json()["count"] == 0
    assert api.get(f"/api/v1/repositories/{private.pk}/").status_code == 404
    assert api.patch(f"/api/v1/repositories/{private.pk}/", {"public": True}, format="json").status_code == 404
    assert api_as(alice).get(f"/api/v1/repositories/{private.pk}/").status_code == 200


# --- retry: the third attack -------------------------------------------------------


def test_an_outsider_cannot_retry_another_teams_build(alice, bob, teams, daemon):
    job = finished_job(teams[0], submitted_by=alice)
    assert api_as(bob).post(f"/api/v1/builds/{job.id}/retry/").status_code == 404
    public = finished_job(teams[0], submitted_by=alice, repository=repository_of(teams[0], public=True))
    response = api_as(bob).post(f"/api/v1/builds/{public.id}/retry/")
    assert response.status_code == 403 and "not a member of a team named 'team-a'" in response.json()["detail"]
    assert not BuildJob.objects.filter(retry_of__isnull=False).exists()


def test_a_retry_runs_as_the_teammate_who_retries(alice, dave, teams, daemon):
    job = finished_job(teams[0], submitted_by=alice)
    response = api_as(dave).post(f"/api/v1/builds/{job.id}/retry/")
    assert response.status_code == 201, response.json()
    retry = BuildJob.objects.get(pk=response.json()["id"])
    assert (retry.submitted_by, retry.team, retry.retry_of) == (dave, teams[0], job)


def test_a_retry_is_checked_again_where_the_namespace_went(alice, teams, daemon):
    job = finished_job(teams[0], submitted_by=alice)
    Namespace.objects.filter(team=teams[0]).update(team=teams[1])
    response = api_as(alice).post(f"/api/v1/builds/{job.id}/retry/")
    assert response.status_code == 403 and "which team team-a does not own" in response.json()["detail"]


# --- cancel ------------------------------------------------------------------------


def test_cancel_is_for_the_submitter_a_team_admin_or_staff(alice, bob, carol, dave, operator, teams, daemon):
    jobs = [finished_job(teams[0], submitted_by=alice, status="queued") for _ in range(3)]
    assert api_as(bob).post(f"/api/v1/builds/{jobs[0].id}/cancel/").status_code == 404
    refused = api_as(dave).post(f"/api/v1/builds/{jobs[0].id}/cancel/")
    assert refused.status_code == 403 and "an admin of its team" in refused.json()["detail"]
    for user, job in zip([alice, carol, operator], jobs, strict=True):
        response = api_as(user).post(f"/api/v1/builds/{job.id}/cancel/")
        assert response.status_code == 200 and response.json()["status"] == "cancelled", user


# --- reading -----------------------------------------------------------------------


def test_a_team_reads_its_builds_and_an_outsider_gets_404_everywhere(alice, bob, teams, client):
    job = finished_job(teams[0], submitted_by=alice)
    member, outsider = api_as(alice), api_as(bob)
    assert member.get(f"/api/v1/builds/{job.id}/").json()["build_args"] == {"TOKEN_HINT": "team-only"}
    assert [b["id"] for b in member.get("/api/v1/builds/").json()["results"]] == [job.id]
    assert outsider.get("/api/v1/builds/").json()["count"] == 0
    for path in (f"/api/v1/builds/{job.id}/", f"/api/v1/builds/{job.id}/log/"):
        assert member.get(path).status_code == 200
        assert outsider.get(path).status_code == 404
        assert outsider.get(path.replace(job.id, "0" * 32)).json() == outsider.get(path).json()
    line = f"/b1/build/log/http/{job.id}?count=0"
    assert client.get(line, headers={"Authorization": f"Token {alice.api_token}"}).content == b"Step 1/2 : FROM busybox"
    refused = client.get(line, headers={"Authorization": f"Token {bob.api_token}"})
    assert (refused.status_code, refused.content) == (404, f"no build job with id {job.id!r}\n".encode())
    client.force_login(bob)
    assert client.get(f"/builds/{job.id}/").status_code == 404
    assert job.id not in client.get("/builds/").content.decode()
    client.force_login(alice)
    assert client.get(f"/builds/{job.id}/").status_code == 200
    assert job.id in client.get("/builds/").content.decode()


def test_a_public_repositorys_builds_and_badges_are_anyones(teams, client, daemon):
    private = finished_job(teams[0], repository=repository_of(teams[0]))
    public = finished_job(teams[1], repository=repository_of(teams[1], public=True, name="team-b/app"))
    assert client.get(f"/builds/{public.id}/").status_code == 200
    assert client.get(f"/b1/build/log/http/{public.id}?count=0").status_code == 200
    assert client.get(f"/builds/{private.id}/").status_code == 302  # asked to log in, as for any id
    assert client.get(f"/b1/build/log/http/{private.id}?count=0").status_code == 401
    assert "passing" in client.get("/badges/team-b/app.svg").content.decode()
    assert "passing" in client.get("/badges/image/localhost:5000/team-b/app.svg").content.decode()
    unknown = client.get("/badges/no/such.svg").content
    assert client.get("/badges/team-a/app.svg").content == unknown  # reveals nothing
    assert client.get("/badges/image/localhost:5000/team-a/app.svg").content == unknown
    with override_settings(GENERATOR_PUBLIC_LOGS=True):  # the farm-wide switch still opens everything
        assert client.get(f"/builds/{private.id}/").status_code == 200
        assert "passing" in client.get("/badges/team-a/app.svg").content.decode()


def _ws(job_id: str, token: str | None):
    headers = [(b"authorization", f"Token {token}".encode())] if token else []
    return WebsocketCommunicator(application, f"/b1/build/log/ws/{job_id}", headers=headers)


@pytest.mark.django_db(transaction=True)
async def test_the_websocket_log_is_the_teams(teams, allowed_registry):
    alice = await database_sync_to_async(builder)("alice", teams[0])
    bob = await database_sync_to_async(builder)("bob", teams[1])
    job = await database_sync_to_async(finished_job)(teams[0], submitted_by=alice)
    ws = _ws(job.id, alice.api_token)
    assert (await ws.connect())[0]
    assert (await ws.receive_json_from())["lines"] == [{"seq": 1, "text": "Step 1/2 : FROM busybox"}]
    assert (await ws.receive_json_from())["type"] == "end"
    for token, code, message in [
        (bob.api_token, 4404, f"no build job with id {job.id!r}"),
        (None, 4401, "authentication required to read build logs"),
    ]:
        ws = _ws(job.id, token)
        await ws.connect()
        assert await ws.receive_json_from() == {"type": "error", "message": message}
        assert (await ws.receive_output())["code"] == code


@pytest.mark.django_db(transaction=True)
async def test_a_public_repositorys_websocket_log_needs_no_login(teams, allowed_registry):
    def public_job():
        return finished_job(teams[0], repository=repository_of(teams[0], public=True))

    job = await database_sync_to_async(public_job)()
    ws = _ws(job.id, None)
    assert (await ws.connect())[0]
    assert (await ws.receive_json_from())["type"] == "log"


# --- admin, commands, the migration --------------------------------------------------


def test_staff_manage_teams_members_and_namespaces_in_admin(client, operator, alice):
    client.force_login(operator)
    form = {
        "name": "Team C",
        "slug": "team-c",
        "memberships-TOTAL_FORMS": "1", "memberships-INITIAL_FORMS": "0",
        "memberships-0-user": str(alice.pk), "memberships-0-role": "admin",
        "namespaces-TOTAL_FORMS": "1", "namespaces-INITIAL_FORMS": "0",
        "namespaces-0-prefix": "localhost:5000/team-c",
    }  # fmt: skip
    response = client.post("/admin/teams/team/add/", form)
    assert response.status_code == 302, response.content.decode()[:3000]
    team = Team.objects.get(slug="team-c")
    assert team.has_admin(alice) and [n.prefix for n in team.namespaces.all()] == ["localhost:5000/team-c/"]
    assert "team-c" in client.get("/admin/teams/team/").content.decode()


def test_a_team_admin_who_is_not_staff_has_no_admin(client, carol):
    client.force_login(carol)
    response = client.get("/admin/teams/team/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_ensureteam_makes_a_team_once_and_keeps_namespaces_apart(operator, capsys):
    for _ in range(2):
        call_command("ensureteam", "default", "--namespace", "localhost:5000", "--admin", "operator")
    team = Team.objects.get(slug="default")
    assert [n.prefix for n in team.namespaces.all()] == ["localhost:5000/"]
    assert Membership.objects.get(team=team).role == "admin"
    call_command("ensureteam", "other")
    with pytest.raises(CommandError, match="namespace localhost:5000/ belongs to team default"):
        call_command("ensureteam", "other", "--namespace", "localhost:5000/")


def test_rows_made_before_teams_go_to_a_default_team(db, daemon):
    user = _user("old-user")
    Registry.objects.create(host="localhost:5000")
    job = BuildJob.objects.create(image="localhost:5000/old/app:latest", dockerfile=DOCKERFILE, submitted_by=user)
    repository = Repository.objects.create(
        full_name="old/app", clone_url="https://x.invalid/a.git", webhook_secret="s", image="localhost:5000/old/app"
    )
    migration = importlib.import_module("builds.migrations.0013_existing_rows_to_a_default_team")
    migration.to_a_default_team(apps, None)
    team = Team.objects.get(slug="default")
    job.refresh_from_db()
    repository.refresh_from_db()
    assert (job.team, repository.team) == (team, team)
    assert team.has_member(user) and Namespace.objects.owning("localhost:5000/old/app").team == team


def test_the_schema_says_who_may_call_what(db):
    schema = APIClient().get("/api/schema/?format=json").json()
    create = schema["paths"]["/api/v1/builds/"]["post"]["description"]
    cancel = schema["paths"]["/api/v1/builds/{id}/cancel/"]["post"]["description"]
    assert "namespaces" in create and "an admin of its team" in cancel


def test_the_right_to_submit_is_read_afresh_on_every_request_from_the_user_or_a_group(teams):
    """can_submit reads the permission in one query (teams/access.py); it must say
    what has_perm says, and a right taken away must count from the next request."""
    from django.contrib.auth.models import Group

    from teams.access import can_submit

    user = member_of(teams[0], _user("erin"))
    group = Group.objects.create(name="builders")
    answers = [can_submit(user)]
    user.groups.add(group)
    group.permissions.add(Permission.objects.get(codename="add_buildjob"))
    answers.append(can_submit(user))
    user.groups.remove(group)
    answers.append(can_submit(user))
    user.user_permissions.add(Permission.objects.get(codename="add_buildjob"))
    answers.append(can_submit(user))
    user.is_active = False
    answers.append(can_submit(user))
    user.is_active, user.is_superuser = True, True
    user.user_permissions.clear()
    answers.append(can_submit(user))
    assert answers == [False, True, False, True, False, True]
    user.save()
    assert can_submit(type(user).objects.get(pk=user.pk))
