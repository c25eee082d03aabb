"""The pages in a real browser (Debian's Chromium, driven by Playwright) against the
real farm: a live log arriving, escaping, a reconnect, a 100,000-line build, the
log grouped by build step (BuildKit's and the classic builder's).
Screenshots of each page go to var/test-output/screenshots/."""

from __future__ import annotations

import re
import urllib.request
import uuid

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from builds.models import BuildJob, BuildLogLine
from teams.models import Membership, Team
from tests.browser import chromium, shot
from tests.farm.conftest import api_build, follow, printed, submit

pytestmark = pytest.mark.farm


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser, farm, farm_pool):
    viewer, _ = get_user_model().objects.get_or_create(username="viewer")
    viewer.set_password("a long viewer password")
    viewer.save()
    # A member of the team that owns the farm's registry (tests/farm/conftest.py): it reads the team's builds.
    Membership.objects.get_or_create(team=Team.objects.get(slug="default"), user=viewer)
    context = browser.new_context(base_url=f"http://{farm.web}", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("dialog", lambda dialog: pytest.fail(f"the page ran a script from the log: {dialog.message}"))
    page.goto("/accounts/login/?next=/builds/")
    page.fill("input[name=username]", "viewer")
    page.fill("input[name=password]", "a long viewer password")
    page.click("button[type=submit]")
    page.wait_for_url("**/builds/")
    yield page
    context.close()


def seqs_on(page) -> list[int]:
    return page.eval_on_selector_all("#log .line", "lines => lines.map(l => Number(l.dataset.seq))")


def wait_for_end(page, job_id: str, timeout_ms: int = 120_000, status: str = "succeeded") -> BuildJob:
    expect(page.locator("#status")).to_have_text(status, timeout=timeout_ms)
    job = BuildJob.objects.get(pk=job_id)
    page.wait_for_function(f"window.generatorLog.count === {job.log_line_count}", timeout=timeout_ms)
    # The page draws what it received at its next animation frame, where the count on the page is set too.
    expect(page.locator("#line-count")).to_have_text(str(job.log_line_count), timeout=timeout_ms)
    return job


def test_a_running_build_streams_into_the_page_and_turns_succeeded(page, farm, token):
    chatty = "FROM busybox\nRUN for i in $(seq 1 30); do echo line $i; sleep 0.1; done\n"
    # The classic builder's two steps; BuildKit's grouping has a test of its own below.
    body = {"image": f"{farm.registry}/browser/live", "dockerfile": chatty, "builder": "classic"}
    job_id = api_build(farm, token, body)
    page.goto(f"/builds/{job_id}/")
    page.wait_for_function(
        "window.generatorLog.count > 0 && document.getElementById('status').textContent !== 'succeeded'"
    )
    # The step still running is open and says so, while its lines arrive.
    expect(page.locator("#log details.step-running[open]")).to_contain_text("line 3", timeout=60_000)
    shot(page, "job-running")
    job = wait_for_end(page, job_id)
    # FROM, the team's ARG (builds/worker/cache_scope.py), RUN and the farm's LABEL
    assert page.locator("#log details.step-group").count() == 4
    assert page.locator("#log details.step-group[open]").count() == 0  # finished steps fold
    assert page.text_content("#line-count") == str(job.log_line_count)
    assert seqs_on(page) == list(range(1, job.log_line_count + 1))
    expect(page.locator("#digest")).to_have_text(job.digest)
    expect(page.locator("#push-duration")).to_have_text(f"{job.push_seconds:.1f} s")
    assert page.locator("#log .line.step").count() == 4  # Docker's "Step N/M" lines are marked
    shot(page, "job-succeeded")
    page.goto("/builds/")
    expect(page.locator("#jobs")).to_contain_text(f"{farm.registry}/browser/live:latest")
    shot(page, "build-list")
    page.goto("/pool/")
    expect(page.locator("table")).to_contain_text("farm-0")
    shot(page, "pool")


def test_log_text_is_text_and_ansi_colours_are_rendered(page, farm, token):
    dockerfile = (
        "FROM busybox\n"
        "RUN echo '<script>alert(1)</script>' && echo '<img src=x onerror=alert(2)>'"
        " && echo -e '\\033[31mred\\033[0m plain'\n"
    )
    job_id = submit(farm, token, f"{farm.registry}/browser/escape", dockerfile)
    page.goto(f"/builds/{job_id}/")
    wait_for_end(page, job_id)
    texts = printed(page.eval_on_selector_all("#log .line", "lines => lines.map(l => l.textContent)"))
    assert "<script>alert(1)</script>" in texts and "<img src=x onerror=alert(2)>" in texts
    assert page.locator("#log script, #log img").count() == 0
    assert page.locator("#log span.ansi-fg-31").first.text_content() == "red"
    assert "red plain" in texts
    shot(page, "job-escaped")


def test_a_dropped_connection_resumes_without_gaps_or_duplicates(page, farm, token):
    slow = "FROM busybox\nRUN for i in $(seq 1 60); do echo tick $i; sleep 0.1; done\n"
    job_id = submit(farm, token, f"{farm.registry}/browser/reconnect", slow)
    page.goto(f"/builds/{job_id}/")
    page.wait_for_function("document.querySelectorAll('#log .line').length > 8")
    page.evaluate("window.generatorLog.socket.close()")
    job = wait_for_end(page, job_id)
    assert page.evaluate("window.generatorLog.reconnects") >= 1
    assert seqs_on(page) == list(range(1, job.log_line_count + 1))


# BuildKit in dockerd clips a step's log at 1 MiB and at a speed unless told
# otherwise (`seq 1 100000` kept about 36,000 lines): the farm's daemons are
# (scripts/localfarm.py, DOCKERD_ENV), so it prints all of them at once here too.
HUGE = {"classic": "RUN seq 1 100000", "buildkit": "RUN seq 1 100000"}


@pytest.mark.parametrize("builder", ["classic", "buildkit"])
def test_a_build_printing_100000_lines_ends_with_the_right_count(page, farm, token, builder):
    body = {"image": f"{farm.registry}/browser/huge", "dockerfile": f"FROM busybox\n{HUGE[builder]}\n"}
    job_id = api_build(farm, token, {**body, "builder": builder})
    page.goto(f"/builds/{job_id}/")
    job = wait_for_end(page, job_id, timeout_ms=240_000)
    tail = BuildLogLine.objects.filter(job_id=job_id).order_by("-seq").values_list("text", flat=True)[:30]
    assert job.log_line_count > 100_000, list(tail)
    # All of them in their step, folded once it is done.
    huge = group(page, HUGE[builder])
    assert huge.locator(".step-body .line").count() > 100_000 and huge.get_attribute("open") is None
    assert page.text_content("#line-count") == str(job.log_line_count)
    # The raw log comes in pages of at most 100,000 lines: follow X-Log-Next-Offset.
    offset, lines = 0, 0
    while True:
        raw = urllib.request.Request(
            f"http://{farm.web}/api/v1/builds/{job_id}/log/?offset={offset}",
            headers={"Authorization": f"Token {token}"},
        )
        with urllib.request.urlopen(raw, timeout=60) as response:
            lines += response.read().decode().count("\n")
            next_offset = int(response.headers["X-Log-Next-Offset"])
        if next_offset == offset:
            break
        offset = next_offset
    assert lines == job.log_line_count
    shot(page, f"job-100000-lines-{builder}")


def group(page, title_part: str):
    return page.locator("#log details.step-group", has=page.locator("summary", has_text=title_part))


def test_buildkit_steps_are_grouped_timed_cached_folded_and_the_failure_is_linked(page, farm, token):
    image, nonce = f"{farm.registry}/browser/steps", uuid.uuid4().hex[:8]
    base = f"FROM busybox\nRUN echo prepared {nonce} > /prepared\n"
    first = api_build(farm, token, {"image": image, "dockerfile": base, "builder": "buildkit"})
    assert follow(farm, first, token).end["status"] == "succeeded"
    dockerfile = base + "RUN echo normal step && sleep 1\nRUN echo about to fail && exit 3\n"
    job_id = api_build(farm, token, {"image": image, "dockerfile": dockerfile, "builder": "buildkit"})
    page.goto(f"/builds/{job_id}/")
    job = wait_for_end(page, job_id, status="failed")
    stored = list(BuildLogLine.objects.filter(job_id=job_id).order_by("seq").values_list("text", flat=True))
    assert page.locator("#log .line").count() == len(stored) == job.log_line_count

    cached, normal, failing = group(page, "RUN echo prepared"), group(page, "RUN echo normal"), group(page, "exit 3")
    expect(cached.locator("summary .badge.cached")).to_have_text("CACHED")
    normal_seconds = normal.locator("summary .badge.time").text_content()
    assert re.fullmatch(r"\d+\.\d s", normal_seconds) and float(normal_seconds[:-2]) >= 1.0, normal_seconds
    expect(failing.locator("summary .badge.failed")).to_have_text("ERROR")
    # The failing step is the only one open; its output is in it, by its #N prefix.
    open_groups = page.locator("#log details.step-group[open]")
    expect(open_groups).to_have_count(1)
    expect(open_groups.first).to_contain_text("about to fail")
    number = failing.locator("summary .line").text_content().split(" ")[0]
    assert all(t.startswith(number + " ") for t in failing.locator(".step-body .line").all_text_contents())
    assert normal.get_attribute("open") is None and cached.get_attribute("open") is None
    # The farm's lines and BuildKit's closing excerpt stay outside the steps, in order.
    outside = page.eval_on_selector_all("#log > .line", "lines => lines.map(l => l.textContent)")
    assert outside == [t for t in stored if not t.startswith("#") and t != ""]
    assert outside[0].startswith("[generator] Building") and outside[-1].startswith("[generator] Build failed")
    shot(page, "job-buildkit-steps")

    # The first error, linked from the top of the page.
    page.evaluate("document.getElementById('log').scrollTop = 0; window.scrollTo(0, 0)")
    link = page.locator("#first-error")
    expect(link).to_be_visible()
    expect(link).to_contain_text(f"{number} [4/4] RUN echo about to fail && exit 3 \u2014 ERROR: ")
    link.click()
    target = page.locator("#log .line.target")
    expect(target).to_have_text(re.compile(rf"^{number} ERROR: .*exit code: 3"))
    expect(target).to_be_in_viewport()
    shot(page, "job-buildkit-first-error")

    # A folded step opens on a click; the plain log is every line in the order it came.
    normal.locator("summary").click()
    expect(normal.locator(".step-body")).to_contain_text("normal step")
    page.click("#view")
    expect(page.locator("#log details")).to_have_count(0)
    assert page.eval_on_selector_all("#log .line", "lines => lines.map(l => l.textContent)") == stored
    assert seqs_on(page) == list(range(1, job.log_line_count + 1))
    page.click("#view")
    expect(page.locator("#log details.step-group[open]")).to_have_count(1)


def test_classic_builds_are_grouped_by_their_step_lines(page, farm, token):
    dockerfile = f"FROM busybox\nRUN echo classic {uuid.uuid4().hex}\nRUN echo about to fail && exit 3\n"
    job_id = api_build(
        farm, token, {"image": f"{farm.registry}/browser/classic-steps", "dockerfile": dockerfile, "builder": "classic"}
    )
    page.goto(f"/builds/{job_id}/")
    wait_for_end(page, job_id, status="failed")
    titles = page.eval_on_selector_all("#log summary .line", "lines => lines.map(l => l.textContent)")
    # Step 2 is the team's ARG after FROM (builds/worker/cache_scope.py); the farm's LABEL would be the 5th.
    assert [t.split(" : ")[0] for t in titles] == ["Step 1/5", "Step 2/5", "Step 3/5", "Step 4/5"]
    assert titles[1].startswith("Step 2/5 : ARG GENERATOR_TEAM_")
    failing = group(page, "Step 4/5")
    expect(failing.locator("summary .badge.failed")).to_have_text("ERROR")
    expect(page.locator("#log details.step-group[open]")).to_have_count(1)
    expect(failing.locator(".step-body")).to_contain_text("about to fail")
    link = page.locator("#first-error")
    expect(link).to_contain_text("Step 4/5 : RUN echo about to fail && exit 3")
    expect(link).to_contain_text("returned a non-zero code: 3")
    link.click()
    expect(page.locator("#log .line.target")).to_have_text(re.compile(r"^\[generator\] Build failed: "))
    shot(page, "job-classic-steps")
