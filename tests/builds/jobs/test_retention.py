"""Job rows' own retention: old finished jobs go with their lines and archived
logs, in bounded batches; an unfinished job never does."""

from __future__ import annotations

import pytest

from builds import tasks
from builds.jobs import retention as job_retention
from builds.logs import archive as log_archive
from builds.models import BuildJob, BuildLogArchive, BuildLogLine
from notifications.models import Delivery, Endpoint
from tests.builds.logs.test_archive import _stored_objects, finished_job, log_store  # noqa: F401 (a fixture)
from tests.generator_site.test_settings import settings_with


@pytest.fixture
def keep_30_days(settings):
    settings.GENERATOR_JOB_RETENTION_DAYS = 30
    return settings


def test_jobs_are_kept_forever_by_default(team, settings):
    assert settings.GENERATOR_JOB_RETENTION_DAYS == 0
    job = finished_job(team, ["a"], days_ago=3650)
    assert job_retention.prune_due() == 0
    assert BuildJob.objects.filter(pk=job.pk).exists() and BuildLogLine.objects.filter(job=job).count() == 1


def test_old_finished_jobs_go_with_their_lines_and_archived_logs(team, keep_30_days):
    in_table = finished_job(team, ["a", "b"], days_ago=40)
    archived = finished_job(team, ["c"], days_ago=31, status="failed")
    name = log_archive.archive_job(archived.id).name
    recent = finished_job(team, ["d"], days_ago=29, status="cancelled")
    endpoint = Endpoint.objects.create(name="e", url="https://hooks.example.invalid/x")
    delivery = Delivery.objects.create(endpoint=endpoint, job=in_table, event="succeeded", body="{}")

    assert job_retention.prune_due() == 2
    assert list(BuildJob.objects.all()) == [recent]
    assert set(BuildLogLine.objects.values_list("job_id", flat=True)) == {recent.id}
    assert not BuildLogArchive.objects.exists()
    assert name not in _stored_objects() and _stored_objects() == set()
    delivery.refresh_from_db()
    assert delivery.job_id is None  # the delivery's record stays, with no job
    assert job_retention.prune_due() == 0


def test_an_unfinished_job_is_never_pruned_however_old(team, keep_30_days):
    stuck = [finished_job(team, ["a"], days_ago=400, status=status) for status in ("queued", "building", "pushing")]
    assert job_retention.prune_due() == 0
    assert BuildJob.objects.filter(pk__in=[job.pk for job in stuck]).count() == 3


def test_a_parent_goes_with_its_children_and_not_while_one_is_under_way(team, keep_30_days):
    parent = finished_job(team, [], days_ago=40, status="failed")
    done = finished_job(team, ["amd64"], days_ago=40)
    pushing = finished_job(team, ["arm64"], days_ago=40, status="pushing")
    BuildJob.objects.filter(pk__in=[done.pk, pushing.pk]).update(parent=parent)

    assert job_retention.prune_due() == 0  # nor the finished child alone
    assert BuildJob.objects.count() == 3
    BuildJob.objects.filter(pk=pushing.pk).update(status="succeeded")
    assert job_retention.prune_due() == 3
    assert not BuildJob.objects.exists() and not BuildLogLine.objects.exists()


def test_each_run_prunes_a_bounded_batch_oldest_first(team, keep_30_days):
    jobs = [finished_job(team, [f"{n}:{i}" for i in range(10)], days_ago=40 + n) for n in range(5)]
    archived = finished_job(team, [f"x{i}" for i in range(100)], days_ago=35)
    log_archive.archive_job(archived.id)

    assert job_retention.prune_due(max_jobs=2) == 2
    assert not BuildJob.objects.filter(pk__in=[jobs[4].pk, jobs[3].pk]).exists()
    assert job_retention.prune_due(max_lines=5) == 1  # one job always goes, however many lines it has
    assert not BuildJob.objects.filter(pk=jobs[2].pk).exists()
    assert job_retention.prune_due(max_lines=15) == 1  # stops before passing 15 lines in the table
    assert list(BuildJob.objects.order_by("finished_at")) == [jobs[0], archived]
    # An archived log's lines are in the log store: they cost the table nothing.
    assert job_retention.prune_due(max_lines=15) == 2
    assert not BuildJob.objects.exists()


def test_beat_prunes_jobs(team, keep_30_days):
    schedule = {entry["task"]: entry for entry in keep_30_days.CELERY_BEAT_SCHEDULE.values()}
    assert schedule["farm.prune_jobs"]["schedule"] == 300
    finished_job(team, ["a"], days_ago=31)
    tasks.prune_jobs()
    assert not BuildJob.objects.exists()


def test_a_negative_retention_stops_start_up():
    # settings_with fails with the child's stderr: settings.py's ImproperlyConfigured.
    with pytest.raises(AssertionError, match="ImproperlyConfigured: GENERATOR_JOB_RETENTION_DAYS must be 0"):
        settings_with(GENERATOR_SECRET_KEY="k", GENERATOR_JOB_RETENTION_DAYS="-1")
    assert settings_with(GENERATOR_SECRET_KEY="k", GENERATOR_JOB_RETENTION_DAYS="0")["DEBUG"] is False
