"""Scheduled builds: cron ticks in a time zone, a fixed jitter per rule, one build
per tick whatever restarts, never two at once for one rule, and the checks that
refuse a schedule the farm could not keep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from builds.models import BuildJob, BuildRule
from builds.triggers import schedule_firing
from builds.triggers.schedules import ScheduleError, check, delay_seconds, due_tick
from tests.builds.github.test_webhooks import register


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_the_newest_tick_after_the_last_fired_one_is_due():
    fired = at("2026-12-05T03:00:00")
    assert due_tick("0 3 * * *", "UTC", fired, at("2026-12-06T02:59:59"), 0) is None
    assert due_tick("0 3 * * *", "UTC", fired, at("2026-12-06T03:00:00"), 0) == at("2026-12-06T03:00:00")
    # Ticks missed while the farm was down: the newest fires, once.
    assert due_tick("0 3 * * *", "UTC", fired, at("2026-12-09T12:00:00"), 0) == at("2026-12-09T03:00:00")


def test_a_tick_is_in_its_time_zone_across_daylight_saving():
    # 03:00 in Berlin is 02:00 UTC in winter and 01:00 UTC from 29 March 2026 (summer time).
    def berlin(fired: str, now: str) -> datetime | None:
        return due_tick("0 3 * * *", "Europe/Berlin", at(fired), at(now), 0)

    assert berlin("2026-03-27T12:00:00", "2026-03-28T01:59:59") is None
    assert berlin("2026-03-27T12:00:00", "2026-03-28T02:00:00") == at("2026-03-28T02:00:00")
    assert berlin("2026-03-28T12:00:00", "2026-03-29T00:59:59") is None
    assert berlin("2026-03-28T12:00:00", "2026-03-29T01:00:00") == at("2026-03-29T01:00:00")


def test_jitter_is_a_fixed_delay_per_rule_that_spreads_many_rules():
    delays = [delay_seconds(rule_id, 300) for rule_id in range(1, 101)]
    assert all(0 <= d <= 300 for d in delays) and len(set(delays)) > 50
    assert delay_seconds(7, 300) == delay_seconds(7, 300)
    tick = at("2026-12-06T03:00:00")
    delay = delay_seconds(7, 300)
    assert due_tick("0 3 * * *", "UTC", tick - timedelta(days=1), tick + timedelta(seconds=delay - 1), delay) is None
    assert due_tick("0 3 * * *", "UTC", tick - timedelta(days=1), tick + timedelta(seconds=delay), delay) == tick


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"schedule": "0 3 * *"}, "five cron fields"),
        ({"schedule": "0 3 * * * *"}, "five cron fields"),
        ({"schedule": "61 3 * * *"}, "not a valid cron expression"),
        ({"schedule_timezone": "Mars/Olympus"}, "not a time zone"),
        ({"schedule_jitter": 7200}, "0 to 3600 seconds"),
        ({"source": "tag"}, "a tag rule cannot have one"),
        ({"source": "pull_request"}, "a pull request rule cannot have one"),
        ({"pattern": "/^release-.*$/"}, "name it, not a /regular expression/"),
        ({"tags": "sha-{short_sha}"}, "a tag template without {sha} or {short_sha}"),
    ],
)
def test_a_schedule_the_farm_could_not_keep_is_refused(fields, why):
    rule = {"source": "branch", "pattern": "main", "templates": "nightly", "schedule": "0 3 * * *"}
    rule.update({k: v for k, v in fields.items() if k in ("source", "pattern", "schedule")})
    rule["templates"] = fields.get("tags", rule["templates"])
    with pytest.raises(ScheduleError, match=why.replace("{", r"\{").replace("}", r"\}").replace("/", "/")):
        check(
            rule["schedule"], fields.get("schedule_timezone", "UTC"), fields.get("schedule_jitter", 60),
            source=rule["source"], pattern=rule["pattern"], templates=rule["templates"],
        )  # fmt: skip
    check("@daily", "Europe/Berlin", 0, source="branch", pattern="main", templates="nightly,sha-{short_sha}")


@pytest.fixture
def nightly(daemon, allowed_registry):
    repository = register("Codertocat/Hello-World")
    return BuildRule.objects.create(
        repository=repository, source="branch", pattern="master", tags="nightly,sha-{short_sha}",
        schedule="0 3 * * *", schedule_jitter=0, schedule_fired_at=at("2026-12-05T03:00:00"),
    )  # fmt: skip


def test_a_tick_builds_the_branch_once_whatever_runs_again(nightly):
    now = at("2026-12-06T03:00:30")
    assert schedule_firing.fire_due(now) == 1
    assert schedule_firing.fire_due(now) == 0  # a second run, or beat restarted: the tick is stored
    [job] = BuildJob.objects.all()
    assert (job.ref, job.commit_sha, job.schedule_rule) == ("refs/heads/master", "", nightly)
    assert job.image == "localhost:5000/codertocat/hello-world:nightly" and job.extra_tags == []
    nightly.refresh_from_db()
    assert nightly.schedule_fired_at == at("2026-12-06T03:00:00")
    event = AuditEvent.objects.get(action="submit")
    assert event.details["schedule"] == "0 3 * * *" and event.details["tick"] == "2026-12-06T03:00:00+00:00"


def test_a_run_that_read_the_rule_before_another_fired_it_builds_nothing(nightly):
    stale = nightly.schedule_fired_at
    BuildRule.objects.filter(pk=nightly.pk).update(schedule_fired_at=at("2026-12-06T03:00:00"))
    moved = BuildRule.objects.filter(pk=nightly.pk, schedule_fired_at=stale).update(schedule_fired_at=timezone.now())
    assert moved == 0  # the compare-and-swap fire_due makes


def test_never_two_at_once_for_one_rule(nightly):
    assert schedule_firing.fire_due(at("2026-12-06T03:00:30")) == 1
    assert schedule_firing.fire_due(at("2026-12-07T03:00:30")) == 0  # the first is still waiting: skipped
    BuildJob.objects.update(status="succeeded")
    assert schedule_firing.fire_due(at("2026-12-08T03:00:30")) == 1
    nightly.refresh_from_db()
    assert nightly.schedule_fired_at == at("2026-12-08T03:00:00")


def test_a_schedule_set_later_starts_from_then(nightly):
    nightly.schedule = "30 4 * * *"
    nightly.save()
    nightly.refresh_from_db()
    assert nightly.schedule_fired_at > timezone.now() - timedelta(minutes=1)


def test_the_api_takes_a_schedule_and_refuses_a_bad_one_with_a_400(client, operator, nightly):
    client.force_login(operator)
    url = f"/api/v1/repositories/{nightly.repository.pk}/"
    rule = {"source": "branch", "pattern": "main", "tags": "nightly", "schedule": "0 3 * * *"}
    for bad, why in [
        ({"schedule": "0 25 * * *"}, "not a valid cron expression"),
        ({"schedule_timezone": "Nowhere/Land"}, "not a time zone"),
    ]:
        response = client.patch(url, {"rules": [{**rule, **bad}]}, content_type="application/json")
        assert response.status_code == 400 and why in str(response.json())
    body = {"rules": [{**rule, "schedule_timezone": "Europe/Berlin", "schedule_jitter": 120}]}
    answered = client.patch(url, body, content_type="application/json").json()["rules"][0]
    assert (answered["schedule"], answered["schedule_timezone"], answered["schedule_jitter"]) == (
        "0 3 * * *", "Europe/Berlin", 120,
    )  # fmt: skip
    assert AuditEvent.objects.filter(action="change", kind="repository", details__fields=["rules"]).exists()
