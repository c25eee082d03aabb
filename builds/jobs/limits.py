"""What one build may use, and how the runner holds it to that.

Each daemon has defaults (memory, CPUs, processes per build); a repository may
ask for other figures, up to the operator's caps (settings). The kernel enforces
them through a cgroup per build (cgroups.py), and the daemon also gets the
memory and CPU figures as per-container limits, a second layer.
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

CPU_PERIOD_US = 100_000
# The kernel refuses a CFS quota under 1 ms.
_MIN_CPU_QUOTA_US = 1_000


@dataclass(frozen=True)
class BuildLimits:
    memory_mb: int
    cpus: float
    pids: int

    @property
    def memory_bytes(self) -> int:
        return self.memory_mb * 2**20

    @property
    def cpu_quota_us(self) -> int:
        return max(round(self.cpus * CPU_PERIOD_US), _MIN_CPU_QUOTA_US)

    def describe(self, *, processes: bool = True) -> str:
        cpus = f"{self.cpus:g} CPU" + ("s" if self.cpus > 1 else "")
        return f"{self.memory_mb} MiB memory, {cpus}" + (f", {self.pids} processes" if processes else "")


# A repository field, the setting that caps it, and the unit its message names.
_CAPS = {
    "build_memory_mb": ("GENERATOR_BUILD_MEMORY_MAX_MB", "MiB"),
    "build_cpus": ("GENERATOR_BUILD_CPUS_MAX", "CPUs"),
    "build_pids": ("GENERATOR_BUILD_PIDS_MAX", "processes"),
}


def limits_for(daemon, repository=None) -> BuildLimits:
    """The daemon's defaults, where the repository (if any) sets nothing; the
    repository's figures capped by the operator's otherwise (a cap lowered after
    a repository was saved still holds)."""

    def pick(field: str):
        wanted = getattr(repository, field, None)
        if wanted is None:
            return getattr(daemon, field)
        return min(wanted, getattr(settings, _CAPS[field][0]))

    return BuildLimits(memory_mb=pick("build_memory_mb"), cpus=pick("build_cpus"), pids=pick("build_pids"))


def over_the_caps(repository) -> dict[str, str]:
    """A message per repository override above the operator's cap."""
    errors = {}
    for field, (setting, unit) in _CAPS.items():
        wanted, cap = getattr(repository, field, None), getattr(settings, setting)
        if wanted is not None and wanted > cap:
            errors[field] = f"at most {cap:g} {unit}: the farm's cap ({setting})"
    return errors


def caps_help() -> dict[str, str]:
    """Help for a repository's override fields, naming the caps in force."""
    return {
        field: f"Empty: the daemon's default. At most {getattr(settings, setting):g} {unit} ({setting})."
        for field, (setting, unit) in _CAPS.items()
    }


def needs_whole_daemon(builder: str) -> bool:
    """BuildKit takes no cgroup per build (cgroups.py, SharedBuildKitCgroup): a
    daemon's BuildKit builds share one. So that a build's limits are its own, a
    BuildKit build has its daemon to itself, unless the operator lets a daemon's
    BuildKit builds share it (GENERATOR_BUILDKIT_SHARED_DAEMONS): each then has
    its steps moved into its own cgroup (cgroups.StepClaimer), the shared one,
    at capacity x their limits, the backstop."""
    return builder == "buildkit" and not settings.GENERATOR_BUILDKIT_SHARED_DAEMONS


def buildkit_share(builder: str, capacity: int) -> int:
    """How many builds the daemon's BuildKit cgroup holds at once."""
    return 1 if builder != "buildkit" or needs_whole_daemon(builder) else capacity


def builds_at_once(capacity: int) -> dict[str, int]:
    """How many builds of each builder the farm runs a daemon of `capacity` takes
    at once (the dispatcher's reckoning: dispatch.slots_in_use)."""
    return {builder: 1 if needs_whole_daemon(builder) else capacity for builder in settings.GENERATOR_BUILDERS}


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
    marker = step_marker() if own else ""
    summary = limits.describe(processes=cgroup is not None)
    if cgroup is None:
        summary += (
            ": not held (BuildKit takes no per-container limits and GENERATOR_BUILD_CGROUPS=false)"
            if buildkit
            else " per RUN step; no process limit (GENERATOR_BUILD_CGROUPS=false)"
        )
    elif own:
        summary += (
            f"; each RUN step moved into the build's own cgroup as it starts, and BuildKit"
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
