"""`manage.py allowregistry HOST...`: let builds push to these registries (for `make up`).

Adds a Registry row without credentials for each host not listed yet; a listed
host, and any credentials an operator stored for it, are left as they are.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from audit.log import command_actor, record
from builds.models import Registry


class Command(BaseCommand):
    help = "Allow builds to push to registry hosts (idempotent; credentials are set in admin or the API)."

    def add_arguments(self, parser):
        parser.add_argument("hosts", nargs="+", metavar="HOST", help="as in image names, e.g. localhost:5000")

    def handle(self, *args, hosts: list[str], **options):
        for text in hosts:
            candidate = Registry(host=text)
            try:
                candidate.clean()
            except ValidationError as exc:
                raise CommandError("; ".join(exc.messages)) from None
            if Registry.objects.allowing(candidate.host).exists():
                self.stdout.write(f"registry {candidate.host} is already allowed")
                continue
            registry, created = Registry.objects.get_or_create(host=candidate.host)  # another run may add it now
            if created:
                record("create", "registry", registry, via=command_actor("allowregistry"))
            self.stdout.write(f"builds may push to registry {candidate.host} (no credentials)")
