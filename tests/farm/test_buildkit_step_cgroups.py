"""Issue 24, part 1: two BuildKit builds at once on one daemon, each held to its
own limits. BuildKit 0.8 takes no cgroup per build; the worker marks its build's
RUN steps (NO_PROXY, out of BuildKit's cache keys) and the daemon's runc
(scripts/buildkit-runc/runc, first on dockerd's PATH) starts each marked step in
the build's own cgroup; the daemon's shared BuildKit cgroup (2 x the limits)
holds whatever is unmarked.

First driven from this process with the worker's own pieces (containment.contained,
the BuildKit session), on a farm daemon; then through the farm itself
(GENERATOR_BUILDKIT_SHARED_DAEMONS, on by default: without it the dispatcher
gives a BuildKit build its daemon to itself)."""

from __future__ import annotations

import io
import re
import threading
import time
import uuid

import pytest

from builds.engine.buildkit import BuildKitRequest, BuildKitSession
from builds.engine.cgroups import daemon_cgroup
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
BESIDE = (
    "FROM busybox\nRUN echo {nonce} && grep -E ':(memory|pids):' /proc/self/cgroup"
    " && sleep 4 && head -c 40000000 /dev/zero | wc -c\n"
)


def buildkit_build(farm, daemon, name: str, dockerfile: str, outcome: dict) -> None:
    """One BuildKit build under contained(), as the runner makes it; its outcome and times."""
    started = time.monotonic()
    lines: list[str] = []
    try:
        job_id = outcome[f"{name}_job"] = uuid.uuid4().hex
        with contained(daemon.name, job_id, 1, LIMITS, builder="buildkit", share=2) as containment:
            assert containment.step_marker and "started in the build's own cgroup" in containment.summary
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
    # Held at its own limit: the daemon's runc (scripts/buildkit-runc/runc) starts each of its steps in
    # the build's own cgroup, so no fork loop or allocation outruns a move to it.
    assert kind == "failed" and message.startswith(reason), message
    assert "shared with" not in message  # its own cgroup's figure, not the daemon's
    kind, image, b_start, b_end, lines = outcome["beside"]
    assert kind == "built" and image.startswith("sha256:"), image
    # The step's very first process was already there, in each hierarchy (without the daemon's
    # runc it starts in <daemon>/buildkit/<step>, and a moment later the claimer moves it).
    own = f"{daemon_cgroup(daemon.name)}/{outcome['beside_job']}-1/"
    born = [line for line in lines if re.search(r" \d+:(memory|pids):/", line)]
    assert len(born) == 2 and all(own in line for line in born), born
    # 40 MB through a pipe within its own 64 MiB, while the attacker ran out of its own.
    assert any(line.endswith(" 40000000") for line in lines), lines[-10:]
    assert a_start < b_end and b_start < a_end  # at once on the one daemon


@pytest.fixture
def shared_daemon(farm, farm_pool):
    """Only the first daemon takes builds (BuildKit builds share it, as by
    default), at 64 MiB and 64 processes a build; all put back after."""
    first, *others = farm_pool
    DockerDaemon.objects.filter(pk=first.pk).update(build_memory_mb=64, build_pids=64)
    DockerDaemon.objects.filter(pk__in=[d.pk for d in others]).update(enabled=False)
    yield first
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
    assert "each RUN step started in the build's own cgroup" in "\n".join(logs["hog"])
    assert hog.daemon_id == beside.daemon_id == shared_daemon.pk
    assert hog.started_at < beside.finished_at and beside.started_at < hog.finished_at  # at once
