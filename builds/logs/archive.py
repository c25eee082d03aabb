"""Old logs out of the per-line table: one gzipped object per finished job.

A stored line costs ~320 bytes in PostgreSQL (docs/scaling.md) and nothing ever
deleted them. `archive_due` (beat, `farm.archive_logs`) takes the jobs that
ended more than GENERATOR_LOG_RETENTION_DAYS ago, a bounded batch per run, and
for each:

1. writes its lines, in order, as JSON lines `[seq, text]` (JSON keeps any text a
   line may hold: newlines, lone surrogates) gzipped into one object of the log
   store (`STORAGES["logs"]`) under a name no other run uses;
2. in one transaction, records a BuildLogArchive row and deletes the job's rows
   from BuildLogLine. A reader that finds no rows in the table then finds the
   archive: both changes become visible together.

Runs may overlap or die half way: a job with an archive row is not a candidate,
the row is the one-to-one key so a second run's insert fails and its object is
deleted, and a run that died before its transaction left at most an object no
row names (overwritten by nothing, listed by `orphans`). Job rows stay
(unless builds/jobs/retention.py prunes them, with their objects).

`prune_orphans` (beat, `farm.prune_log_store`, hourly) deletes the objects no
row names, those runs' leftovers and the objects of jobs deleted since, once
they are older than GENERATOR_LOG_ORPHAN_GRACE_HOURS.

Readers never come here directly: builds/logs/writer.py:read_lines reads the table and
falls back to the archive, so the REST log, `/b1` line reads, the WebSocket
replay and admin serve archived logs byte for byte, with their seq numbers.
"""

from __future__ import annotations

import bisect
import gzip
import itertools
import json
import logging
import secrets
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from datetime import datetime, timedelta

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, storages
from django.db import IntegrityError, transaction
from django.utils import timezone

from builds.models import BuildJob, BuildLogArchive, BuildLogLine

logger = logging.getLogger(__name__)

# Decoded archives kept in a reader's process: a `/b1` poller reads a log one line
# per request, and the WebSocket replay a page at a time, from the same object.
CACHE_BYTES = 64 << 20
CACHE_ENTRY_BYTES = 16 << 20  # larger archives are read as a stream each time
READ_CHUNK = 2000


def store() -> Storage:
    return storages["logs"]


