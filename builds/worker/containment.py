"""How the runner holds a build to its limits (builds/jobs/limits.py).

The kernel enforces them through a cgroup per build (builds/engine/cgroups.py),
and the daemon also gets the memory and CPU figures as per-container limits, a
second layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

from django.conf import settings

from builds.engine.cgroups import (
    BuildCgroup,
    SharedBuildKitCgroup,
    StepClaimer,
    buildkit_cgroup_name,
    cgroup_name,
    step_marker,
)
from builds.engine.docker import BuildFailed, DaemonUnavailable
from builds.jobs.limits import CPU_PERIOD_US, BuildLimits


@dataclass(frozen=True)
class Containment:
    """What the engine's build takes, and the line the build log gets about it."""

    engine_options: dict
    summary: str
    # BuildKit on a shared daemon: the mark its RUN steps carry (cgroups.StepClaimer).
    step_marker: str = ""


@contextmanager
def contained(
    daemon_name: str,
    job_id: str,
    attempt: int,
    limits: BuildLimits,
    *,
    network: str = "",
    builder: str = "classic",
    share: int = 1,
) -> Iterator[Containment]:
    """The build's cgroup for the time of the block, or only the daemon's
    per-container limits when GENERATOR_BUILD_CGROUPS is off.

    BuildKit takes no cgroup per build: its builds on a daemon share one, held
    to `share` (the daemon's capacity) times the build's figures (cgroups.py,
    SharedBuildKitCgroup); with a share of 1 that is the build's own limit.
    With more, the build gets its own cgroup too, and its RUN steps, marked
    (`Containment.step_marker`), are moved into it as they start (StepClaimer).

    A BuildFailed raised in the block leaves it with the limit it hit, if the
    cgroup says one was, in front of the daemon's message.
    """
    buildkit = builder == "buildkit"
    cgroup = _cgroup(daemon_name, job_id, attempt, limits, buildkit=buildkit, share=share)
    # BuildKit beside other builds: the build's own cgroup too, its steps moved into it.
    own = _cgroup(daemon_name, job_id, attempt, limits, buildkit=False) if cgroup and buildkit and share > 1 else None
    marker = step_marker(job_id, attempt) if own else ""
    summary = limits.describe(processes=cgroup is not None)
    if cgroup is None:
        summary += (
            ": not held (BuildKit takes no per-container limits and GENERATOR_BUILD_CGROUPS=false)"
            if buildkit
            else " per RUN step; no process limit (GENERATOR_BUILD_CGROUPS=false)"
        )
    elif own:
        summary += (
            f"; each RUN step started in the build's own cgroup, and BuildKit"
            f" holds this daemon's builds to {share} x these together"
        )
    no_network = network == "none"
    if no_network:
        summary += "; no network"
    options = {
        "cgroup_parent": cgroup.name if cgroup and not buildkit else None,
        "memory_bytes": limits.memory_bytes,
        "cpu_period_us": CPU_PERIOD_US,
        "cpu_quota_us": limits.cpu_quota_us,
        "network_mode": "none" if no_network else None,
    }
    with (
        cgroup or nullcontext(),
        own or nullcontext(),
        StepClaimer(settings.GENERATOR_CGROUP_ROOT, cgroup.name, own, marker) if own else nullcontext(),
    ):
        try:
            yield Containment(engine_options=options, summary=f"Limits: {summary}", step_marker=marker)
        except BuildFailed as exc:
            why = (own and own.explain(exc.exit_code)) or (cgroup and cgroup.explain(exc.exit_code))
            if why:
                raise BuildFailed(f"{why}; {exc}", exit_code=exc.exit_code) from exc
            raise
        except DaemonUnavailable:
            # A daemon that died leaves its RUN steps running, unowned. (A cgroup
            # that BuildKit builds share holds others' steps too: left alone.)
            if own or (cgroup and share == 1):
                (own or cgroup).kill_processes()
            raise


def _cgroup(daemon_name, job_id, attempt, limits: BuildLimits, *, buildkit: bool, share: int = 1) -> BuildCgroup | None:
    if not settings.GENERATOR_BUILD_CGROUPS:
        return None
    if not buildkit:
        return BuildCgroup(
            settings.GENERATOR_CGROUP_ROOT,
            cgroup_name(daemon_name, job_id, attempt),
            memory_bytes=limits.memory_bytes,
            cpu_period_us=CPU_PERIOD_US,
            cpu_quota_us=limits.cpu_quota_us,
            pids=limits.pids,
        )
    name = buildkit_cgroup_name(daemon_name)
    return SharedBuildKitCgroup(
        settings.GENERATOR_CGROUP_ROOT,
        name,
        lock_file=settings.VAR_DIR / "locks" / f"{name.strip('/').replace('/', '.')}.lock",
        share=share,
        memory_bytes=limits.memory_bytes * share,
        cpu_period_us=CPU_PERIOD_US,
        cpu_quota_us=limits.cpu_quota_us * share,
        pids=limits.pids * share,
    )
