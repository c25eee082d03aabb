"""Issue 24, part 1 (as far as it goes): two BuildKit builds at once on one daemon,
each held to its own limits. BuildKit 0.8 takes no cgroup per build; the worker
marks its build's RUN steps (NO_PROXY, out of BuildKit's cache keys) and moves
each into the build's own cgroup as it starts (builds/engine/cgroups.py, StepClaimer),
the daemon's shared BuildKit cgroup (2 x the limits) the backstop.

First driven from this process with the worker's own pieces (containment.contained,
the BuildKit session), on a farm daemon; then through the farm itself, its
processes restarted with GENERATOR_BUILDKIT_SHARED_DAEMONS=true (without it the
dispatcher gives a BuildKit build its daemon to itself)."""

from __future__ import annotations

import io
import threading
import time
import uuid

import pytest

from builds.engine.buildkit import BuildKitRequest, BuildKitSession
from builds.engine.docker import BuildFailed, dockerfile_context
from builds.jobs.limits import BuildLimits
from builds.models import BuildJob
from builds.worker.builders import buildkit_client, daemon_address
from builds.worker.containment import contained
from pool.models import DockerDaemon
from pool.tls import client_settings
from tests.farm.conftest import api_build, follow
from tests.farm.test_build_limits import FORKS, HOG

pytestmark = pytest.mark.farm

LIMITS = BuildLimits(memory_mb=64, cpus=1.0, pids=64)
BESIDE = "FROM busybox\nRUN echo {nonce} && sleep 4 && head -c 40000000 /dev/zero | wc -c\n"


def buildkit_build(farm, daemon, name: str, dockerfile: str, outcome: dict) -> None:
    """One BuildKit build under contained(), as the runner makes it; its outcome and times."""
    started = time.monotonic()
    lines: list[str] = []
    try:
        with contained(daemon.name, uuid.uuid4().hex, 1, LIMITS, builder="buildkit", share=2) as containment:
            assert containment.step_marker and "moved into the build's own cgroup" in containment.summary
            session = BuildKitSession(buildkit_client(), daemon_address(client_settings(daemon)))
            request = BuildKitRequest(tag=f"{farm.registry}/limits/two-{name}", step_marker=containment.step_marker)
            image = session.build(io.BytesIO(dockerfile_context(dockerfile)), request, on_line=lines.append)
        outcome[name] = ("built", image, started, time.monotonic(), lines)
    except BuildFailed as exc:
        outcome[name] = ("failed", str(exc), started, time.monotonic(), lines)


def at_once(farm, daemon, dockerfiles: dict[str, str]) -> dict:
    outcome: dict = {}
    threads = [
        threading.Thread(target=buildkit_build, args=(farm, daemon, name, dockerfile, outcome))
        for name, dockerfile in dockerfiles.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcome


@pytest.mark.parametrize(
    "attacker, reason",
    [
        (HOG, "the build ran out of memory: its limit is 64 MiB (RUN steps were killed); "),
        (FORKS, "the build reached its limit of 64 processes; "),
    ],
    ids=["memory", "processes"],
)
def test_two_buildkit_builds_on_one_daemon_are_each_held_to_their_own_limits(farm, farm_pool, attacker, reason):
    daemon = farm_pool[0]
    nonce = uuid.uuid4().hex
    outcome = at_once(farm, daemon, {"attacker": attacker, "beside": BESIDE.format(nonce=nonce)})

    kind, message, a_start, a_end, _ = outcome["attacker"]
    # Held at its own limit once the worker has moved its step; a step that forks or allocates within
    # the moment before the move meets the daemon's shared backstop instead (README says so; seen in
    # about one run in four here). Either way it fails, and the build beside it does not.
    backstop = "shared with the daemon's other BuildKit builds"
    assert kind == "failed" and (message.startswith(reason) or backstop in message), message
    kind, image, b_start, b_end, lines = outcome["beside"]
    assert kind == "built" and image.startswith("sha256:"), image
    # 40 MB through a pipe within its own 64 MiB, while the attacker ran out of its own.
    assert any(line.endswith(" 40000000") for line in lines), lines[-10:]
    assert a_start < b_end and b_start < a_end  # at once on the one daemon


@pytest.fixture
def shared_daemon(farm, farm_pool):
    """The farm's processes with BuildKit builds sharing a daemon; only the first
    daemon takes builds, at 64 MiB and 64 processes a build; all put back after."""
    first, *others = farm_pool
    DockerDaemon.objects.filter(pk=first.pk).update(build_memory_mb=64, build_pids=64)
    DockerDaemon.objects.filter(pk__in=[d.pk for d in others]).update(enabled=False)
    farm.restart_with(GENERATOR_BUILDKIT_SHARED_DAEMONS="true")
    yield first
    farm.restart_with(GENERATOR_BUILDKIT_SHARED_DAEMONS="")
    DockerDaemon.objects.filter(pk=first.pk).update(build_memory_mb=first.build_memory_mb, build_pids=first.build_pids)
    DockerDaemon.objects.filter(pk__in=[d.pk for d in others]).update(enabled=True)


def test_through_the_farm_two_buildkit_builds_share_a_daemon_each_under_its_own_limits(farm, token, shared_daemon):
    nonce = uuid.uuid4().hex
    dockerfiles = {"hog": HOG, "beside": BESIDE.format(nonce=nonce)}
    submitted = {
        name: api_build(
            farm, token, {"image": f"{farm.registry}/limits/shared-{name}", "dockerfile": df, "builder": "buildkit"}
        )
        for name, df in dockerfiles.items()
    }
    logs = {name: [text for _, text in follow(farm, job_id, token).lines] for name, job_id in submitted.items()}
    hog, beside = (BuildJob.objects.get(pk=submitted[name]) for name in ("hog", "beside"))

    assert hog.status == "failed"
    assert hog.error.startswith("the build ran out of memory: its limit is 64 MiB (RUN steps were killed); "), hog.error
    assert beside.status == "succeeded", beside.error
    assert any(line.endswith(" 40000000") for line in logs["beside"]), logs["beside"][-10:]
    assert "moved into the build's own cgroup as it starts" in "\n".join(logs["hog"])
    assert hog.daemon_id == beside.daemon_id == shared_daemon.pk
    assert hog.started_at < beside.finished_at and beside.started_at < hog.finished_at  # at once
