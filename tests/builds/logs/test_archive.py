"""Old logs move to the log store, and every reader serves them as before.

Each reader is asked the same questions before and after the archive run and
must answer with the same bytes: the REST log, `/b1` line reads, the WebSocket
replay, the job page and admin.
"""

from __future__ import annotations

import gzip
import json
import os
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from builds import tasks
from builds.logs import archive as log_archive
from builds.logs.writer import LogWriter, read_lines
from builds.models import BuildJob, BuildLogArchive, BuildLogLine
from tests.builds.test_consumers import communicator

# Lines a build may well print: empty, tabs, carriage returns, newlines inside one
# line (a BuildKit step can), non-ASCII, JSON's own quoting, a long line.
ODD_LINES = ["", "\ttab", "cr\r", "two\nlines", "ünïcødé ✓ 🚀", '{"seq": 1, "text": "\\n"}', "x" * 70_000]


@pytest.fixture(autouse=True)
def log_store(settings, tmp_path):
    """A log store of this test's own (the test database forgets its rows, a folder would not)."""
    settings.STORAGES = {
        **settings.STORAGES,
        "logs": {**settings.STORAGES["logs"], "OPTIONS": {"location": str(tmp_path)}},
    }
    log_archive._cache.clear()
    return tmp_path


def finished_job(team, lines: list[str], *, days_ago: float = 30, status: str = "succeeded") -> BuildJob:
    job = BuildJob.objects.create(image="localhost:5000/a/b:1", dockerfile="FROM busybox\n", status=status, team=team)
    writer = LogWriter(job.id, last_seq=0, batch_lines=500, flush_seconds=60)
    for text in lines:
        writer.write(text)
    writer.flush()
    finished = timezone.now() - timedelta(days=days_ago)
    BuildJob.objects.filter(pk=job.pk).update(finished_at=finished, started_at=finished - timedelta(minutes=1))
    return BuildJob.objects.get(pk=job.pk)


def numbered(count: int) -> list[str]:
    return [f"line {i} " + "·" * (i % 7) for i in range(count)] + ODD_LINES


def rest_reads(job, user) -> list[tuple[bytes, str]]:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {user.api_token}")
    answers = []
    for offset in (0, 1, 57, job.log_line_count - 1, job.log_line_count, job.log_line_count + 5):
        response = api.get(f"/api/v1/builds/{job.id}/log/?offset={offset}")
        assert response.status_code == 200
        answers.append((response.content, response["X-Log-Next-Offset"]))
    return answers


def admin_log(client, job) -> bytes:
    page = client.get(f"/admin/builds/buildjob/{job.id}/change/").content
    return page[page.index(b"<pre>") : page.index(b"</pre>")]


def seed_reads(job, user) -> list[tuple[int, bytes]]:
    client = Client()
    headers = {"Authorization": f"Token {user.api_token}"}
    answers = []
    for count in range(job.log_line_count + 2):
        response = client.get(f"/b1/build/log/http/{job.id}", {"count": count}, headers=headers)
        answers.append((response.status_code, response.content))
    return answers


def test_every_http_reader_serves_an_archived_log_byte_for_byte(team, reader, operator):
    job = finished_job(team, numbered(300))
    before = (
        rest_reads(job, reader),
        seed_reads(job, reader),
        read_lines(job.id, 0, max_lines=10**6, max_bytes=1 << 30),
    )
    admin_page = Client()
    admin_page.force_login(operator)
    page_before = admin_log(admin_page, job)

    assert log_archive.archive_due() == (1, 307)

    assert not BuildLogLine.objects.filter(job=job).exists()
    archive = BuildLogArchive.objects.get(job=job)
    assert (archive.first_seq, archive.last_seq, archive.lines) == (1, 307, 307)
    log_archive._cache.clear()  # the first read below comes from the store itself
    after = (
        rest_reads(job, reader),
        seed_reads(job, reader),
        read_lines(job.id, 0, max_lines=10**6, max_bytes=1 << 30),
    )
    assert after == before
    assert before[1][3] == (200, b"line 3 \xc2\xb7\xc2\xb7\xc2\xb7")
    assert before[1][-1][0] == 404 and b"has 307 lines" in before[1][-1][1]
    assert admin_log(admin_page, job) == page_before
    assert page_before.count(b"\n") == 307
    page = Client()
    page.force_login(reader)
    assert page.get(f"/builds/{job.id}/").status_code == 200