def _text_bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def due(now: datetime | None = None):
    """Finished jobs with lines in the table, ended before the retention."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.GENERATOR_LOG_RETENTION_DAYS)
    return BuildJob.objects.filter(
        status__in=BuildJob.TERMINAL, finished_at__lt=cutoff, log_line_count__gt=0, log_archive__isnull=True
    ).order_by("finished_at")


def archive_due(
    now: datetime | None = None, *, max_jobs: int | None = None, max_lines: int | None = None
) -> tuple[int, int]:
    """Archives up to `max_jobs` due jobs, stopping once `max_lines` lines moved
    (a job is never split). Answers (jobs, lines) archived."""
    max_jobs = max_jobs or settings.GENERATOR_LOG_ARCHIVE_BATCH_JOBS
    max_lines = max_lines or settings.GENERATOR_LOG_ARCHIVE_BATCH_LINES
    jobs = lines = 0
    for job_id in list(due(now).values_list("id", flat=True)[:max_jobs]):
        archived = archive_job(job_id)
        if archived is not None:
            jobs += 1
            lines += archived.lines
        if lines >= max_lines:
            break
    if jobs:
        logger.info("archived the logs of %d jobs (%d lines)", jobs, lines)
    return jobs, lines


def archive_job(job_id: str) -> BuildLogArchive | None:
    """Moves one finished job's lines to the log store; None if it is not
    finished or another run archived it first."""
    if not BuildJob.objects.filter(pk=job_id, status__in=BuildJob.TERMINAL).exists():
        return None
    rows = BuildLogLine.objects.filter(job_id=job_id).order_by("seq").values_list("seq", "text")
    first = last = None
    count = size = 0
    with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
        # mtime 0: the same lines always make the same bytes.
        with gzip.GzipFile(fileobj=spool, mode="wb", mtime=0) as out:
            for seq, text in rows.iterator(chunk_size=READ_CHUNK):
                out.write(json.dumps([seq, text]).encode() + b"\n")
                first = seq if first is None else first
                last = seq
                count += 1
                size += _text_bytes(text)
        stored = spool.tell()
        spool.seek(0)
        name = ""
        if count:
            # A name of its own per run: two runs never write over each other's object.
            name = store().save(f"{job_id[:2]}/{job_id}-{secrets.token_hex(4)}.jsonl.gz", File(spool))
    try:
        with transaction.atomic():
            archive = BuildLogArchive.objects.create(
                job_id=job_id,
                name=name,
                first_seq=first or 0,
                last_seq=last or 0,
                lines=count,
                text_bytes=size,
                stored_bytes=stored if count else 0,
            )
            if count:
                BuildLogLine.objects.filter(job_id=job_id, seq__lte=last).delete()
    except IntegrityError:  # another run archived it meanwhile; its object is the one named
        if name:
            store().delete(name)
        return None
    return archive


def read(archive: BuildLogArchive, after: int, *, max_lines: int, max_bytes: int) -> tuple[list[tuple[int, str]], bool]:
    """Archived lines after `after`, with read_lines' budget and the same answer
    as the table gave: "more may follow" whenever a budget was reached."""
    lines: list[tuple[int, str]] = []
    if not archive.lines or after >= archive.last_seq:
        return lines, False
    size = 0
    for seq, text in _lines_of(archive, after):
        lines.append((seq, text))
        size += _text_bytes(text)
        if size >= max_bytes or len(lines) == max_lines:
            return lines, True
    return lines, False


def _lines_of(archive: BuildLogArchive, after: int) -> Iterator[tuple[int, str]]:
    cached = _cache.get(archive.name)
    if cached is None and archive.text_bytes <= CACHE_ENTRY_BYTES:
        cached = list(_stream(archive.name))
        _cache.put(archive.name, cached, archive.text_bytes)
    if cached is None:
        yield from ((seq, text) for seq, text in _stream(archive.name) if seq > after)
    else:
        yield from itertools.islice(cached, bisect.bisect_right(cached, after, key=lambda line: line[0]), None)


def _stream(name: str) -> Iterator[tuple[int, str]]:
    with store().open(name, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as lines:
        for line in lines:
            seq, text = json.loads(line)
            yield seq, text


class _Cache:
    """The most recently read archives, decoded, up to CACHE_BYTES of text. An
    archive never changes, so nothing here goes stale."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[list[tuple[int, str]], int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, name: str) -> list[tuple[int, str]] | None:
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                return None
            self._entries.move_to_end(name)
            return entry[0]

    def put(self, name: str, lines: list[tuple[int, str]], size: int) -> None:
        with self._lock:
            if name in self._entries:
                return
            self._entries[name] = (lines, size)
            self._bytes += size
            while self._bytes > self.capacity and len(self._entries) > 1:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


_cache = _Cache(CACHE_BYTES)


def orphans() -> list[str]:
    """Objects of the log store that no archive row names: left by a run that
    died between writing its object and its transaction (whole, or cut short
    mid-write), or whose job is gone (deleted in admin, or pruned) and its
    archive row with it. Any depth; one query per folder of the store."""
    found = []
    for folder, files in _walk(""):
        # An object's name starts with its job's id (archive_job); a stray file
        # of another shape matches no row and is found all the same.
        ids = sorted({file.partition("-")[0] for file in files})
        named = set()
        for start in range(0, len(ids), 500):
            rows = BuildLogArchive.objects.filter(job_id__in=ids[start : start + 500])
            named.update(rows.values_list("name", flat=True))
        found += [name for name in (f"{folder}{file}" for file in files) if name not in named]
    return found


def _walk(folder: str) -> Iterator[tuple[str, list[str]]]:
    """(folder with its trailing slash, its files) for `folder` and every folder below it."""
    try:
        folders, files = store().listdir(folder)
    except FileNotFoundError:  # no store yet, or the folder went meanwhile
        return
    prefix = f"{folder}/" if folder else ""
    yield prefix, files
    for below in folders:
        yield from _walk(f"{prefix}{below}")


def prune_orphans(now: datetime | None = None) -> int:
    """Deletes the orphans older than GENERATOR_LOG_ORPHAN_GRACE_HOURS. Answers
    how many.

    A run writes its object before its transaction names it, so a young object
    no row names may be one a run is about to commit: it is left alone. The
    age is the object's last write, so a run that is still writing is young
    too. An object named by a row (its job's own) is never an orphan."""
    cutoff = (now or timezone.now()) - timedelta(hours=settings.GENERATOR_LOG_ORPHAN_GRACE_HOURS)
    removed = 0
    for name in orphans():
        try:
            if store().get_modified_time(name) >= cutoff:
                continue
            store().delete(name)
        except FileNotFoundError:  # deleted meanwhile (another run)
            continue
        removed += 1
    if removed:
        logger.info("deleted %d orphaned objects of the log store", removed)
    return removed
