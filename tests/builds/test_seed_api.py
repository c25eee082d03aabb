"""The seed's /b1 endpoints: what they accept, what they refuse and why.

The builds these tests submit are queued in the test Redis and never run: the
end-to-end tests (tests/farm/) run them.
"""

from __future__ import annotations

import base64

import pytest
from django.test import override_settings

from builds.models import BuildJob, BuildLogLine

DOCKERFILE = "FROM busybox\nRUN echo hi\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def submit(client, token=None, method="get", **params):
    headers = {"Authorization": f"Token {token}"} if token else {}
    return getattr(client, method)("/b1/build", params, headers=headers)


@pytest.fixture
def pool(daemon):
    return daemon


def test_it_answers_a_job_id_as_plain_text(client, operator, pool):
    response = submit(client, operator.api_token, imagename="localhost:5000/cts/example", dockerfile=b64(DOCKERFILE))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    job_id = response.content.decode()
    assert len(job_id) == 32 and int(job_id, 16) >= 0
    job = BuildJob.objects.get(pk=job_id)
    assert (job.status, job.image, job.dockerfile) == ("queued", "localhost:5000/cts/example:latest", DOCKERFILE)
    assert job.submitted_by == operator


def test_the_seed_dockerfile_mode_takes_the_dockerfile_as_context(client, operator, pool):
    response = submit(
        client, operator.api_token, imagename="localhost:5000/a/b:v1", mode="dockerfile", context=b64(DOCKERFILE)
    )
    assert response.status_code == 200
    assert BuildJob.objects.get(pk=response.content.decode()).dockerfile == DOCKERFILE


def test_an_unescaped_plus_in_the_query_string_still_decodes(client, operator, pool):
    # '>' and '?' make '+' and '/' appear in base64; a '+' not escaped in a URL arrives as a space.
    dockerfile = "FROM busybox\nRUN echo '>>>???' > /x\n"
    encoded = b64(dockerfile)
    assert "+" in encoded or "/" in encoded
    response = submit(client, operator.api_token, imagename="localhost:5000/a/b", dockerfile=encoded.replace("+", " "))
    assert response.status_code == 200, response.content
    assert BuildJob.objects.get(pk=response.content.decode()).dockerfile == dockerfile


def test_a_large_dockerfile_can_be_posted_as_a_form(client, operator, pool):
    dockerfile = "FROM busybox\n" + "".join(f"LABEL n{i}={i}\n" for i in range(20000))
    response = submit(client, operator.api_token, "post", imagename="localhost:5000/a/b", dockerfile=b64(dockerfile))
    assert response.status_code == 200, response.content
    assert BuildJob.objects.get(pk=response.content.decode()).dockerfile == dockerfile


@pytest.mark.parametrize(
    ("params", "status", "reason"),
    [
        ({"dockerfile": b64(DOCKERFILE)}, 400, "imagename is required"),
        ({"imagename": "Local/UPPER", "dockerfile": b64(DOCKERFILE)}, 400, "must be lowercase"),
        ({"imagename": "a/b:bad~tag", "dockerfile": b64(DOCKERFILE)}, 400, "invalid reference format"),
        ({"imagename": "a/b@sha256:" + "f" * 64, "dockerfile": b64(DOCKERFILE)}, 400, "cannot name a digest"),
        ({"imagename": "a/b"}, 400, "dockerfile is required"),
        ({"imagename": "a/b", "dockerfile": ""}, 400, "dockerfile is empty"),
        ({"imagename": "a/b", "dockerfile": "not*base64!"}, 400, "not valid base64"),
        ({"imagename": "a/b", "dockerfile": "QUJDRA=="[:5]}, 400, "not valid base64"),
        ({"imagename": "a/b", "dockerfile": base64.b64encode(b"\xff\xfe").decode()}, 400, "UTF-8"),
        ({"imagename": "a/b", "dockerfile": b64("   \n\n")}, 400, "the Dockerfile is empty"),
        ({"imagename": "a/b", "dockerfile": b64("FROM x\x00")}, 400, "NUL"),
        ({"imagename": "a/b", "mode": "git", "context": b64(DOCKERFILE)}, 400, "unknown mode 'git'"),
        ({"imagename": "a/b", "mode": "dockerfile", "dockerfile": b64(DOCKERFILE)}, 400, "context is required"),
    ],
)
def test_it_refuses_bad_input_with_a_reason_and_stores_nothing(client, operator, pool, params, status, reason):
    response = submit(client, operator.api_token, **params)
    assert response.status_code == status
    body = response.content.decode()
    assert reason in body and body.count("\n") == 1  # one line
    assert not BuildJob.objects.exists()


@override_settings(GENERATOR_MAX_DOCKERFILE_BYTES=1024)
def test_an_oversize_dockerfile_is_413(client, operator, pool):
    response = submit(client, operator.api_token, imagename="a/b", dockerfile=b64("FROM busybox\n" + "#" * 1100))
    assert response.status_code == 413
    assert "the limit is 1024 bytes" in response.content.decode()
    assert not BuildJob.objects.exists()