def test_paged_reads_of_an_archive_keep_their_seq_numbers_and_budget(team):
    job = finished_job(team, numbered(5000))
    pages_before = _pages(job.id)
    log_archive.archive_due()
    assert not BuildLogLine.objects.filter(job=job).exists()
    for cached in (False, True):
        if not cached:
            log_archive._cache.clear()
        assert _pages(job.id) == pages_before
    # A store object too large for the cache is read as a stream: same answers.
    BuildLogArchive.objects.filter(job=job).update(text_bytes=log_archive.CACHE_ENTRY_BYTES + 1)
    log_archive._cache.clear()
    assert _pages(job.id) == pages_before
    assert log_archive._cache.get(BuildLogArchive.objects.get(job=job).name) is None


def _pages(job_id: str) -> list[tuple[list[tuple[int, str]], bool]]:
    pages, after, more = [], 0, True
    while more:
        lines, more = read_lines(job_id, after, max_lines=700, max_bytes=20_000)
        pages.append((lines, more))
        after = lines[-1][0] if lines else after
    return pages


def test_the_stored_object_is_gzipped_json_lines_with_seq_numbers(team):
    job = finished_job(team, ["a", "b\nc"])
    archive = log_archive.archive_job(job.id)
    with log_archive.store().open(archive.name, "rb") as raw:
        assert [json.loads(line) for line in gzip.decompress(raw.read()).splitlines()] == [[1, "a"], [2, "b\nc"]]
    assert archive.stored_bytes == log_archive.store().size(archive.name)
    assert archive.text_bytes == 4


def test_the_archive_task_works_in_bounded_batches_and_only_once(team, settings):
    settings.GENERATOR_LOG_RETENTION_DAYS = 7
    old = [finished_job(team, [f"{n}:{i}" for i in range(10)], days_ago=8 + n) for n in range(5)]
    recent = finished_job(team, ["recent"], days_ago=6)
    running = finished_job(team, ["running"], days_ago=30, status="building")
    failed = finished_job(team, ["failed"], days_ago=30, status="failed")

    # Oldest first: the failed job (30 days), then old[4] (12 days) ...
    assert log_archive.archive_due(max_jobs=2) == (2, 11)
    assert set(BuildLogArchive.objects.values_list("job_id", flat=True)) == {failed.id, old[4].id}
    assert log_archive.archive_due(max_lines=15) == (2, 20)  # stops once 15 moved; never splits a job
    assert BuildLogArchive.objects.filter(job__in=old[2:4]).count() == 2
    assert log_archive.archive_due() == (2, 20)
    assert log_archive.archive_due() == (0, 0)  # nothing left: a second run changes nothing
    assert set(BuildLogLine.objects.values_list("job_id", flat=True)) == {recent.id, running.id}
    # Archiving an archived job again neither writes an object nor changes the row.
    objects = _stored_objects()
    row = BuildLogArchive.objects.get(job=old[0])
    assert log_archive.archive_job(old[0].id) is None
    assert _stored_objects() == objects
    assert BuildLogArchive.objects.get(job=old[0]).name == row.name
    assert log_archive.archive_job(running.id) is None
    assert log_archive.orphans() == []
    assert BuildJob.objects.count() == 8  # job rows stay


def test_a_run_that_died_before_its_transaction_leaves_only_an_orphan(team):
    job = finished_job(team, ["a"])
    left = log_archive.store().save(f"{job.id[:2]}/{job.id}-deadbeef.jsonl.gz", _gz(b'[1, "a"]\n'))
    assert log_archive.orphans() == [left]
    archive = log_archive.archive_job(job.id)
    assert archive.name != left
    assert read_lines(job.id, 0, max_lines=10, max_bytes=100) == ([(1, "a")], False)


def _age(log_store, name: str, hours: float) -> None:
    """Backdates an object's last write, as time passing would."""
    then = (timezone.now() - timedelta(hours=hours)).timestamp()
    os.utime(log_store / name, (then, then))


def test_orphans_past_the_grace_are_deleted_and_young_ones_and_a_jobs_own_kept(team, log_store, settings):
    settings.GENERATOR_LOG_ORPHAN_GRACE_HOURS = 1
    kept, deleted, pruned = (finished_job(team, [f"{n}"]) for n in range(3))
    own = log_archive.archive_job(kept.id).name
    deleted_name = log_archive.archive_job(deleted.id).name
    pruned_name = log_archive.archive_job(pruned.id).name
    BuildJob.objects.filter(pk__in=[deleted.pk, pruned.pk]).delete()  # in admin, or by job retention
    for name in (own, pruned_name):
        _age(log_store, name, hours=3)
    _age(log_store, deleted_name, hours=0.5)  # young: could be a run about to commit

    assert sorted(log_archive.orphans()) == sorted([deleted_name, pruned_name])
    assert log_archive.prune_orphans() == 1
    assert _stored_objects() == {own, deleted_name}
    assert read_lines(kept.id, 0, max_lines=10, max_bytes=100) == ([(1, "0")], False)
    # An hour on, the young one is an orphan past the grace too; the job's own never is.
    assert log_archive.prune_orphans(now=timezone.now() + timedelta(hours=1)) == 1
    assert _stored_objects() == {own}
    assert log_archive.prune_orphans(now=timezone.now() + timedelta(days=365)) == 0


