"""Daemon groups: a repository pinned to a group builds only on that group's
daemons, and every other build only on the shared daemons (no group)."""

from __future__ import annotations

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from builds.jobs import dispatch as dispatch_module
from builds.jobs.dispatch import dispatch, rescue_stranded
from builds.jobs.services import BuildRequest, PoolUnavailable, submit, submit_push_build
from builds.models import BuildJob, Registry, Repository
from pool.models import DockerDaemon

pytestmark = pytest.mark.django_db(transaction=True)


def daemon(name: str, group: str = "", capacity: int = 2, **fields) -> DockerDaemon:
    return DockerDaemon.objects.create(name=name, url="tcp://127.0.0.1:9", group=group, capacity=capacity, **fields)


def repository(full_name: str, group: str = "") -> Repository:
    return Repository.objects.create(
        full_name=full_name,
        clone_url=f"https://git.example.invalid/{full_name}.git",
        webhook_secret="s",
        image=f"localhost:5000/{full_name}",
        daemon_group=group,
    )


def shared_job(image: str = "localhost:5000/shared/app:latest") -> BuildJob:
    return BuildJob.objects.create(image=image, dockerfile="FROM busybox\n")


def pinned_job(repo: Repository, tag: str = "latest") -> BuildJob:
    return BuildJob.objects.create(image=f"{repo.image}:{tag}", repository=repo, ref="refs/heads/main")


def daemon_of(job: BuildJob) -> str | None:
    job = BuildJob.objects.select_related("daemon").get(pk=job.pk)
    return job.daemon.name if job.daemon else None


@pytest.fixture(autouse=True)
def allowed(db):
    Registry.objects.create(host="localhost:5000")


# --- dispatch -------------------------------------------------------------------------------


def test_a_pinned_job_goes_only_to_its_groups_daemon_even_when_a_shared_one_is_free():
    daemon("shared", capacity=4)
    daemon("secure-1", group="secure", capacity=1)
    secret = repository("team/secret", group="secure")
    first, second = pinned_job(secret, "1"), pinned_job(secret, "2")
    assert dispatch() == 1
    assert (daemon_of(first), daemon_of(second)) == ("secure-1", None)  # waits for its group, not the free pool


def test_a_shared_job_never_lands_on_a_grouped_daemon():
    daemon("secure-1", group="secure", capacity=4)
    public = repository("team/public")  # not pinned: the shared pool
    jobs = [shared_job(), pinned_job(public)]
    assert dispatch() == 0
    assert [daemon_of(job) for job in jobs] == [None, None]
    daemon("shared")
    assert dispatch() == 2
    assert [daemon_of(job) for job in jobs] == ["shared", "shared"]


@override_settings(GENERATOR_MAX_BUILDS_PER_IMAGE=0)
def test_a_busy_groups_backlog_does_not_hold_back_the_rest_of_the_pool(monkeypatch):
    monkeypatch.setattr(dispatch_module, "DISPATCH_BATCH", 3)
    daemon("shared")
    busy = daemon("secure-1", group="secure", capacity=1)
    secret = repository("team/secret", group="secure")
    BuildJob.objects.create(image=f"{secret.image}:0", repository=secret, daemon=busy, status="building")
    backlog = [pinned_job(secret, str(n)) for n in range(5)]
    later = shared_job()
    assert dispatch() == 1
    assert [daemon_of(job) for job in backlog] == [None] * 5
    assert daemon_of(later) == "shared"  # in the batch, though five older jobs wait for their group


def test_a_daemon_moved_to_another_group_gives_back_its_waiting_jobs():
    moved = daemon("moved")
    job = shared_job()
    dispatch()
    DockerDaemon.objects.filter(pk=moved.pk).update(group="secure")
    assert rescue_stranded() == 1
    assert daemon_of(job) is None


@override_settings(GENERATOR_MAX_BUILDS_PER_IMAGE=0)
def test_a_mixed_queue_costs_no_query_per_job(django_assert_max_num_queries):
    daemon("one", capacity=3)
    daemon("two", capacity=3)
    daemon("secure-1", group="secure", capacity=3)
    daemon("secure-2", group="secure", capacity=3)
    secret = repository("team/secret", group="secure")
    for index in range(40):
        if index % 2:
            pinned_job(secret, str(index))
        else:
            shared_job(f"localhost:5000/app-{index % 4}:{index}")
    # As for one pool (tests/builds/jobs/test_dispatch.py): anything waiting?, the lock
    # (PostgreSQL), the daemons, three loads, the teams' running builds and last
    # hour's starts (fair share), the waiting jobs with their repositories, one
    # warm lookup per image repository (three), one update per assignment
    # (twelve), and transaction bookkeeping. 40 jobs or 400, the same.
    with django_assert_max_num_queries(26):
        assert dispatch() == 12
    assert BuildJob.objects.filter(daemon__group="secure", repository=secret).count() == 6
    assert BuildJob.objects.filter(daemon__group="", repository__isnull=True).count() == 6


# --- at the door ----------------------------------------------------------------------------


def test_a_pinned_repository_with_no_daemon_in_its_group_is_refused_naming_the_group():
    daemon("shared")
    daemon("secure-off", group="secure", enabled=False)
    secret = repository("team/secret", group="secure")
    with pytest.raises(PoolUnavailable, match="no enabled Docker daemon in daemon group 'secure'"):
        submit(BuildRequest(image="localhost:5000/team/secret:1", repository=secret, ref="main"))
    with pytest.raises(PoolUnavailable, match="daemon group 'secure'"):
        submit_push_build(repository=secret, ref="refs/heads/main", sha="a" * 40, tags=["latest"])
    assert not BuildJob.objects.exists()


def test_the_rest_api_answers_503_naming_the_group(operator):
    daemon("shared")
    repository("team/secret", group="secure")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {operator.api_token}")
    build = {"image": "localhost:5000/team/secret:1", "repository": "team/secret", "ref": "main"}
    response = api.post("/api/v1/builds/", build, format="json")
    assert response.status_code == 503 and "daemon group 'secure'" in response.json()["detail"]


def test_a_build_without_a_repository_needs_a_shared_daemon():
    daemon("secure-1", group="secure")
    with pytest.raises(PoolUnavailable, match="the shared daemons, without a group"):
        submit(BuildRequest(image="localhost:5000/a/b", dockerfile="FROM busybox\n"))


def test_a_pinned_build_is_accepted_when_its_group_has_a_daemon():
    daemon("secure-1", group="secure")
    secret = repository("team/secret", group="secure")
    job = submit(BuildRequest(image="localhost:5000/team/secret:1", repository=secret, ref="main"))
    assert daemon_of(job) == "secure-1"  # dispatched on commit


# --- shown where the daemons are ------------------------------------------------------------


def test_the_group_is_shown_in_the_api_the_pool_page_and_admin(client, operator):
    daemon("secure-1", group="secure")
    daemon("shared")
    client.force_login(operator)
    api = APIClient()
    api.force_authenticate(operator)
    assert {d["name"]: d["group"] for d in api.get("/api/v1/daemons/").json()["results"]} == {
        "secure-1": "secure",
        "shared": "",
    }
    page = client.get("/pool/").content.decode()
    assert "<td>secure</td>" in page and "<td>shared</td>" in page
    assert "secure" in client.get("/admin/pool/dockerdaemon/").content.decode()
    repository("team/secret", group="secure")
    assert api.get("/api/v1/repositories/").json()["results"][0]["daemon_group"] == "secure"
