"""`manage.py ensureteam SLUG [--namespace PREFIX...] [--public-namespace PREFIX...]
[--admin USER...] [--member USER...]`: a team, its namespaces and members (for
`make up`); running it again adds what is missing and changes nothing else,
but for making a --public-namespace public (readable by every team in the
farm's registry, teams/registry_access.py)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from audit.log import command_actor, record
from lib.references import InvalidReference
from teams.models import Membership, Namespace, Team, parse_namespace, taken_ignoring_case


class Command(BaseCommand):
    help = "Create a team (once), give it namespaces and members."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--name", help="default: the slug")
        parser.add_argument("--namespace", action="append", default=[], help="e.g. localhost:5000/ or r.io/team-a/")
        parser.add_argument(
            "--public-namespace", action="append", default=[], help="a namespace of the team that every team may pull"
        )
        parser.add_argument("--admin", action="append", default=[], help="a username, made the team's admin")
        parser.add_argument("--member", action="append", default=[], help="a username, made a member")

    def handle(self, *args, slug: str, name: str | None, namespace: list[str], admin: list[str], **options):
        via = command_actor("ensureteam")
        public = options["public_namespace"]
        if not Team.objects.filter(slug=slug).exists():
            for field, value in (("slug", slug), ("name", name or slug)):
                if taken := taken_ignoring_case(field, value):
                    raise CommandError(taken)
        team, created = Team.objects.get_or_create(slug=slug, defaults={"name": name or slug})
        if created:
            record("create", "team", team, team=team, via=via)
        self.stdout.write(f"team {slug} {'created' if created else 'exists'}")
        for text in [*namespace, *public]:
            try:
                prefix = parse_namespace(text)
            except InvalidReference as exc:
                raise CommandError(str(exc)) from None
            owned, made = Namespace.objects.get_or_create(prefix=prefix, defaults={"team": team})
            if owned.team_id != team.pk:
                raise CommandError(f"namespace {prefix} belongs to team {owned.team.slug}")
            if made:
                record("create", "namespace", owned, team=team, via=via)
            if text in public and not owned.public:
                Namespace.objects.filter(pk=owned.pk).update(public=True)
                record("change", "namespace", owned, team=team, details={"fields": ["public"]}, via=via)
            readable = " (public: every team pulls it)" if text in public else ""
            self.stdout.write(f"team {slug} {'now owns' if made else 'owns'} namespace {prefix}{readable}")
        users = get_user_model().objects
        for username, role in [(u, Membership.Role.ADMIN) for u in admin] + [
            (u, Membership.Role.MEMBER) for u in options["member"]
        ]:
            user = users.filter(username=username).first()
            if user is None:
                raise CommandError(f"no user named {username!r}")
            _, joined = Membership.objects.get_or_create(team=team, user=user, defaults={"role": role})
            if joined:
                details = {"members": [username], "role": role}
                record("create", "membership", team, team=team, details=details, via=via)
            self.stdout.write(f"{username} is in team {slug}")
