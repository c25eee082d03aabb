"""Fair share: one team's 200 waiting builds against another team's one.

    .venv/bin/python bench/fair_share.py [--builds 200] [--slots 4] [--database URL]
    .venv/bin/python bench/fair_share.py --flood [--tries 20] [--long 4] [rig options]

With `--flood`, on a real farm (bench/rig.py: a private one by default, over
HTTP only, the farm's defaults): team "flood" submits `--long` BuildKit builds
of `RUN sleep 3000` (each takes its daemon to itself, so 2 fill the default
farm's two daemons and the rest wait), then team "other" submits one small
build at a time, `--tries` times, each after the previous ended. Printed: how
long each small build waited, from its submit to its worker's claim (the
job's created_at and started_at, the farm's own clock), their median, p95 and
maximum, and how many times the flood's builds were put back in the queue by
the fair share (builds/jobs/preemption.py). The flood is cancelled at the end.

Team A submits `--builds` builds, then team B submits one. How many of A's
builds start after B's was submitted and before B's starts? Under the fair
share (builds/jobs/dispatch.py) the answer should be 0: B's build takes the next
free slot. Under the old oldest-first policy it was every A build still waiting
when B's came (printed for comparison: that figure is counted, not run).

What runs is the farm's own code: every build is submitted through
builds/services.submit (ownership, the team limits, the audit log) by a user of
each team, and dispatched by the real dispatcher (builds/jobs/dispatch.py) on a real
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


def flood(args: argparse.Namespace) -> None:
    """The real farm's figure: another team's small build against a flood (see the module's doc)."""
    import secrets

    from bench import rig

    with rig.farm_from(args) as farm:
        machine = rig.machine_note()
        clients = {slug: team_client(farm, slug) for slug in ("flood", "other")}
        run = secrets.token_hex(3)
        for n in range(args.long):
            body = {"image": f"{farm.registry}/flood/long:{run}-{n}", "builder": "buildkit",
                    "dockerfile": f"FROM busybox\nRUN echo {run}-{n} && sleep 3000\n"}  # fmt: skip
            clients["flood"].ok("POST", "/api/v1/builds/", body)
        prefix = f"{farm.registry}/flood/long:{run}"
        deadline = time.monotonic() + 120
        while farm.count(prefix, "building") < len(farm.daemons()) and time.monotonic() < deadline:
            time.sleep(0.5)
        rig.say(f"the flood: {farm.count(prefix, 'building')} building, {farm.count(prefix, 'queued')} waiting")
        waits = []
        try:
            for number in range(args.tries):
                body = {"image": f"{farm.registry}/other/small:{run}-{number}",
                        "dockerfile": f"FROM busybox\nRUN echo {run}-{number}\n"}  # fmt: skip
                job = clients["other"].ok("POST", "/api/v1/builds/", body)
                while (job := clients["other"].ok("GET", f"/api/v1/builds/{job['id']}/"))["status"] not in (
                    "succeeded", "failed", "cancelled",
                ):  # fmt: skip
                    time.sleep(0.2)
                if job["status"] != "succeeded" or not job["started_at"]:
                    raise SystemExit(f"the small build {job['id']} ended {job['status']}: {job.get('error')}")
                waits.append((_time(job["started_at"]) - _time(job["created_at"])).total_seconds())
                rig.say(f"try {number + 1}: waited {waits[-1]:.1f} s")
        finally:
            long_jobs = farm.jobs(prefix)
            requeued = sum(job["attempt"] - 1 for job in long_jobs)
            for job in long_jobs:
                if job["status"] in ("queued", "building", "pushing"):
                    farm.call("POST", f"/api/v1/builds/{job['id']}/cancel/")
        print(f"farm: {len(farm.daemons())} daemons; the flood: {args.long} BuildKit builds of RUN sleep 3000")
        print(f"another team's small build, {len(waits)} tries one after another, submit to start:")
        p95 = rig.percentile(waits, 0.95)
        print(f"  median {statistics.median(waits):.1f} s, p95 {p95:.1f} s, max {max(waits):.1f} s")
        print(f"the flood's builds put back in the queue by the fair share: {requeued} times")
        print(machine)


def team_client(farm, slug: str):
    """A team of its own name owning FARM_REGISTRY/SLUG/, and the farm as its token sees it."""
    from bench import rig

    if farm.call("GET", f"/api/v1/teams/{slug}/")[0] == 404:
        farm.ok("POST", "/api/v1/teams/", {"slug": slug, "name": slug})
        farm.ok("POST", "/api/v1/namespaces/", {"team": slug, "prefix": f"{farm.registry}/{slug}/"})
    key = farm.ok("POST", f"/api/v1/teams/{slug}/tokens/", {"name": "bench"})["token"]
    return rig.Farm(farm.web, key, farm.registry)


def _time(text: str):
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--builds", type=int, default=200, help="team A's builds (default 200)")
    parser.add_argument("--slots", type=int, default=4, help="the pool's slots (default 4)")
    parser.add_argument("--database", help="a DATABASE_URL (default: a fresh SQLite file)")
    parser.add_argument("--flood", action="store_true", help="the real farm's figure (see above)")
    parser.add_argument("--tries", type=int, default=20, help="--flood: the other team's builds (default 20)")
    parser.add_argument("--long", type=int, default=4, help="--flood: the flood's long builds (default 4)")
    from bench import rig

    rig.add_arguments(parser, daemons=2)
    args = parser.parse_args()
    if args.flood:
        flood(args)
        return
    setup(args.database)

    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    from builds.jobs import dispatch as dispatcher
    from builds.jobs import transitions
    from builds.jobs.services import BuildRequest, submit
    from builds.models import BuildJob, Registry
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
