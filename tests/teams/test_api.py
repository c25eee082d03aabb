"""REST API for teams, members and namespaces (teams/api.py): who may call what."""

from __future__ import annotations

from rest_framework.test import APIClient

from teams.models import Membership, Namespace, Team
from tests.teams.test_teams import repository_of


def api_as(user) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {user.api_token}")
    return api


def test_a_member_reads_their_team_and_an_outsider_gets_404(alice, bob, carol):
    listed = api_as(alice).get("/api/v1/teams/").json()["results"]
    assert [t["slug"] for t in listed] == ["team-a"]
    assert listed[0]["namespaces"] == ["localhost:5000/team-a/"]
    assert {m["username"]: m["role"] for m in listed[0]["members"]} == {"alice": "member", "carol": "admin"}
    assert api_as(bob).get("/api/v1/teams/team-a/").status_code == 404
    assert api_as(bob).get("/api/v1/namespaces/").json()["results"][0]["prefix"] == "localhost:5000/team-b/"


def test_a_team_admin_manages_members_and_a_member_may_not(alice, carol, dave, teams):
    added = api_as(carol).post("/api/v1/teams/team-a/members/", {"username": "dave", "role": "admin"}, format="json")
    assert added.status_code == 200 and {"username": "dave", "role": "admin"} in added.json()["members"]
    refused = api_as(alice).post("/api/v1/teams/team-a/members/", {"username": "alice", "role": "admin"}, format="json")
    assert refused.status_code == 403
    assert Membership.objects.get(team=teams[0], user=alice).role == "member"
    assert api_as(carol).delete("/api/v1/teams/team-a/members/alice/").status_code == 200
    assert not teams[0].has_member(alice)
    assert api_as(carol).delete("/api/v1/teams/team-a/members/nobody/").status_code == 404
    bad = api_as(carol).post("/api/v1/teams/team-a/members/", {"username": "ghost", "role": "boss"}, format="json")
    assert bad.status_code == 400 and set(bad.json()) == {"username", "role"}


def test_the_last_admin_stays(carol, teams):
    response = api_as(carol).delete("/api/v1/teams/team-a/members/carol/")
    assert response.status_code == 409 and "last admin" in response.json()["detail"]


def test_only_staff_create_teams_and_give_out_namespaces(carol, operator, teams):
    assert api_as(carol).post("/api/v1/teams/", {"slug": "x", "name": "X"}, format="json").status_code == 403
    # A team admin may not claim a namespace inside another team's (it would take its images).
    claim = {"team": "team-a", "prefix": "localhost:5000/team-b/app"}
    assert api_as(carol).post("/api/v1/namespaces/", claim, format="json").status_code == 403
    staff = api_as(operator)
    assert staff.post("/api/v1/teams/", {"slug": "team-c", "name": "Team C"}, format="json").status_code == 201
    made = staff.post("/api/v1/namespaces/", {"team": "team-c", "prefix": "localhost:5000/c"}, format="json")
    assert made.status_code == 201 and made.json()["prefix"] == "localhost:5000/c/"
    again = staff.post("/api/v1/namespaces/", {"team": "team-a", "prefix": "localhost:5000/c/"}, format="json")
    assert again.status_code == 400 and again.json() == {"prefix": ["localhost:5000/c/ is already a namespace"]}
    bad = staff.post("/api/v1/namespaces/", {"team": "team-c", "prefix": "not a host/x"}, format="json")
    assert bad.status_code == 400 and "not a registry host" in bad.json()["prefix"][0]
    assert Namespace.objects.owning("localhost:5000/c/app").team == Team.objects.get(slug="team-c")


def test_a_team_with_repositories_is_not_deleted(operator, teams):
    repository_of(teams[0])
    response = api_as(operator).delete("/api/v1/teams/team-a/")
    assert response.status_code == 409 and "team-a/app" in response.json()["detail"]
    assert api_as(operator).delete("/api/v1/teams/team-b/").status_code == 204


def test_the_schema_says_who_may_manage_teams(db):
    schema = APIClient().get("/api/schema/?format=json").json()
    assert schema["paths"]["/api/v1/teams/"]["post"]["description"] == "Staff only."
    assert "admins" in schema["paths"]["/api/v1/teams/{slug}/members/"]["post"]["description"]
    assert "Staff only" in schema["paths"]["/api/v1/namespaces/"]["post"]["description"]
