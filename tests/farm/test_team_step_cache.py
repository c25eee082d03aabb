"""Issue 22, part 1, played as the attacker: one team's build never uses another
team's step results, on either daemon (builds/worker/cache_scope.py).

Before the farm keyed steps to teams, team B submitting team A's lines got A's
step result from the daemon's cache: A's secret printed in B's log (theft), or
B's result pushed in A's image (poisoning)."""

from __future__ import annotations

import uuid

import pytest

from builds.models import BuildJob
from pool.models import DockerDaemon
from tests.farm.conftest import api_build, follow, team_token

pytestmark = pytest.mark.farm


@pytest.fixture
def two_teams(farm, farm_pool):
    """Two teams, each with its own namespace in the farm's registry and a token."""
    return {slug: team_token(farm, slug, "step cache test") for slug in ("cache-a", "cache-b")}


def build_on(farm, farm_pool, daemon_index: int, key: str, body: dict) -> tuple[BuildJob, str]:
    """A build on one daemon of the pool (the others disabled meanwhile): its job and log."""
    others = [d.pk for i, d in enumerate(farm_pool) if i != daemon_index]
    DockerDaemon.objects.filter(pk__in=others).update(enabled=False)
    try:
        job_id = api_build(farm, key, {"builder": "buildkit", **body})
        done = follow(farm, job_id, key)
    finally:
        DockerDaemon.objects.filter(pk__in=others).update(enabled=True)
    job = BuildJob.objects.get(pk=job_id)
    assert job.daemon_id == farm_pool[daemon_index].pk
    return job, "\n".join(text for _, text in done.lines)


def step_ran(log: str, command: str) -> bool:
    """Whether the RUN step ran rather than came from the cache: BuildKit prints
    `#N [i/n] RUN ...` then `#N CACHED` for a reused step."""
    numbers = [line.split()[0] for line in log.splitlines() if line.startswith("#") and command in line]
    return bool(numbers) and f"{numbers[0]} CACHED" not in log


@pytest.mark.parametrize("decoy", [True, False], ids=["b-has-its-own-secret", "b-has-no-secret"])
@pytest.mark.parametrize("daemon_index", [0, 1])
def test_a_team_cannot_take_another_teams_secret_from_the_step_cache(farm, farm_pool, two_teams, daemon_index, decoy):
    value = f"a-secret-{uuid.uuid4().hex}"
    copy = f"RUN --mount=type=secret,id=tok cp /run/secrets/tok /leak # {uuid.uuid4().hex}"
    a_job, a_log = build_on(
        farm,
        farm_pool,
        daemon_index,
        two_teams["cache-a"],
        {"image": f"{farm.registry}/cache-a/app", "dockerfile": f"FROM busybox\n{copy}\n", "secrets": {"tok": value}},
    )
    assert a_job.status == "succeeded", a_job.error
    body = {"image": f"{farm.registry}/cache-b/app", "dockerfile": f"FROM busybox\n{copy}\nRUN cat /leak\n"}
    if decoy:
        body["secrets"] = {"tok": f"b-decoy-{uuid.uuid4().hex}"}
    b_job, b_log = build_on(farm, farm_pool, daemon_index, two_teams["cache-b"], body)
    assert value not in b_log and value not in (b_job.error or "")
    assert step_ran(b_log, "cp /run/secrets/tok /leak"), b_log
    # With its own secret B's copy of the step succeeds; without one it fails on the missing file.
    assert b_job.status == ("succeeded" if decoy else "failed"), b_job.error


@pytest.mark.parametrize("daemon_index", [0, 1])
def test_a_team_cannot_put_its_step_result_in_another_teams_image(farm, farm_pool, two_teams, daemon_index):
    nonce = uuid.uuid4().hex
    dockerfile = f"FROM busybox\nRUN --mount=type=secret,id=setup sh /run/secrets/setup # {nonce}\nRUN cat /result\n"
    scripts = {"cache-b": "echo poisoned-by-b > /result", "cache-a": "echo made-by-a > /result"}
    logs = {}
    for slug in ("cache-b", "cache-a"):  # the attacker first
        job, logs[slug] = build_on(
            farm,
            farm_pool,
            daemon_index,
            two_teams[slug],
            {"image": f"{farm.registry}/{slug}/app", "dockerfile": dockerfile, "secrets": {"setup": scripts[slug]}},
        )
        assert job.status == "succeeded", job.error
    assert "made-by-a" in logs["cache-a"] and "poisoned-by-b" not in logs["cache-a"]
    assert step_ran(logs["cache-a"], "sh /run/secrets/setup")


def test_a_teams_own_rebuild_still_comes_from_the_cache(farm, farm_pool, two_teams):
    dockerfile = f"FROM busybox\nRUN echo {uuid.uuid4().hex} > /made\n"
    body = {"image": f"{farm.registry}/cache-a/again", "dockerfile": dockerfile}
    logs = [build_on(farm, farm_pool, 0, two_teams["cache-a"], body)[1] for _ in range(2)]
    assert step_ran(logs[0], "RUN echo") and not step_ran(logs[1], "RUN echo"), logs[1]
