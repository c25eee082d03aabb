"""Every build runs under memory, CPU and process limits (issue 12; docs/security.md,
"Resources"). A Dockerfile that allocates past its memory or forks past its process
limit fails that build with a reason naming the limit, while the daemon and the
builds beside it go on; a repository with network "none" builds with no network.
The kernel enforces all of it, through the cgroup the worker makes per build."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from builds.models import BuildJob, Repository
from pool.models import DockerDaemon
from tests.farm.conftest import api_build, engine, follow, printed
from tests.gitrepos import Repo

pytestmark = pytest.mark.farm

# 2^31 characters, if nothing stopped it: about 6 GiB, so bounded on this machine.
HOG = 'FROM busybox\nRUN awk "BEGIN{s=\\"x\\"; for(i=0;i<31;i++) s=s s; print length(s)}"\n'
# 2,000 sleeping processes, if nothing stopped it; they end with the step's container.
FORKS = "FROM busybox\nRUN for i in $(seq 1 2000); do sleep 10 & done; wait\n"
INTERFACES = "RUN echo \"{name} interfaces: $(ls /sys/class/net | tr '\\n' ' ')\"\n"  # a line per build: no cache


def normal(name: str) -> str:
    return "FROM busybox\nRUN echo built beside it > /ok.txt\n" + INTERFACES.format(name=name)


@pytest.fixture
def one_daemon_with_low_limits(farm_pool):
    """Only the first daemon takes builds, at 64 MiB and 64 processes a build:
    the builds of a test run side by side on it."""
    first, *others = farm_pool
    DockerDaemon.objects.filter(pk=first.pk).update(build_memory_mb=64, build_pids=64)
    DockerDaemon.objects.filter(pk__in=[d.pk for d in others]).update(enabled=False)
    yield first
    DockerDaemon.objects.filter(pk=first.pk).update(build_memory_mb=first.build_memory_mb, build_pids=first.build_pids)
    DockerDaemon.objects.filter(pk__in=[d.pk for d in others]).update(enabled=True)


def classic(farm, token, name: str, dockerfile: str) -> str:
    """A classic build: a cgroup per build, so builds share a daemon's slots."""
    return api_build(
        farm, token, {"image": f"{farm.registry}/limits/{name}", "dockerfile": dockerfile, "builder": "classic"}
    )


def build(farm, token, name: str, dockerfile: str) -> tuple[BuildJob, list[str]]:
    job_id = classic(farm, token, name, dockerfile)
    followed = follow(farm, job_id, token)
    return BuildJob.objects.select_related("daemon").get(pk=job_id), [text for _, text in followed.lines]


def cgroups_left(job: BuildJob) -> list[Path]:
    return list(Path("/sys/fs/cgroup").glob(f"*/generator/*/{job.id}-*"))


def test_a_memory_hog_and_a_fork_loop_fail_naming_their_limit_and_the_classic_builds_beside_them_succeed(
    farm, token, one_daemon_with_low_limits
):
    daemon = one_daemon_with_low_limits
    dockerfiles = {"hog": HOG, "beside-hog": normal("1"), "forks": FORKS, "beside-forks": normal("2")}
    submitted = {name: classic(farm, token, name, df) for name, df in dockerfiles.items()}
    logs = {name: [text for _, text in follow(farm, job_id, token).lines] for name, job_id in submitted.items()}
    jobs = {name: BuildJob.objects.get(pk=job_id) for name, job_id in submitted.items()}

    hog, forks = jobs["hog"], jobs["forks"]
    assert hog.status == "failed"
    assert hog.error.startswith("the build ran out of memory: its limit is 64 MiB (RUN steps were killed); The command")
    assert hog.error.endswith("returned a non-zero code: 137")
    assert f"[generator] Build failed: {hog.error}" == logs["hog"][-1]
    assert forks.status == "failed"
    assert forks.error.startswith("the build reached its limit of 64 processes; The command"), forks.error
    assert "[generator] Limits: 64 MiB memory, 1 CPU, 64 processes" in logs["hog"] + logs["forks"]
    for name in ("beside-hog", "beside-forks"):
        assert jobs[name].status == "succeeded", jobs[name].error
        assert any(" interfaces: " in line and "eth0" in line for line in logs[name]), logs[name]  # the default
    assert {job.daemon_id for job in jobs.values()} == {daemon.pk}
    assert not [path for job in jobs.values() for path in cgroups_left(job)]

    daemon.refresh_from_db()
    assert daemon.healthy and not daemon.last_error
    assert engine(daemon.url).ping()
    after, _ = build(farm, token, "after", normal("after"))
    assert after.status == "succeeded" and after.daemon_id == daemon.pk


def test_buildkit_builds_sharing_a_daemon_are_each_held_to_their_own_limits(farm, token, one_daemon_with_low_limits):
    # BuildKit runs every RUN step of a daemon below one cgroup; the daemon's runc
    # starts each step of a build in the build's own cgroup (builds/jobs/limits.py,
    # scripts/buildkit-runc/runc), so builds on one daemon keep their own limits.
    daemon = one_daemon_with_low_limits
    dockerfiles = {"hog": HOG, "forks": FORKS, "next": normal("bk")}
    submitted = {
        name: api_build(
            farm, token, {"image": f"{farm.registry}/limits/bk-{name}", "dockerfile": df, "builder": "buildkit"}
        )
        for name, df in dockerfiles.items()
    }
    logs = {name: [text for _, text in follow(farm, job_id, token).lines] for name, job_id in submitted.items()}
    jobs = {name: BuildJob.objects.get(pk=job_id) for name, job_id in submitted.items()}

    hog, forks = jobs["hog"], jobs["forks"]
    assert hog.status == "failed" and hog.builder == "buildkit"
    assert hog.error.startswith("the build ran out of memory: its limit is 64 MiB (RUN steps were killed); "), hog.error
    assert hog.error.endswith("exit code: 137"), hog.error
    assert forks.status == "failed"
    assert forks.error.startswith("the build reached its limit of 64 processes; "), forks.error
    limits = "[generator] Limits: 64 MiB memory, 1 CPU, 64 processes; each RUN step started in the build's own cgroup"
    assert any(line.startswith(limits) for line in logs["hog"]), logs["hog"][:5]
    assert jobs["next"].status == "succeeded", jobs["next"].error
    assert {job.daemon_id for job in jobs.values()} == {daemon.pk}


def test_a_repository_with_network_none_builds_with_no_network_under_its_own_limits(farm, token, tmp_path):
    source = Repo(tmp_path, "offline")
    source.commit({"Dockerfile": "FROM busybox\n" + INTERFACES.format(name="offline")})
    Repository.objects.update_or_create(
        full_name="team/offline",
        defaults={
            "clone_url": source.url,
            "webhook_secret": "s",
            "image": f"{farm.registry}/team/offline",
            "network": "none",
            "build_memory_mb": 128,
            "build_pids": 100,
        },
    )
    body = {"image": f"{farm.registry}/team/offline:main", "repository": "team/offline", "ref": "main"}
    request = urllib.request.Request(
        f"http://{farm.web}/api/v1/builds/",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        job_id = json.loads(response.read())["id"]
    lines = [text for _, text in follow(farm, job_id, token).lines]
    job = BuildJob.objects.get(pk=job_id)
    assert job.status == "succeeded", job.error
    limits = [line for line in lines if line.startswith("[generator] Limits: 128 MiB memory, 1 CPU, 100 processes")]
    assert len(limits) == 1 and limits[0].endswith("; no network"), lines[:5]
    assert "offline interfaces: lo " in printed(lines)
