"""/pool/, a daemon's page and /insights/ as a newcomer sees them: Debian's Chromium
(Playwright) at a laptop's 1280 x 800. A page no wider than the window, no
heading over two lines, no chart with two ticks that read the same, and no
chart text (a tick, a date, a legend, a bar's label) outside its picture.

The rows are made here, on the test database; pytest-django's live server
serves the same views and static files daphne does. Screenshots of each page go
to var/test-output/screenshots/ (layout-*.png)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from builds.models import BuildJob, DailyDaemonStats, DailyJobStats, StepStats
from pool.models import DockerDaemon
from tests.browser import SCREENSHOTS, chromium, shot

pytestmark = pytest.mark.django_db(transaction=True)

WINDOW = {"width": 1280, "height": 800}
GIB = 1 << 30
LONG_REPOSITORY = "an-organisation-with-a-long-name/a-repository-whose-name-goes-on-and-on"


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture
def pool(team):
    """Daemons with every column full: long platform lists, a long error, disk
    figures, a full disk, a group, a drained one, BuildKit and classic builds."""
    now = timezone.now()
    measured = {
        "disk_images_bytes": 48 * GIB, "disk_farm_images_bytes": 31 * GIB, "disk_build_cache_bytes": 9 * GIB,
        "disk_volumes_bytes": GIB, "disk_measured_at": now, "last_pruned_at": now - timedelta(hours=3),
    }  # fmt: skip
    health = {"engine_version": "20.10.24+dfsg1", "last_seen_at": now, "last_checked_at": now, "latency_ms": 3.2}
    emulated = "linux/arm64,linux/arm/v7,linux/riscv64,linux/ppc64le,linux/s390x"
    daemons = [
        DockerDaemon.objects.create(
            name="build-host-a.farm.internal", url="tcp://10.20.30.40:2376", native_platform="linux/amd64",
            detected_emulation=emulated, buildkit_client="/usr/bin/docker (20.10.24, BuildKit built in)",
            **health, **measured,
        ),
        DockerDaemon.objects.create(
            name="build-host-b", url="unix:///run/generator/19100/docker.sock", capacity=4, group="secure",
            native_platform="linux/arm64", healthy=False, consecutive_failures=7, worker_online=False,
            last_error="Error while fetching server API version: ('Connection aborted.', ConnectionRefusedError(111))",
            disk_full=True, disk_error="no space left on device while pruning the build cache", **measured,
        ),
        DockerDaemon.objects.create(name="farm-2", url="tcp://127.0.0.1:19200", draining=True, **health),
    ]  # fmt: skip
    image = "localhost:5000/some-team/an-image-with-a-long-name:2026-12-06"
    BuildJob.objects.create(image=image, daemon=daemons[0], team=team, status="building", builder="buildkit")
    BuildJob.objects.create(image=image, daemon=daemons[2], team=team, status="pushing", builder="classic")
    return daemons


@pytest.fixture
def figures(pool):
    """Queue waits of a tenth of a second (the axis that read "0.1 s" three
    times), builds of minutes, a long repository name and builds without one."""
    today = timezone.now().date()
    for n in range(30):
        day = today - timedelta(days=n)
        for k, repository in enumerate(("org/alpha-app", "org/beta-service", LONG_REPOSITORY, "")):
            count = 3 + (n + k) % 5
            DailyJobStats.objects.create(
                day=day, repository=repository, status="succeeded" if (n + k) % 4 else "failed", count=count,
                started=count, pushed=count, wait_seconds=count * (0.02 + 0.004 * ((n * 7 + k) % 25)),
                build_seconds=count * (60 + 47 * ((n + 3 * k) % 9)), run_seconds=count * 300,
            )  # fmt: skip
        DailyDaemonStats.objects.create(day=day, daemon=pool[0].name, count=20, run_seconds=40_000)
    for repository, step, seconds in [
        ("org/alpha-app", "[build 4/9] RUN apt-get update && apt-get install -y build-essential libssl-dev", 412.0),
        (LONG_REPOSITORY, "[2/3] RUN make all", 95.5),
        ("", "[1/2] RUN sleep 1", 0.35),
    ]:
        StepStats.objects.create(repository=repository, step=step, count=1, seconds=seconds, last_seen=today)


def open_as(browser, live_server, client, user):
    client.force_login(user)
    context = browser.new_context(base_url=live_server.url, viewport=WINDOW)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}])
    return context.new_page()


def assert_fits_the_window(page) -> None:
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"{page.url} is {width[0]} px wide in a {width[1]} px window"
    # Each heading's lines: the distinct tops of its text's boxes.
    lines = page.eval_on_selector_all(
        "th, h1, h2",
        """cells => cells.map(cell => {
            const range = document.createRange();
            range.selectNodeContents(cell);
            const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
            return [cell.textContent.trim(), tops.size];
        })""",
    )
    assert lines and all(count <= 2 for _, count in lines), f"headings over two lines on {page.url}: {lines}"


def chart_texts(page) -> list[dict]:
    """Every chart's texts: its title, each text's content, class and box (user units)."""
    return page.eval_on_selector_all(
        "svg.chart",
        """charts => charts.map(svg => ({
            title: svg.getAttribute("aria-label"),
            width: svg.viewBox.baseVal.width,
            height: svg.viewBox.baseVal.height,
            texts: [...svg.querySelectorAll("text")].map(t => {
                const box = t.getBBox();
                return {text: t.textContent, cls: t.getAttribute("class") || "",
                        x: box.x, y: box.y, right: box.x + box.width, bottom: box.y + box.height};
            }),
        }))""",
    )


def test_the_pool_fits_a_laptop_window(browser, live_server, client, reader, pool):
    page = open_as(browser, live_server, client, reader)
    page.goto("/pool/")
    assert page.locator("tbody tr").count() == 3
    shot(page, "layout-pool")
    assert_fits_the_window(page)
    row = page.locator("tbody tr", has_text="build-host-a.farm.internal")
    assert "1/2 slots, 1 build" in row.inner_text()  # a BuildKit build, beside which another fits
    page.click("text=build-host-b")
    page.wait_for_url("**/pool/build-host-b/")
    shot(page, "layout-pool-daemon")
    assert_fits_the_window(page)
    assert "ConnectionRefusedError(111)" in page.inner_text("main")


def test_the_insights_charts_read_cleanly(browser, live_server, client, operator, figures):
    page = open_as(browser, live_server, client, operator)
    page.goto("/insights/")
    shot(page, "layout-insights")
    page.locator("svg.chart[aria-label='Mean queue wait per day']").screenshot(
        path=str(SCREENSHOTS / "layout-insights-queue-wait.png")
    )
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1]
    charts = chart_texts(page)
    assert len(charts) == 5
    for chart in charts:
        ticks = [t["text"] for t in chart["texts"] if t["cls"] == "tick"]
        assert len(set(ticks)) == len(ticks), f"{chart['title']}: repeated tick labels {ticks}"
        if any(t["cls"] == "legend" for t in chart["texts"]):  # a line chart: its value axis is labelled
            assert len(ticks) >= 3, f"{chart['title']}: ticks {ticks}"
        for t in chart["texts"]:
            inside = t["x"] >= 0 and t["y"] >= 0 and t["right"] <= chart["width"] and t["bottom"] <= chart["height"]
            assert inside, f"{chart['title']}: {t['text']!r} is cut at the picture's edge: {t}"
    wait = next(chart for chart in charts if chart["title"] == "Mean queue wait per day")
    assert [t["text"] for t in wait["texts"] if t["cls"] == "tick"][-1].endswith(" ms")
    legend = {t["text"] for chart in charts for t in chart["texts"] if t["cls"] == "legend"}
    assert {LONG_REPOSITORY, "(builds without a repository)", "org/alpha-app"} <= legend
