"""Scheduled builds: a branch rule with a cron schedule builds that branch's head
at its times, through the same queue, fair share and limits as every build.

Cron expressions are read by croniter (five fields, or @daily and the like),
in the rule's time zone (zoneinfo), so 03:00 stays 03:00 across daylight
saving. Each rule starts its builds a fixed number of seconds after each tick,
up to its `schedule_jitter`, taken from its id: a hundred nightly rules spread
over that many seconds, and a rule's own delay never changes.

Beat runs `farm.fire_schedules` every GENERATOR_SCHEDULE_INTERVAL seconds on
the control worker (builds/triggers/schedule_firing.py). For each rule it finds the newest tick whose time (plus
the rule's delay) has come and is after `schedule_fired_at`, then:

1. moves `schedule_fired_at` from the value it read to that tick with one
   compare-and-swap UPDATE: of two runs at once (or a run after a restart that
   saw the same row) only one changes the row, and only it builds;
2. builds, unless the rule's previous scheduled build is still waiting or
   running (never two at once for one rule): that tick is then skipped, logged.

`schedule_fired_at` is stored, so a restarted beat neither fires a tick again
nor skips it: ticks missed while the farm was down fire once, as one build,
when it is back. A new schedule starts from the moment it was set.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from builds.triggers.rules import PULL_REQUEST, RuleError, as_tag, render

MAX_JITTER_SECONDS = 3600
_NEEDS_COMMIT = re.compile(r"\{(sha|short_sha)\}")


class ScheduleError(ValueError):
    pass


def check(expression: str, zone: str, jitter: int, *, source: str, pattern: str, templates: str) -> None:
    """Refuses a schedule the farm could not keep, naming why."""
    if not expression:
        return
    if source != "branch":
        what = "a pull request" if source == PULL_REQUEST else "a tag"
        raise ScheduleError(f"a schedule builds a branch's head: {what} rule cannot have one")
    if pattern.startswith("/") and pattern.endswith("/") and len(pattern) >= 2:
        raise ScheduleError("a schedule builds one branch: name it, not a /regular expression/")
    fields = expression.split()
    if not expression.startswith("@") and len(fields) != 5:
        raise ScheduleError(
            f"{expression!r}: five cron fields (minute hour day-of-month month day-of-week), e.g. '0 3 * * *'"
        )
    if not croniter.is_valid(expression):
        raise ScheduleError(f"{expression!r} is not a valid cron expression")
    zone_of(zone)
    if not 0 <= jitter <= MAX_JITTER_SECONDS:
        raise ScheduleError(f"schedule_jitter: 0 to {MAX_JITTER_SECONDS} seconds")
    if not scheduled_tags(templates, pattern):
        raise ScheduleError(
            "a scheduled build's commit is known only when it runs: give a tag template without {sha} or {short_sha}"
        )


def zone_of(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"{name!r} is not a time zone: an IANA name such as UTC or Europe/Berlin") from None


def scheduled_tags(templates: str, branch: str) -> list[str]:
    """The rule's tags for a scheduled build: those its templates give without a commit."""
    tags = []
    for template in templates.split(","):
        if _NEEDS_COMMIT.search(template):
            continue
        try:
            tag = as_tag(render(template.strip(), ref_name=branch, sha="", groups=()))
        except RuleError:
            continue
        if tag and tag not in tags:
            tags.append(tag)
    return tags


def delay_seconds(rule_id: int, jitter: int) -> int:
    """The rule's own fixed delay after each tick, 0..jitter."""
    digest = hashlib.sha256(f"schedule-jitter:{rule_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (jitter + 1)


def due_tick(expression: str, zone: str, fired_at: datetime, now: datetime, delay: int) -> datetime | None:
    """The newest tick after `fired_at` whose time plus `delay` is not after `now`, or None."""
    tz = zone_of(zone)
    latest = (now - timedelta(seconds=delay)).astimezone(tz)
    tick = croniter(expression, latest + timedelta(seconds=1)).get_prev(datetime)
    return tick if tick > fired_at else None
