"""Fair share: one team's 200 waiting builds against another team's one.

    .venv/bin/python bench/fair_share.py [--builds 200] [--slots 4] [--database URL]

Team A submits `--builds` builds, then team B submits one. How many of A's
builds start after B's was submitted and before B's starts? Under the fair
share (builds/dispatch.py) the answer should be 0: B's build takes the next
free slot. Under the old oldest-first policy it was every A build still waiting
when B's came (printed for comparison: that figure is counted, not run).

What runs is the farm's own code: every build is submitted through
builds/services.submit (ownership, the team limits, the audit log) by a user of
each team, and dispatched by the real dispatcher (builds/dispatch.py) on a real
database: a fresh SQLite file by default, or `--database` (a PostgreSQL URL: its
advisory lock and Redis ask counter then take part; give REDIS_URL too). There
are no Docker daemons and no workers: one pool row with `--slots` slots, and
each "turn" ends the oldest running build (claimed and ended by the
compare-and-swap transitions a worker uses) and calls dispatch(), as a worker does after every build. The
Celery messages go to an in-memory broker. That measures the policy honestly
(which job gets the freed slot); it does not measure build times.

Also printed: the queue position B's build was shown right after its submit
(BuildJob.queue_position), and how long a dispatch pass takes with the queue
full (the median of the passes made).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup(database: str | None) -> None:
    folder = tempfile.mkdtemp(prefix="fair-share-")
    os.environ.setdefault("GENERATOR_SECRET_KEY", "bench-only")
    os.environ["DATABASE_URL"] = database or f"sqlite:///{folder}/bench.sqlite3"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "generator_site.settings")
    import django

    django.setup()
    from django.core.management import call_command

    from generator_site.celery import app

    app.conf.broker_url = "memory://"  # no worker consumes the dispatched builds
    call_command("migrate", verbosity=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--builds", type=int, default=200, help="team A's builds (default 200)")
    parser.add_argument("--slots", type=int, default=4, help="the pool's slots (default 4)")
    parser.add_argument("--database", help="a DATABASE_URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    setup(args.database)

    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    from builds import dispatch as dispatcher
    from builds import transitions
    from builds.models import BuildJob, Registry
    from builds.services import BuildRequest, submit
    from pool.models import DockerDaemon
    from teams.models import Membership, Namespace, Team

    settings.GENERATOR_MAX_BUILDS_PER_IMAGE = 0  # the per-image limit is another policy
    Registry.objects.get_or_create(host="localhost:5000")
    DockerDaemon.objects.create(name="bench", url="unix:///nonexistent.sock", capacity=args.slots)
    users = {}
    for slug in ("team-a", "team-b"):
        team = Team.objects.create(slug=slug, name=slug)
        Namespace.objects.create(team=team, prefix=f"localhost:5000/{slug}/")
        user = get_user_model().objects.create(username=f"user-{slug}")
        user.user_permissions.add(Permission.objects.get(codename="add_buildjob"))
        Membership.objects.create(team=team, user=user)
        users[slug] = user

    passes: list[float] = []

    def timed_dispatch() -> None:
        started = time.perf_counter()
        dispatcher.dispatch()
        passes.append(time.perf_counter() - started)

    def build(slug: str, number: int) -> BuildJob:
        request = BuildRequest(
            image=f"localhost:5000/{slug}/app:{number}", dockerfile=f"FROM busybox\nRUN echo {number}\n",
            builder="classic",  # BuildKit would take a whole daemon per build
        )  # fmt: skip
        return submit(request, submitted_by=users[slug])  # dispatches on commit

    a_jobs = [build("team-a", n) for n in range(args.builds)]
    running_at_b = BuildJob.objects.filter(team__slug="team-a", daemon__isnull=False).count()
    waiting_at_b = args.builds - running_at_b
    b_job = build("team-b", 0)
    shown = BuildJob.objects.get(pk=b_job.pk).queue_position()
    b_submitted = time.monotonic()

    turns = 0
    while BuildJob.objects.get(pk=b_job.pk).daemon_id is None and turns < args.builds:
        # One slot's turn: the oldest running build ends, and the dispatcher runs.
        oldest = BuildJob.objects.filter(daemon__isnull=False, status="queued").order_by("dispatched_at").first()
        transitions.claim(oldest.id, 1, oldest.daemon_id, "bench", 60)
        transitions.fail(oldest.id, 1, "bench: the build's turn is over")
        turns += 1
        timed_dispatch()
    b_started = BuildJob.objects.get(pk=b_job.pk)
    for _ in range(20):  # more turns, for the pass's time with the queue still long
        oldest = BuildJob.objects.filter(daemon__isnull=False, status="queued").order_by("dispatched_at").first()
        transitions.claim(oldest.id, 1, oldest.daemon_id, "bench", 60)
        transitions.fail(oldest.id, 1, "bench: the build's turn is over")
        timed_dispatch()
    a_ahead = BuildJob.objects.filter(
        pk__in=[j.pk for j in a_jobs], dispatched_at__gt=b_job.created_at, dispatched_at__lt=b_started.dispatched_at
    ).count() if b_started.dispatched_at else None  # fmt: skip

    print(f"pool: {args.slots} slots; team A submitted {args.builds} builds, then team B one")
    print(f"when B submitted: A had {running_at_b} running and {waiting_at_b} waiting")
    print(f"B's queue position shown right after its submit: {shown}")
    if b_started.dispatched_at is None:
        print(f"B's build had not started after {turns} slot turns")
    else:
        print(f"B's build started at slot turn {turns} (0: at its own submit)")
        print(f"A's builds started after B's submit and before B's start: {a_ahead}")
    print(f"oldest first (the policy before), counted: {waiting_at_b} of A's builds would have gone before it")
    if passes:
        print(f"dispatch pass with {waiting_at_b} waiting: median {statistics.median(passes) * 1000:.1f} ms "
              f"over {len(passes)} passes")  # fmt: skip
    print(f"database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}; "
          f"{time.monotonic() - b_submitted:.2f} s from B's submit to the end")  # fmt: skip


if __name__ == "__main__":
    main()