def test_a_dockerfile_over_one_mebibyte_is_refused_by_default(client, operator, pool):
    huge = "FROM busybox\n" + "#" * (1024 * 1024)
    response = submit(client, operator.api_token, "post", imagename="a/b", dockerfile=b64(huge))
    assert response.status_code == 413
    assert not BuildJob.objects.exists()


def test_an_empty_pool_is_503_and_stores_nothing(client, operator, db):
    response = submit(client, operator.api_token, imagename="localhost:5000/a/b", dockerfile=b64(DOCKERFILE))
    assert response.status_code == 503
    assert "no enabled Docker daemon" in response.content.decode()
    assert not BuildJob.objects.exists()


def test_a_disabled_pool_is_503_too(client, operator, pool):
    pool.enabled = False
    pool.save()
    response = submit(client, operator.api_token, imagename="localhost:5000/a/b", dockerfile=b64(DOCKERFILE))
    assert response.status_code == 503


def test_a_submitted_job_is_dispatched_after_commit(client, operator, pool, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = submit(client, operator.api_token, imagename="localhost:5000/a/b", dockerfile=b64(DOCKERFILE))
    assert BuildJob.objects.get(pk=response.content.decode()).daemon == pool


# --- who may submit -------------------------------------------------------------


def test_anonymous_submissions_are_refused_by_default(client, pool):
    response = submit(client, imagename="a/b", dockerfile=b64(DOCKERFILE))
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert "Authorization: Token" in response.content.decode()
    assert not BuildJob.objects.exists()


def test_a_wrong_token_is_401(client, pool):
    response = submit(client, "0" * 40, imagename="a/b", dockerfile=b64(DOCKERFILE))
    assert response.status_code == 401
    assert "invalid or inactive API token" in response.content.decode()


def test_a_user_without_the_add_permission_is_403(client, reader, pool):
    response = submit(client, reader.api_token, imagename="a/b", dockerfile=b64(DOCKERFILE))
    assert response.status_code == 403
    assert not BuildJob.objects.exists()


def test_a_session_cookie_alone_cannot_submit(client, operator, pool):
    # A GET that writes must not ride on a browser's cookies (cross-site requests).
    client.force_login(operator)
    assert submit(client, imagename="a/b", dockerfile=b64(DOCKERFILE)).status_code == 401


@override_settings(GENERATOR_ANONYMOUS_BUILDS=True)
def test_an_operator_can_open_anonymous_submissions(client, pool, allowed_registry):
    response = submit(client, imagename="localhost:5000/a/b", dockerfile=b64(DOCKERFILE))
    assert response.status_code == 200
    assert BuildJob.objects.get(pk=response.content.decode()).submitted_by is None


# --- reading a log line ------------------------------------------------------------


@pytest.fixture
def logged_job(pool, team):
    job = BuildJob.objects.create(image="a/b:latest", dockerfile=DOCKERFILE, daemon=pool, status="building", team=team)
    BuildLogLine.objects.bulk_create(BuildLogLine(job=job, seq=i + 1, text=f"line {i}") for i in range(3))
    BuildJob.objects.filter(pk=job.pk).update(log_line_count=3)
    return job


def read_line(client, job_id, token=None, **params):
    headers = {"Authorization": f"Token {token}"} if token else {}
    return client.get(f"/b1/build/log/http/{job_id}", params, headers=headers)


def test_count_selects_a_line_from_zero(client, reader, logged_job):
    assert read_line(client, logged_job.id, reader.api_token, count=0).content == b"line 0"
    response = read_line(client, logged_job.id, reader.api_token, count=2)
    assert (response.status_code, response.content, response["X-Build-Status"]) == (200, b"line 2", "building")


def test_a_line_not_written_yet_is_empty_while_the_job_runs(client, reader, logged_job):
    response = read_line(client, logged_job.id, reader.api_token, count=3)
    assert (response.status_code, response.content) == (200, b"")


def test_a_line_past_the_end_of_a_finished_log_is_404(client, reader, logged_job):
    BuildJob.objects.filter(pk=logged_job.pk).update(status="succeeded")
    response = read_line(client, logged_job.id, reader.api_token, count=3)
    assert response.status_code == 404
    assert "has 3 lines" in response.content.decode()


def test_a_browser_session_can_read_a_log(client, reader, logged_job):
    client.force_login(reader)
    assert read_line(client, logged_job.id, count=1).content == b"line 1"


@pytest.mark.parametrize("count", ["-1", "x", "1.5"])
def test_a_bad_count_is_400(client, reader, logged_job, count):
    response = read_line(client, logged_job.id, reader.api_token, count=count)
    assert response.status_code == 400
    assert "count must be a whole number" in response.content.decode()


def test_an_unknown_job_is_404(client, reader, db):
    response = read_line(client, "f" * 32, reader.api_token)
    assert response.status_code == 404
    assert "no build job with id" in response.content.decode()


def test_logs_need_a_login_by_default(client, logged_job):
    assert read_line(client, logged_job.id).status_code == 401


@override_settings(GENERATOR_PUBLIC_LOGS=True)
def test_an_operator_can_make_logs_public(client, logged_job):
    assert read_line(client, logged_job.id).content == b"line 0"
