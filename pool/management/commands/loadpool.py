"""`manage.py loadpool conf/pool.json`: create or update the daemons the file names."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from audit.log import command_actor, record
from pool.models import DockerDaemon
from pool.seed_pool import PoolFileError, read_pool_file


class Command(BaseCommand):
    help = "Load the Docker daemon pool from a seed-format pool.json (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("path", help="pool.json in the seed's format")

    def handle(self, *args, path: str, **options):
        try:
            entries = read_pool_file(path)
        except PoolFileError as exc:
            raise CommandError(str(exc)) from None
        # All or nothing: one bad entry leaves the pool as it was.
        with transaction.atomic():
            for entry in entries:
                daemon = DockerDaemon.objects.filter(name=entry.name).first() or DockerDaemon(name=entry.name)
                created = daemon.pk is None
                before = _fields(daemon)
                daemon.url, daemon.capacity = entry.url, entry.capacity
                if entry.group is not None:
                    daemon.group = entry.group
                for name, limit in (entry.disk or {}).items():  # an entry without "disk" keeps what admin set
                    setattr(daemon, name, limit)
                if entry.emulated_platforms is not None:
                    daemon.emulated_platforms = entry.emulated_platforms
                for name, pem in (entry.tls or {}).items():  # an entry without "tls" keeps what admin set
                    setattr(daemon, name, pem)
                try:
                    daemon.full_clean()
                except ValidationError as exc:
                    raise CommandError(f"{path}: {entry.name}: {'; '.join(exc.messages)}") from None
                daemon.save()
                changed = sorted(name for name, value in _fields(daemon).items() if before[name] != value)
                if created or changed:  # names only: the TLS fields hold a private key
                    details = {} if created else {"fields": changed}
                    record(
                        "create" if created else "change",
                        "daemon",
                        daemon,
                        details=details,
                        via=command_actor("loadpool"),
                    )
                verb = "added" if created else "updated"
                tls = ", TLS" if daemon.uses_tls else ""
                self.stdout.write(
                    f"{verb} {daemon.name} ({daemon.url}{tls}, capacity {daemon.capacity}, queue {daemon.queue})"
                )


def _fields(daemon: DockerDaemon) -> dict:
    """The daemon's settings as stored, less what every save changes by itself."""
    fields = [f for f in daemon._meta.concrete_fields if not getattr(f, "auto_now", False)]
    return {field.attname: getattr(daemon, field.attname) for field in fields}
