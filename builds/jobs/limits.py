"""What one build may use.

Each daemon has defaults (memory, CPUs, processes per build); a repository may
ask for other figures, up to the operator's caps (settings). The runner holds a
build to them (builds/worker/containment.py). No models, no engine: the models
validate a repository's figures here.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

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
    """BuildKit takes no cgroup per build (builds/engine/cgroups.py,
    SharedBuildKitCgroup): a daemon's BuildKit builds share one. Where the daemon
    runs the farm's runc (GENERATOR_BUILDKIT_SHARED_DAEMONS, the default), each
    build's RUN steps start in its own cgroup (scripts/buildkit-runc/runc;
    cgroups.StepClaimer moves any that did not), the shared one, at capacity x
    their limits, the backstop. Otherwise a BuildKit build has its daemon to
    itself, so that the shared cgroup's limits are its own."""
    return builder == "buildkit" and not settings.GENERATOR_BUILDKIT_SHARED_DAEMONS


def buildkit_share(builder: str, capacity: int) -> int:
    """How many builds the daemon's BuildKit cgroup holds at once."""
    return 1 if builder != "buildkit" or needs_whole_daemon(builder) else capacity


def builds_at_once(capacity: int) -> dict[str, int]:
    """How many builds of each builder the farm runs a daemon of `capacity` takes
    at once (the dispatcher's reckoning: dispatch.slots_in_use)."""
    return {builder: 1 if needs_whole_daemon(builder) else capacity for builder in settings.GENERATOR_BUILDERS}
