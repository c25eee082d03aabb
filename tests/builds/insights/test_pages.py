"""/insights/: pictures of the figures kept as jobs end, each person's teams' repositories only."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from builds.insights import charts
from builds.models import DailyDaemonStats, DailyJobStats, Repository


@pytest.fixture
def repositories(teams):
    a, b = teams
    return [
        Repository.objects.create(
            full_name=name,
            team=team,
            clone_url="https://x.invalid/r.git",
            webhook_secret="s",
            image=f"localhost:5000/{team.slug}/app",
        )  # fmt: skip
        for name, team in (("org/alpha-app", a), ("org/beta-app", b))
    ]


def stats(repository: str, days_ago: int, status: str = "succeeded", count: int = 4, build: float = 40.0):
    DailyJobStats.objects.create(
        day=timezone.now().date() - timedelta(days=days_ago), repository=repository, status=status, count=count,
        started=count, pushed=count, wait_seconds=count * 2.0, build_seconds=count * build, run_seconds=count * build,
    )  # fmt: skip


def test_a_member_sees_only_their_teams_repositories(client, alice, repositories, daemon):
    stats("org/alpha-app", 1)
    stats("org/alpha-app", 2, status="failed", count=1)
    stats("org/beta-app", 1)
    stats("", 1)  # builds without a repository: staff only
    client.force_login(alice)
    page = client.get("/insights/").content.decode()
    assert "org/alpha-app" in page and "org/beta-app" not in page and "without a repository" not in page
    assert "5 builds ended" in page
    assert "80.0 %" in page  # 4 succeeded, 1 failed
    assert page.count("<svg") == 4


def test_staff_see_every_repository(client, operator, repositories, daemon):
    stats("org/alpha-app", 1)
    stats("org/beta-app", 3)
    stats("", 0)
    client.force_login(operator)
    page = client.get("/insights/").content.decode()
    assert "org/alpha-app" in page and "org/beta-app" in page and "(builds without a repository)" in page


def test_insights_need_a_login(client, db, settings):
    settings.GENERATOR_PUBLIC_LOGS = True  # public logs do not make the farm's figures public
    response = client.get("/insights/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("days", ["0", "91", "x", "-3"])
def test_a_bad_window_is_a_400_that_says_why(client, alice, days):
    client.force_login(alice)
    response = client.get(f"/insights/?days={days}")
    assert response.status_code == 400 and "days must be a whole number from 1 to 90" in response.content.decode()


def test_the_window_bounds_the_figures(client, alice, repositories, daemon):
    stats("org/alpha-app", 10, count=3)
    stats("org/alpha-app", 1, count=2)
    client.force_login(alice)
    assert "2 builds ended" in client.get("/insights/?days=5").content.decode()
    assert "5 builds ended" in client.get("/insights/?days=30").content.decode()


def test_pool_utilisation_is_build_time_over_capacity_time(client, alice, daemon):
    # unit-daemon has capacity 2: 2 x 86400 s a day; 86400 s busy over 1 day is 50 %.
    DailyDaemonStats.objects.create(day=timezone.now().date(), daemon="unit-daemon", count=10, run_seconds=86400)
    client.force_login(alice)
    page = client.get("/insights/?days=1").content.decode()
    assert "unit-daemon" in page and "50 %" in page


def test_the_page_reads_a_bounded_number_of_queries(
    client, operator, repositories, daemon, django_assert_max_num_queries
):
    for n in range(30):
        stats("org/alpha-app", n)
        stats("org/beta-app", n, status="failed")
    client.force_login(operator)
    with django_assert_max_num_queries(9):  # the 9th: the teams whose registry use it shows
        assert client.get("/insights/?days=90").status_code == 200


def test_a_line_chart_escapes_names_and_leaves_gaps():
    svg = str(charts.line_chart("t", ["d1", "d2", "d3", "d4"], [("<script>", [1.0, None, 3.0, 4.0])], "s"))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 1  # the gap splits the line


def test_the_slowest_steps_of_ones_own_repositories(client, alice, repositories, daemon):
    from builds.models import StepStats

    today = timezone.now().date()
    StepStats.objects.create(
        repository="org/alpha-app", step="[2/3] RUN make all", count=2, seconds=90, last_seen=today
    )
    StepStats.objects.create(
        repository="org/beta-app", step="[1/1] RUN secret-team-b", count=1, seconds=500, last_seen=today
    )
    client.force_login(alice)
    page = client.get("/insights/").content.decode()
    assert "RUN make all" in page and "45 s" in page and "secret-team-b" not in page
