"""A real BuildKit build on the test farm shows up in /metrics (served by the
farm's daphne) and in the step timings, through the worker's own hooks."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from builds.models import BuildJob, StepStats
from tests.farm.conftest import api_build, follow, wait_for

pytestmark = pytest.mark.farm


def scrape(farm) -> dict:
    with urllib.request.urlopen(f"http://{farm.web}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    samples: dict = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def test_a_finished_build_is_counted_timed_and_its_steps_kept(farm, token):
    before = scrape(farm)
    dockerfile = "FROM busybox\nRUN echo metrics-step && sleep 1.2\n"
    body = {
        "image": f"{farm.registry}/metrics/app:1",
        "dockerfile": dockerfile,
        "builder": "buildkit",
        "no_cache": True,
    }
    job_id = api_build(farm, token, body)
    done = follow(farm, job_id, token)
    job = BuildJob.objects.select_related("daemon").get(pk=job_id)
    assert done.end["status"] == job.status == "succeeded", job.error
    after = scrape(farm)

    def grew(name: str, **labels) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("generator_jobs_finished_total", repository="", status="succeeded") == 1
    assert grew("generator_job_build_seconds_count", repository="") == 1
    assert grew("generator_job_push_seconds_count", repository="") == 1
    assert grew("generator_job_build_seconds_bucket", repository="", le="1") == 0  # the RUN alone took 1.2 s
    # The worker's line count and step timings are recorded just after the job's end (builds/worker/runner.py).
    lines_key = ("generator_worker_log_lines_written_total", frozenset({"daemon": job.daemon.name}.items()))

    def lines_counted() -> bool:
        return scrape(farm).get(lines_key, 0) - before.get(lines_key, 0) >= job.log_line_count > 0

    wait_for(lines_counted, "the build's log lines counted", timeout=30)
    steps = StepStats.objects.filter(repository="", step__contains="RUN echo metrics-step")
    step = wait_for(steps.first, "the build's step timings recorded", timeout=30)
    assert step.count >= 1 and step.max_seconds >= 1.2
