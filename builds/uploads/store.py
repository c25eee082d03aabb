"""Where uploaded build contexts wait for their build: a file store, not the database.

The store is Django's storage `STORAGES["contexts"]`: by default a folder
(`GENERATOR_CONTEXT_DIR`) on the one machine that runs web and workers; an
operator with workers on other hosts points it at storage they all reach (S3
through django-storages, a shared filesystem). One file per job, `<job id>.tar`,
written once the upload passed every check (builds/uploads/contexts.py), read by the
worker as a stream to the daemon, and kept after the job ends for retries for
`GENERATOR_CONTEXT_RETENTION_HOURS`, then deleted by `prune` (beat). The
BuildContext row stays, marked pruned, so a late retry can say why it cannot be.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import BinaryIO

from django.conf import settings
from django.core.files.storage import Storage, storages
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.db.models import Q
from django.utils import timezone

from builds.dockerfiles.in_context import UnreadableDockerfile, read_dockerfile
from builds.models import BuildContext, BuildJob
from builds.uploads.contexts import check_context
from lib.errors import SubmissionError

logger = logging.getLogger(__name__)


class ContextGone(Exception):
    """The stored context is no longer there; str() says why."""


@dataclass
class CheckedUpload:
    """A checked, rewritten context in a temporary file, not stored yet."""

    file: TemporaryUploadedFile
    size: int
    members: int
    dockerfile: bytes  # as the engine will read it (builds/dockerfiles/in_context.py)


def store() -> Storage:
    return storages["contexts"]


@contextmanager
def checked(upload: BinaryIO, *, dockerfile: str) -> Iterator[CheckedUpload]:
    """Checks `upload` into a temporary file on disk (FILE_UPLOAD_TEMP_DIR), removed
    on leaving, whatever happened, and reads the Dockerfile from it as the engine
    will find it. SubmissionError says why an upload is refused."""
    with TemporaryUploadedFile("context.tar", "application/x-tar", 0, None) as out:
        result = check_context(
            upload,
            out.file,
            max_bytes=settings.GENERATOR_MAX_CONTEXT_BYTES,
            max_files=settings.GENERATOR_MAX_CONTEXT_FILES,
        )
        out.flush()
        try:
            found = read_dockerfile(out.file, dockerfile, limit=settings.GENERATOR_MAX_DOCKERFILE_BYTES)
        except UnreadableDockerfile as exc:  # never an empty text in its place: the checks fail closed
            raise SubmissionError(str(exc)) from None
        out.seek(0)
        out.size = result.size
        yield CheckedUpload(out, result.size, result.members, found.data)


@contextmanager
def kept_for(job_id: str, upload: CheckedUpload) -> Iterator[dict]:
    """Puts the checked context in the store under the job's name and yields the
    BuildContext fields for it; removes it again if the block fails (the job was
    not created). Outside any transaction: copying a large file must not hold
    SQLite's write lock."""
    name = store().save(f"{job_id}.tar", upload.file)
    try:
        yield {"name": name, "size": upload.size, "members": upload.members}
    except BaseException:
        store().delete(name)
        raise


@contextmanager
def opened(context: BuildContext | None) -> Iterator[BinaryIO]:
    """The stored context, open for reading as a stream."""
    if context is None:
        raise ContextGone("its build context is no longer stored")
    if context.pruned_at:
        hours = settings.GENERATOR_CONTEXT_RETENTION_HOURS
        raise ContextGone(
            f"its build context was deleted at {context.pruned_at:%Y-%m-%d %H:%M} UTC, {hours:g} hours after"
            " the build ended (GENERATOR_CONTEXT_RETENTION_HOURS): submit the context again"
        )
    try:
        file = store().open(context.name, "rb")
    except FileNotFoundError:
        raise ContextGone(f"its build context {context.name!r} is missing from the context store") from None
    with file:
        yield file


def prune(now: datetime | None = None) -> int:
    """Deletes the contexts of jobs that ended more than the retention ago, and
    files no row keeps (a job deleted in admin, a submit that failed half way)
    that are as old. Answers how many files went."""
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.GENERATOR_CONTEXT_RETENTION_HOURS)
    ended = Q(job__finished_at__lt=cutoff) | Q(job__finished_at__isnull=True, job__created_at__lt=cutoff)
    expired = BuildContext.objects.filter(ended, pruned_at__isnull=True, job__status__in=BuildJob.TERMINAL)
    deleted = 0
    for context in expired.only("job_id", "name").iterator():
        store().delete(context.name)  # a name already gone is no error
        BuildContext.objects.filter(pk=context.pk).update(pruned_at=now)
        deleted += 1
    deleted += _prune_orphans(cutoff)
    if deleted:
        logger.info("pruned %d build contexts", deleted)
    return deleted


def _prune_orphans(cutoff: datetime) -> int:
    try:
        files = [name for name in store().listdir("")[1] if name.endswith(".tar")]
    except FileNotFoundError:  # nothing was ever stored
        return 0
    kept = set(BuildContext.objects.filter(pruned_at__isnull=True).values_list("name", flat=True))
    deleted = 0
    for name in files:
        if name not in kept and store().get_modified_time(name) < cutoff:
            store().delete(name)
            deleted += 1
    return deleted
