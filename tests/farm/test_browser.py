"""The pages in a real browser (Debian's Chromium, driven by Playwright) against the
real farm: a live log arriving, escaping, a reconnect, a 100,000-line build.
Screenshots of each page go to var/test-output/screenshots/."""

from __future__ import annotations

import os
import urllib.request

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect, sync_playwright

from builds.models import BuildJob
from tests.conftest import ROOT

from .conftest import submit

pytestmark = pytest.mark.farm

SCREENSHOTS = ROOT / "var" / "test-output" / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    # Playwright's sync API keeps an event loop running in this thread, and Django
    # refuses ORM calls beside a running loop; the tests' own queries are plain
    # sequential reads, so that guard can step aside here.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield browser
        browser.close()
    del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture
def page(browser, farm, farm_pool):
    viewer, _ = get_user_model().objects.get_or_create(username="viewer")
    viewer.set_password("a long viewer password")
    viewer.save()
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


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def seqs_on(page) -> list[int]:
    return page.eval_on_selector_all("#log .line", "lines => lines.map(l => Number(l.dataset.seq))")


def wait_for_end(page, job_id: str, timeout_ms: int = 120_000) -> BuildJob:
    expect(page.locator("#status")).to_have_text("succeeded", timeout=timeout_ms)
    job = BuildJob.objects.get(pk=job_id)
    page.wait_for_function(f"window.generatorLog.count === {job.log_line_count}", timeout=timeout_ms)
    return job


def test_a_running_build_streams_into_the_page_and_turns_succeeded(page, farm, token):
    chatty = "FROM busybox\nRUN for i in $(seq 1 30); do echo line $i; sleep 0.1; done\n"
    job_id = submit(farm, token, f"{farm.registry}/browser/live", chatty)
    page.goto(f"/builds/{job_id}/")
    page.wait_for_function(
        "window.generatorLog.count > 0 && document.getElementById('status').textContent !== 'succeeded'"
    )
    shot(page, "job-running")
    job = wait_for_end(page, job_id)
    assert page.text_content("#line-count") == str(job.log_line_count)
    assert seqs_on(page) == list(range(1, job.log_line_count + 1))
    expect(page.locator("#digest")).to_have_text(job.digest)
    expect(page.locator("#push-duration")).to_have_text(f"{job.push_seconds:.1f} s")
    assert page.locator("#log .line.step").count() == 2  # Docker's "Step N/M" lines are marked
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
    texts = page.eval_on_selector_all("#log .line", "lines => lines.map(l => l.textContent)")
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


def test_a_build_printing_100000_lines_ends_with_the_right_count(page, farm, token):
    job_id = submit(farm, token, f"{farm.registry}/browser/huge", "FROM busybox\nRUN seq 1 100000\n")
    page.goto(f"/builds/{job_id}/")
    job = wait_for_end(page, job_id, timeout_ms=240_000)
    assert job.log_line_count > 100_000
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
    shot(page, "job-100000-lines")
