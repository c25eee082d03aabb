"""The job page that commit statuses link to."""

from __future__ import annotations

from django.test import override_settings

from builds.logs import LogWriter
from builds.models import BuildJob


def make_job(daemon, **fields):
    job = BuildJob.objects.create(
        image="localhost:5000/a/b:latest", dockerfile="FROM busybox\n", daemon=daemon, **fields
    )
    writer = LogWriter(job.id, last_seq=0, batch_lines=100, flush_seconds=60)
    for text in ["Step 1/1 : FROM busybox", "<script>alert(1)</script>"]:
        writer.write(text)
    writer.flush()
    return job


def test_the_page_shows_the_job_and_its_log_escaped(client, reader, daemon):
    job = make_job(daemon, status="failed", error="returned a non-zero code: 3")
    client.force_login(reader)
    page = client.get(f"/builds/{job.id}/").content.decode()
    assert "localhost:5000/a/b:latest" in page and "returned a non-zero code: 3" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "Log (2 lines)" in page


def test_the_page_needs_a_login_unless_logs_are_public(client, daemon):
    job = make_job(daemon)
    response = client.get(f"/builds/{job.id}/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    with override_settings(GENERATOR_PUBLIC_LOGS=True):
        assert client.get(f"/builds/{job.id}/").status_code == 200


def test_an_unknown_job_is_404(client, reader, db):
    client.force_login(reader)
    assert client.get(f"/builds/{'0' * 32}/").status_code == 404
