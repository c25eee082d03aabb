"""Beat's `farm.fire_schedules`: one build per due tick of each scheduled rule
(the schedule's rules are builds/triggers/schedules.py's, pure)."""

from __future__ import annotations

import logging
from datetime import datetime

from django.utils import timezone

from builds.jobs.services import SubmissionError, submit_scheduled_build
from builds.models import BuildJob, BuildRule
from builds.triggers.schedules import ScheduleError, delay_seconds, due_tick

logger = logging.getLogger(__name__)


def fire_due(now: datetime | None = None) -> int:
    """Builds every rule whose tick has come; answers how many builds started."""
    now = now or timezone.now()
    started = 0
    for rule in BuildRule.objects.exclude(schedule="").select_related("repository", "repository__team"):
        try:
            tick = due_tick(
                rule.schedule, rule.schedule_timezone, rule.schedule_fired_at, now,
                delay_seconds(rule.pk, rule.schedule_jitter),
            )  # fmt: skip
        except (ScheduleError, ValueError, KeyError) as exc:  # a row written around its checks
            logger.warning("the schedule of rule %s cannot be read: %s", rule.pk, exc)
            continue
        if tick is None:
            continue
        moved = BuildRule.objects.filter(pk=rule.pk, schedule_fired_at=rule.schedule_fired_at)
        if not moved.update(schedule_fired_at=tick):
            continue  # another run fired this tick
        running = BuildJob.objects.filter(schedule_rule=rule, status__in=BuildJob.ACTIVE).values_list("id", flat=True)
        if previous := running.first():
            logger.info("schedule of rule %s: tick %s skipped, build %s still under way", rule.pk, tick, previous)
            continue
        try:
            submit_scheduled_build(rule, tick)
        except SubmissionError as exc:
            logger.warning("schedule of rule %s: tick %s not built: %s", rule.pk, tick, exc)
            continue
        started += 1
    return started
