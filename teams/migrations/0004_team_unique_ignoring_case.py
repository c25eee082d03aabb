"""Team slugs and names unique ignoring case (issue 22): `TEAM-A` beside `team-a`
passed for the other team on pages, notifications and the audit log.

Rows that already collide are not refused (the migration must run on any farm):
in each group of teams whose slug, or whose name, is the same ignoring case
(Unicode case folding, a superset of what lower() folds on SQLite or
PostgreSQL), the oldest team (lowest id) keeps it, and every other team of the
group gets its id appended: slug `team-a` -> `team-a-7`, name `Team A` ->
`Team A (7)` (shortened to fit; a counter added should that be taken too). Only
the slug and name change: members, namespaces, tokens, repositories and builds
point at the team's id and stay its own. What was renamed is printed, so that an
operator can tell the team: a script that names it by its old slug (`team=`)
then gets a 400. Going back removes the constraints and keeps the new names.
"""

from django.db import migrations, models
from django.db.models.functions import Lower

SLUG_MAX, NAME_MAX = 50, 100


def _free(value: str, suffix: str, limit: int, taken: set[str]) -> str:
    base, number = value, 0
    while True:
        ending = suffix if number == 0 else f"{suffix}-{number}"
        candidate = base[: limit - len(ending)] + ending
        if candidate.casefold() not in taken:
            return candidate
        number += 1


def rename_collisions(apps, schema_editor):
    Team = apps.get_model("teams", "Team")
    for field, limit, suffix in (("slug", SLUG_MAX, "-{id}"), ("name", NAME_MAX, " ({id})")):
        teams = list(Team.objects.order_by("id"))
        taken = {getattr(team, field).casefold() for team in teams}
        seen: set[str] = set()
        for team in teams:
            value = getattr(team, field)
            if value.casefold() not in seen:
                seen.add(value.casefold())
                continue
            new = _free(value, suffix.format(id=team.id), limit, taken)
            taken.add(new.casefold())
            seen.add(new.casefold())
            print(f"teams: team {team.id}'s {field} {value!r} collides ignoring case with an older team's: now {new!r}")
            setattr(team, field, new)
            team.save(update_fields=[field])


class Migration(migrations.Migration):
    dependencies = [
        ("teams", "0003_team_tokens_and_registry_credentials"),
    ]

    operations = [
        migrations.RunPython(rename_collisions, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="team",
            constraint=models.UniqueConstraint(
                Lower("slug"),
                name="team_slug_unique_ignoring_case",
                violation_error_message="A team with this slug (ignoring case) already exists.",
            ),
        ),
        migrations.AddConstraint(
            model_name="team",
            constraint=models.UniqueConstraint(
                Lower("name"),
                name="team_name_unique_ignoring_case",
                violation_error_message="A team with this name (ignoring case) already exists.",
            ),
        ),
    ]