class Killed(BaseException):
    """The archive run's process dying: nothing of it runs after this."""


def test_a_crashed_runs_leftovers_are_deleted_past_the_grace_and_its_job_archived_again(team, log_store, monkeypatch):
    job = finished_job(team, ["a", "b"])

    def die(**fields):
        raise Killed

    # A run that wrote its object and died before its transaction ...
    with monkeypatch.context() as patch:
        patch.setattr(BuildLogArchive.objects, "create", die)
        with pytest.raises(Killed):
            log_archive.archive_job(job.id)
    (whole,) = _stored_objects()
    # ... one killed while writing (a cut-short object), and a stray temporary file.
    cut = log_archive.store().save(f"{job.id[:2]}/{job.id}-0badc0de.jsonl.gz", _gz(b'[1, "a"]\n'[:5]))
    stray = log_archive.store().save("tmpk2x9q1.upload", _gz(b""))
    assert sorted(log_archive.orphans()) == sorted([whole, cut, stray])

    assert log_archive.prune_orphans() == 0  # all younger than the grace
    for name in (whole, cut, stray):
        _age(log_store, name, hours=2)
    assert log_archive.prune_orphans() == 3
    assert _stored_objects() == set() and not (log_store / stray).exists()
    # The job's lines never left the table; the next run archives them.
    assert log_archive.archive_due() == (1, 2)
    assert log_archive.orphans() == []
    assert read_lines(job.id, 0, max_lines=10, max_bytes=100) == ([(1, "a"), (2, "b")], False)


def test_beat_prunes_the_log_store(team, log_store, settings):
    schedule = {entry["task"]: entry for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert schedule["farm.prune_log_store"]["schedule"] == 3600
    job = finished_job(team, ["a"])
    name = log_archive.archive_job(job.id).name
    job.delete()
    _age(log_store, name, hours=2)
    tasks.prune_log_store()
    assert _stored_objects() == set()


def _gz(data: bytes):
    from django.core.files.base import ContentFile

    return ContentFile(gzip.compress(data))


def _stored_objects() -> set[str]:
    store = log_archive.store()
    return {f"{d}/{f}" for d in store.listdir("")[0] for f in store.listdir(d)[1]}


@pytest.mark.django_db(transaction=True)
async def test_a_late_websocket_viewer_gets_the_archived_lines_then_the_end(team, reader):
    job = await database_sync_to_async(finished_job)(team, numbered(4500), status="failed")
    await database_sync_to_async(BuildJob.objects.filter(pk=job.pk).update)(error="boom")

    async def replay() -> list[dict]:
        ws = communicator(job.id, reader.api_token)
        connected, _ = await ws.connect()
        assert connected
        frames = []
        while True:
            frame = await ws.receive_json_from(timeout=10)
            frames.append(frame)
            if frame["type"] == "end":
                break
        assert (await ws.receive_output())["type"] == "websocket.close"
        await ws.disconnect()
        return frames

    stored = await database_sync_to_async(
        lambda: list(BuildLogLine.objects.filter(job=job).values_list("seq", "text"))
    )()
    before = await replay()
    assert await database_sync_to_async(log_archive.archive_due)() == (1, 4507)
    log_archive._cache.clear()
    after = await replay()
    after_from_cache = await replay()
    lines = [(line["seq"], line["text"]) for frame in after if frame["type"] == "log" for line in frame["lines"]]
    assert lines == stored and len(stored) == 4507
    assert after[-1] == {
        "type": "end",
        "status": "failed",
        "error": "boom",
        "image_id": "",
        "digest": "",
        "lines": 4507,
    }
    assert after == before == after_from_cache


def test_an_orphan_grace_shorter_than_an_archive_run_may_take_stops_start_up():
    from tests.generator_site.test_settings import settings_with

    with pytest.raises(AssertionError, match="ImproperlyConfigured: GENERATOR_LOG_ORPHAN_GRACE_HOURS must be at least"):
        settings_with(GENERATOR_SECRET_KEY="k", GENERATOR_LOG_ORPHAN_GRACE_HOURS="0.01")
    assert settings_with(GENERATOR_SECRET_KEY="k", GENERATOR_LOG_ORPHAN_GRACE_HOURS="0.25")["DEBUG"] is False
