"""The farm's processes log one structured line per record, and a build's records
name its job, daemon and attempt (docs/deploy.md, "Logs")."""

from __future__ import annotations

import re

from builds.models import BuildJob
from tests.farm.conftest import follow, submit

_RECORD = re.compile(r"^time=\S+ level=\w+ logger=\S+ role=(\w+) pid=\d+ ")


def records(farm, process: str) -> list[str]:
    return [line for line in farm.supervisor.log_path(process).read_text().splitlines() if _RECORD.match(line)]


def test_a_builds_records_in_its_workers_log_name_the_job_daemon_and_attempt(farm, token):
    job_id = submit(farm, token, f"{farm.registry}/logs/structured", "FROM busybox\nRUN echo 'a \"quoted\" line'\n")
    assert follow(farm, job_id, token).end["status"] == "succeeded"
    job = BuildJob.objects.select_related("daemon").get(pk=job_id)
    mine = [line for line in records(farm, farm.worker_of(job.daemon.name)) if f" job={job_id} " in line]
    fields = f"role=worker pid=\\d+ job={job_id} daemon={re.escape(job.daemon.name)} attempt=1 "
    assert any(
        re.search(f'logger=builds.worker.runner {fields}msg="job {job_id} attempt 1 claimed by ', line) for line in mine
    )
    assert any(
        re.search(f'logger=builds.worker.runner {fields}msg="job {job_id} attempt 1: Pushed ', line) for line in mine
    )
    # The other processes say who they are.
    assert any("role=beat" in line and "ready." in line for line in records(farm, "control"))
    assert any("role=web" in line and "Listening on TCP address" in line for line in records(farm, "web"))
