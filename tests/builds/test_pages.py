"""The pages people read: build list, job page, pool page, badges, login."""

from __future__ import annotations

from django.test import override_settings
from django.utils import timezone

from builds.models import BuildJob, Repository
from pool.models import DockerDaemon
from teams.models import Team


def reader_team(user) -> Team:
    return Team.objects.of(user).get()


def make_job(daemon, **fields):
    # A build of the default team, which the reader fixture is in.
    team = Team.objects.get_or_create(slug="default", defaults={"name": "Default"})[0]
    return BuildJob.objects.create(
        image="localhost:5000/a/b:latest", dockerfile="FROM busybox\n", daemon=daemon, team=team, **fields
    )


def test_the_job_page_shows_the_job_and_loads_the_live_log(client, reader, daemon):
    job = make_job(daemon, status="failed", error="returned a non-zero code: 3", extra_tags=["v1"])
    client.force_login(reader)
    page = client.get(f"/builds/{job.id}/").content.decode()
    assert "localhost:5000/a/b:latest" in page and "returned a non-zero code: 3" in page
    assert "latest, v1" in page and 'data-job="' + job.id in page and "builds/log.js" in page
    assert f'href="/api/v1/builds/{job.id}/log/"' in page


def test_pages_need_a_login_unless_logs_are_public(client, daemon):
    job = make_job(daemon)
    for url in (f"/builds/{job.id}/", "/builds/", "/pool/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next=")
    with override_settings(GENERATOR_PUBLIC_LOGS=True):
        assert client.get(f"/builds/{job.id}/").status_code == 200


def test_an_unknown_job_is_404(client, reader, db):
    client.force_login(reader)
    assert client.get(f"/builds/{'0' * 32}/").status_code == 404


def test_the_list_filters_and_shows_queue_positions(client, reader, daemon):
    make_job(daemon, status="succeeded", started_at=timezone.now(), finished_at=timezone.now())
    BuildJob.objects.create(image="localhost:5000/x/waiting:1", dockerfile="FROM busybox\n", team=reader_team(reader))
    client.force_login(reader)
    page = client.get("/builds/").content.decode()
    assert "localhost:5000/a/b:latest" in page and "localhost:5000/x/waiting:1" in page and "#1" in page
    filtered = client.get("/builds/?status=succeeded")
    assert "x/waiting" not in filtered.content.decode()
    rows = client.get("/builds/?rows=1")
    assert rows["X-Any-Active"] == "1" and "<html" not in rows.content.decode()


def test_the_pool_page_shows_health_and_load_and_links_each_daemon(client, reader, daemon):
    make_job(daemon, status="building")  # a classic build: one slot
    client.force_login(reader)
    page = client.get("/pool/").content.decode()
    assert "healthy" in page and '<a href="/pool/unit-daemon/">unit-daemon</a>' in page
    assert "1/2 slots, 1 build" in page and "2 builds at once" in page


def test_a_buildkit_build_takes_one_slot_or_its_whole_daemon_where_builds_do_not_share_it(client, reader, daemon):
    make_job(daemon, status="building", builder="buildkit")
    client.force_login(reader)
    page = client.get("/pool/").content.decode()
    assert "1/2 slots, 1 build" in page and "2 builds at once" in page
    with override_settings(GENERATOR_BUILDKIT_SHARED_DAEMONS=False):
        page = client.get("/pool/").content.decode()
        assert "2/2 slots, 1 build" in page and "1 BuildKit or 2 classic builds at once" in page
        with override_settings(GENERATOR_BUILDERS=["buildkit"], GENERATOR_DEFAULT_BUILDER="buildkit"):
            assert "1 build at once" in client.get("/pool/").content.decode()


def test_a_daemons_page_tells_everything_and_only_the_builds_one_may_read(client, reader, daemon, teams):
    mine = make_job(daemon, status="building")
    theirs = BuildJob.objects.create(image="localhost:5000/team-b/x:1", daemon=daemon, team=teams[1], status="pushing")
    DockerDaemon.objects.filter(pk=daemon.pk).update(
        engine_version="20.10.24", last_error="connection refused", consecutive_failures=3, latency_ms=2.5
    )
    client.force_login(reader)
    page = client.get("/pool/unit-daemon/").content.decode()
    assert "<code>tcp://127.0.0.1:9</code>" in page and "20.10.24" in page and "connection refused" in page
    assert "3 failed checks in a row" in page and "answered in 2.5 ms" in page
    assert "2 of 2 slots taken by 2 builds" in page and "2048 MiB of memory" in page
    assert f'href="/builds/{mine.id}/"' in page and theirs.id not in page and "and 1 build of other teams" in page


def test_a_daemon_page_needs_what_the_pool_page_needs(client, reader, daemon):
    assert client.get("/pool/unit-daemon/")["Location"].startswith("/accounts/login/?next=/pool/unit-daemon/")
    with override_settings(GENERATOR_PUBLIC_LOGS=True):
        assert client.get("/pool/unit-daemon/").status_code == 200
    client.force_login(reader)
    response = client.get("/pool/no-such-daemon/")
    assert (
        response.status_code == 404 and "no Docker daemon named &#x27;no-such-daemon&#x27;" in response.content.decode()
    )


def test_badges_tell_the_latest_finished_build(client, db, daemon):
    # A public repository's badges are anyone's (tests/teams/test_teams.py: a private one's are its team's).
    repository = Repository.objects.create(
        full_name="team/app",
        clone_url="https://x.invalid/a.git",
        webhook_secret="s",
        image="localhost:5000/team/app",
        public=True,
    )
    assert "unknown" in client.get("/badges/team/app.svg").content.decode()
    BuildJob.objects.create(
        image="localhost:5000/team/app:1", repository=repository, status="failed", finished_at=timezone.now()
    )
    BuildJob.objects.create(
        image="localhost:5000/team/app:2", repository=repository, status="succeeded", finished_at=timezone.now()
    )
    BuildJob.objects.create(image="localhost:5000/team/app:3", repository=repository, status="building")
    badge = client.get("/badges/team/app.svg")
    assert badge["Content-Type"] == "image/svg+xml" and "passing" in badge.content.decode()
    assert "passing" in client.get("/badges/image/localhost:5000/team/app.svg").content.decode()


def test_people_log_in_with_djangos_own_auth(client, django_user_model, daemon):
    django_user_model.objects.create_user("alice", password="correct horse battery staple")
    page = client.get("/accounts/login/").content.decode()
    assert 'name="username"' in page
    response = client.post("/accounts/login/", {"username": "alice", "password": "correct horse battery staple"})
    assert response.status_code == 302 and response["Location"] == "/builds/"
    assert client.get("/builds/").status_code == 200
