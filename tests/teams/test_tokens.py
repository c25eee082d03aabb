"""Team API tokens (teams/tokens.py): made and revoked by a team's admins, the key
shown once and stored as a hash, acting as a member of that team alone on REST,
/b1 and the WebSocket."""

from __future__ import annotations

import base64
import hashlib
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone
from rest_framework.test import APIClient

from audit.models import AuditEvent
from builds.models import BuildJob
from teams import tokens
from teams.models import Membership, TeamToken
from tests.conftest import builder
from tests.teams.test_teams import DOCKERFILE, _ws, api_as, finished_job


def with_key(key: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return api


def make(admin, name: str = "ci", **fields) -> dict:
    response = api_as(admin).post("/api/v1/teams/team-a/tokens/", {"name": name, **fields}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def submit(key: str, image: str):
    return with_key(key).post("/api/v1/builds/", {"image": image, "dockerfile": DOCKERFILE}, format="json")


def test_a_team_admin_makes_a_token_whose_key_is_shown_once_and_stored_as_a_hash(carol, teams):
    made = make(carol, "deploy")
    key = made["token"]
    assert key.startswith("gtt_") and len(key) > 40 and made["prefix"] == key[:12]
    assert made["created_by"] == "carol" and made["revoked_at"] is None
    listed = api_as(carol).get("/api/v1/teams/team-a/tokens/")
    assert listed.status_code == 200 and [t["name"] for t in listed.json()] == ["deploy"]
    assert key not in listed.content.decode() and "token" not in listed.json()[0]
    row = TeamToken.objects.get()
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in [str(v) for v in TeamToken.objects.values().get().values()]
    [event] = AuditEvent.objects.filter(kind="token", team="team-a")
    assert (event.action, event.team, event.actor_name) == ("create", "team-a", "carol")
    assert key not in f"{event.object_repr} {event.details}"


def test_a_member_may_not_manage_tokens_and_an_outsider_gets_404(alice, bob, carol, teams):
    token = make(carol)
    for path in ("/api/v1/teams/team-a/tokens/", f"/api/v1/teams/team-a/tokens/{token['id']}/"):
        method = "get" if path.endswith("tokens/") else "delete"
        assert getattr(api_as(alice), method)(path).status_code == 403
        assert getattr(api_as(bob), method)(path).status_code == 404
    assert api_as(alice).post("/api/v1/teams/team-a/tokens/", {"name": "x"}, format="json").status_code == 403
    assert api_as(bob).post("/api/v1/teams/team-a/tokens/", {"name": "x"}, format="json").status_code == 404
    assert TeamToken.objects.count() == 1 and TeamToken.objects.get().revoked_at is None
    # A team token is a member, not an admin: it makes no tokens either.
    assert with_key(token["token"]).post("/api/v1/teams/team-a/tokens/", {"name": "y"}).status_code == 403


def test_a_token_builds_and_reads_for_its_team_alone(carol, bob, teams, daemon):
    key = make(carol)["token"]
    built = submit(key, "localhost:5000/team-a/app:1")
    assert built.status_code == 201, built.content
    job = BuildJob.objects.get(pk=built.json()["id"])
    teams[0].refresh_from_db()
    user = teams[0].token_user
    assert job.team == teams[0] and job.submitted_by == user and user.username == "team-a (team token)"
    assert list(Membership.objects.filter(user=user).values_list("team__slug", "role")) == [("team-a", "member")]
    assert not user.has_usable_password()
    refused = submit(key, "localhost:5000/team-b/app:1")
    assert refused.status_code == 403 and "team-b" in refused.json()["detail"]
    other = finished_job(teams[1], submitted_by=bob)
    assert with_key(key).get(f"/api/v1/builds/{other.id}/").status_code == 404
    assert with_key(key).get("/api/v1/builds/").json()["count"] == 1
    assert with_key(key).post(f"/api/v1/builds/{other.id}/cancel/").status_code == 404
    assert with_key(key).post(f"/api/v1/builds/{job.id}/cancel/").status_code == 200
    assert TeamToken.objects.get().last_used_at is not None


def test_the_seed_api_takes_a_team_token(carol, teams, daemon, client):
    key = make(carol)["token"]
    dockerfile = base64.b64encode(DOCKERFILE.encode()).decode()
    mine = client.get("/b1/build", {"imagename": "localhost:5000/team-a/x", "dockerfile": dockerfile},
                      headers={"Authorization": f"Token {key}"})  # fmt: skip
    assert mine.status_code == 200 and BuildJob.objects.get(pk=mine.content.decode()).team == teams[0]
    theirs = client.get("/b1/build", {"imagename": "localhost:5000/team-b/x", "dockerfile": dockerfile},
                        headers={"Authorization": f"Token {key}"})  # fmt: skip
    assert theirs.status_code == 403


def test_revoked_and_expired_tokens_get_401_everywhere(carol, teams, daemon, client):
    revoked, expired = make(carol, "old"), make(carol, "soon")
    live = with_key(revoked["token"])
    assert live.get("/api/v1/builds/").status_code == 200
    assert api_as(carol).delete(f"/api/v1/teams/team-a/tokens/{revoked['id']}/").status_code == 204
    TeamToken.objects.filter(pk=expired["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    for made, reason in [(revoked, "revoked"), (expired, "expired")]:
        answer = with_key(made["token"]).get("/api/v1/builds/")
        assert answer.status_code == 401 and reason in answer.json()["detail"]
        seed = client.get("/b1/build/log/http/" + "0" * 32, headers={"Authorization": f"Token {made['token']}"})
        assert seed.status_code == 401 and reason in seed.content.decode()
    assert with_key("gtt_" + "x" * 43).get("/api/v1/builds/").status_code == 401
    assert AuditEvent.objects.filter(kind="token", action="delete", actor_name="carol").count() == 1
    listed = api_as(carol).get("/api/v1/teams/team-a/tokens/").json()
    assert {t["name"]: bool(t["revoked_at"]) for t in listed} == {"old": True, "soon": False}


def test_an_expiry_in_the_past_is_refused(carol, teams):
    past = (timezone.now() - timedelta(hours=1)).isoformat()
    refused = api_as(carol).post("/api/v1/teams/team-a/tokens/", {"name": "x", "expires_at": past}, format="json")
    assert refused.status_code == 400 and "expires_at" in refused.json()


def test_user_tokens_keep_working_beside_team_tokens(alice, carol, teams):
    make(carol)
    assert api_as(alice).get("/api/v1/teams/").status_code == 200
    assert with_key("not-a-key").get("/api/v1/builds/").status_code == 401


def test_the_token_user_is_not_made_admin_or_moved_through_the_members_api(carol, teams, operator):
    make(carol)
    teams[0].refresh_from_db()
    name = teams[0].token_user.username
    promote = api_as(carol).post("/api/v1/teams/team-a/members/", {"username": name, "role": "admin"}, format="json")
    assert promote.status_code == 400 and "token user" in promote.json()["detail"]
    assert api_as(operator).post("/api/v1/teams/team-b/members/", {"username": name}, format="json").status_code == 400
    assert api_as(carol).delete(f"/api/v1/teams/team-a/members/{name}/").status_code == 400
    assert list(Membership.objects.filter(user__username=name).values_list("role", flat=True)) == ["member"]


def test_admin_shows_the_key_once_then_never(client, operator, teams):
    client.force_login(operator)
    added = client.post("/admin/teams/teamtoken/add/", {"team": teams[0].pk, "name": "from admin"})
    assert added.status_code == 200
    token = TeamToken.objects.get()
    [key] = [word for word in added.content.decode().split('"') if word.startswith("gtt_")]
    assert token.key_hash == hashlib.sha256(key.encode()).hexdigest() and token.created_by == operator
    for page in ("/admin/teams/teamtoken/", f"/admin/teams/teamtoken/{token.pk}/change/"):
        shown = client.get(page)
        assert shown.status_code == 200 and key not in shown.content.decode() and token.prefix in shown.content.decode()
    client.post("/admin/teams/teamtoken/", {"action": "revoke", "_selected_action": [token.pk]})
    assert with_key(key).get("/api/v1/builds/").status_code == 401


def test_the_token_user_is_made_once_per_team(teams):
    first, _ = tokens.issue(teams[0], "a")
    second, _ = tokens.issue(teams[0], "b")
    teams[0].refresh_from_db()
    assert teams[0].token_user is not None
    assert Membership.objects.filter(team=teams[0], user=teams[0].token_user).count() == 1
    other, _ = tokens.issue(teams[1], "c")
    teams[1].refresh_from_db()
    assert teams[1].token_user != teams[0].token_user


@pytest.mark.django_db(transaction=True)
async def test_the_websocket_takes_a_team_token_for_its_teams_logs(teams, allowed_registry):
    bob = await database_sync_to_async(builder)("bob", teams[1])
    mine = await database_sync_to_async(finished_job)(teams[0])
    theirs = await database_sync_to_async(finished_job)(teams[1], submitted_by=bob)
    token, key = await database_sync_to_async(tokens.issue)(teams[0], "ws")
    ws = _ws(mine.id, key)
    assert (await ws.connect())[0]
    assert (await ws.receive_json_from())["lines"] == [{"seq": 1, "text": "Step 1/2 : FROM busybox"}]
    await ws.disconnect()
    ws = _ws(theirs.id, key)
    await ws.connect()
    assert await ws.receive_json_from() == {"type": "error", "message": f"no build job with id {theirs.id!r}"}
    assert (await ws.receive_output())["code"] == 4404
    await database_sync_to_async(tokens.revoke)(token)
    ws = _ws(mine.id, key)
    await ws.connect()
    assert await ws.receive_json_from() == {"type": "error", "message": "this team token was revoked"}
    assert (await ws.receive_output())["code"] == 4401
