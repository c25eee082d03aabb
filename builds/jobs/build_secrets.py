"""Build secrets: encrypted at rest, handed to BuildKit as files, masked in logs.

Values are encrypted as everything the farm keeps secret (lib/crypto.py: Fernet
under GENERATOR_SECRETS_KEYS, rotated by `manage.py rotatesecrets`).

A secret reaches a build only as a file for `RUN --mount=type=secret,id=NAME`:
never an environment variable or build arg (those land in `docker history`).
"""

from __future__ import annotations

from django.db.models import Q

from builds.models import BuildJob, BuildSecret
from lib.crypto import decrypt, encrypt
from lib.secret_values import check


def store(owner: dict, secrets: dict[str, str]) -> None:
    """Creates or replaces the named secrets of `owner` ({"repository": r} or {"job": j})."""
    check(secrets)
    for name, value in secrets.items():
        BuildSecret.objects.update_or_create(**owner, name=name, defaults={"value": encrypt(value)})


def for_job(job) -> dict[str, str]:
    """The build's secrets in clear: its repository's, and its own over them. A
    fork's pull request gets none of its repository's (builds/github/pull_requests.py)."""
    rows = BuildSecret.objects.filter(models_q_for(job)).order_by("job_id", "name")
    values = {}
    for row in sorted(rows, key=lambda r: r.job_id is not None):  # the build's own win
        values[row.name] = decrypt(row.value)
    return values


def models_q_for(job):
    repository = Q(repository_id=job.repository_id) if job.repository_id and not job.fork else Q(pk__in=[])
    return Q(job_id=job.id) | repository


def forget_ended() -> int:
    """Deletes the secrets of builds that have ended: they are kept only while a build may still run."""
    deleted, _ = BuildSecret.objects.filter(job__status__in=BuildJob.TERMINAL).delete()
    return deleted
