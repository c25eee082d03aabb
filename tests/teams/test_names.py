"""Team slugs and names are unique ignoring case (issue 22): no `TEAM-A` beside
`team-a`, through the API, admin, the database, and on rows that already collide."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from teams.models import Team
from tests.teams.test_api import api_as


def test_staff_cannot_create_a_team_named_like_another_ignoring_case(operator, teams):
    staff = api_as(operator)
    slug = staff.post("/api/v1/teams/", {"slug": "TEAM-A", "name": "Another"}, format="json")
    assert slug.status_code == 400
    assert slug.json() == {"slug": ["team team-a already has the slug 'team-a' (ignoring case)"]}
    name = staff.post("/api/v1/teams/", {"slug": "other", "name": "team a"}, format="json")
    assert name.status_code == 400 and "team team-a already has the name 'Team A'" in name.json()["name"][0]
    assert Team.objects.count() == 2


def test_a_team_admin_cannot_rename_the_team_like_another(carol, teams):
    renamed = api_as(carol).patch("/api/v1/teams/team-a/", {"slug": "Team-B"}, format="json")
    assert renamed.status_code == 400 and "team team-b already has the slug" in renamed.json()["slug"][0]
    # Its own name in other letters is no collision.
    ok = api_as(carol).patch("/api/v1/teams/team-a/", {"slug": "Team-A", "name": "TEAM A"}, format="json")
    assert ok.status_code == 200 and (ok.json()["slug"], ok.json()["name"]) == ("Team-A", "TEAM A")


def test_unicode_case_is_folded_too(operator, teams):
    staff = api_as(operator)
    assert staff.post("/api/v1/teams/", {"slug": "equipe", "name": "Équipe"}, format="json").status_code == 201
    # SQLite's lower() folds ASCII only: the farm compares with Unicode case folding first.
    again = staff.post("/api/v1/teams/", {"slug": "equipe-2", "name": "ÉQUIPE"}, format="json")
    assert again.status_code == 400 and "already has the name 'Équipe'" in again.json()["name"][0]
    strasse = staff.post("/api/v1/teams/", {"slug": "s", "name": "Straße"}, format="json")
    assert strasse.status_code == 201
    assert staff.post("/api/v1/teams/", {"slug": "s2", "name": "STRASSE"}, format="json").status_code == 400


def test_the_database_refuses_what_slips_past_validation(teams):
    for fields in ({"slug": "TEAM-A", "name": "Z"}, {"slug": "z", "name": "TEAM a"}):
        with pytest.raises(IntegrityError), transaction.atomic():
            Team.objects.create(**fields)


def test_admin_answers_a_form_error(client, operator, teams):
    client.force_login(operator)
    response = client.post(
        "/admin/teams/team/add/",
        {
            "slug": "Team-A",
            "name": "team b",
            "over_limit": "",
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
            "namespaces-TOTAL_FORMS": "0",
            "namespaces-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 200  # the form again, with its errors
    errors = response.context["adminform"].form.errors
    assert "team team-a already has the slug 'team-a' (ignoring case)" in errors["slug"][0]
    assert "team team-b already has the name 'Team B' (ignoring case)" in errors["name"][0]
    assert Team.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_the_migration_renames_the_younger_of_colliding_teams(capsys):
    call_command("migrate", "teams", "0003", verbosity=0)
    try:
        executor = MigrationExecutor(connection)
        old = executor.loader.project_state(("teams", "0003_team_tokens_and_registry_credentials")).apps
        OldTeam = old.get_model("teams", "Team")  # noqa: N806 (a model class)
        first = OldTeam.objects.create(slug="team-a", name="Team A")
        second = OldTeam.objects.create(slug="TEAM-A", name="team a")
        third = OldTeam.objects.create(slug="Team-a", name="Other")
        taken = OldTeam.objects.create(slug=f"team-a-{third.id}", name="Taken")

        call_command("migrate", "teams", "0004", verbosity=0)
        # Read as the tables are at 0004 (the current model has columns of later migrations).
        at_0004 = MigrationExecutor(connection).loader.project_state(("teams", "0004_team_unique_ignoring_case")).apps
        renamed = {team.id: (team.slug, team.name) for team in at_0004.get_model("teams", "Team").objects.all()}
        assert renamed[first.id] == ("team-a", "Team A")  # the oldest keeps both
        assert renamed[second.id] == (f"TEAM-A-{second.id}", f"team a ({second.id})")
        assert renamed[third.id] == (f"Team-a-{third.id}-1", "Other")  # its first choice was taken
        assert renamed[taken.id] == (f"team-a-{third.id}", "Taken")
        printed = capsys.readouterr().out
        assert f"team {second.id}'s slug 'TEAM-A' collides ignoring case" in printed
    finally:
        call_command("migrate", verbosity=0)
        Team.objects.all().delete()


def test_ensureteam_refuses_a_slug_or_name_like_another(teams):
    with pytest.raises(CommandError, match="team team-a already has the slug 'team-a'"):
        call_command("ensureteam", "TEAM-A")
    with pytest.raises(CommandError, match="team team-b already has the name 'Team B'"):
        call_command("ensureteam", "new", "--name", "team b")
    call_command("ensureteam", "team-a", stdout=io.StringIO())  # the team itself: it exists, nothing changes
