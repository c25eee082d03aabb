"""Rows made before teams go to a team named `default`, so nothing breaks: its
members are every user that existed, it owns every job and repository, and a
namespace of each allowed registry (all of it), so the same pushes still go
through. A database with none of these (a new farm) gets no team here: `make up`
makes its own (`manage.py ensureteam`)."""

from django.db import migrations


def to_a_default_team(apps, schema_editor):
    Team = apps.get_model("teams", "Team")
    Membership = apps.get_model("teams", "Membership")
    Namespace = apps.get_model("teams", "Namespace")
    BuildJob = apps.get_model("builds", "BuildJob")
    Repository = apps.get_model("builds", "Repository")
    Registry = apps.get_model("builds", "Registry")
    User = apps.get_model("auth", "User")
    if not (BuildJob.objects.exists() or Repository.objects.exists() or Registry.objects.exists()):
        return
    team, _ = Team.objects.get_or_create(slug="default", defaults={"name": "Default"})
    BuildJob.objects.filter(team__isnull=True).update(team=team)
    Repository.objects.filter(team__isnull=True).update(team=team)
    for user in User.objects.filter(is_active=True):
        Membership.objects.get_or_create(team=team, user=user, defaults={"role": "member"})
    for registry in Registry.objects.all():
        Namespace.objects.get_or_create(prefix=f"{registry.host}/", defaults={"team": team})


class Migration(migrations.Migration):
    dependencies = [
        ("builds", "0012_teams_own_builds_and_repositories"),
        ("teams", "0001_teams_members_namespaces"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(to_a_default_team, migrations.RunPython.noop)]
