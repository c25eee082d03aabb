"""`manage.py registry_usage [--team SLUG]...`: recounts teams' use of the farm's
registry from the registry itself (what beat does every
GENERATOR_REGISTRY_USAGE_INTERVAL seconds) and prints each against its quota."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.template.defaultfilters import filesizeformat

from builds.registry.usage import recount
from teams.models import Team


class Command(BaseCommand):
    help = "Recount teams' use of the farm's registry (every team, or those named) and print it against each quota."

    def add_arguments(self, parser):
        parser.add_argument("--team", action="append", default=[], metavar="SLUG", help="this team only (repeatable)")

    def handle(self, *args, team: list[str], **options):
        teams = Team.objects.filter(slug__in=team) if team else Team.objects.all()
        if missing := set(team) - set(teams.values_list("slug", flat=True)):
            raise CommandError(f"no team {', '.join(sorted(missing))}")
        results = recount(list(teams))
        if not results:
            raise CommandError("this farm runs no registry of its own (GENERATOR_REGISTRY_TOKEN_HOST is empty)")
        quotas = {t.slug: t.registry_quota for t in Team.objects.filter(slug__in=[r.team for r in results])}
        for result in results:
            quota = quotas.get(result.team)
            limit = filesizeformat(quota) if quota is not None else "no quota"
            line = f"{result.team}: {filesizeformat(result.used_bytes)} of {limit} ({result.manifests} manifests read)"
            if result.error:
                line += f"; not recounted, kept as it was: {result.error}"
            self.stdout.write(line)
