"""The seed's /b1 endpoints under hostile input: every answer a short text/plain
line and a 4xx for bad input, a 500 with an id that finds the traceback in the log.

The head limits (a 20 KB URL is a 414) need daphne itself: tests/test_hostile_web.py.
Bad base64, bad image names and the like were 400s already: tests/builds/test_seed_api.py.
"""

from __future__ import annotations

import base64
import logging
import re

import pytest
from django.test import Client

from builds import seed_api
from builds.models import BuildJob

IMAGE = "localhost:5000/cts/example"


@pytest.fixture
def client():
    # A 500 must come back as an answer, not as the exception re-raised in the test.
    return Client(raise_request_exception=False)


def auth(user) -> dict[str, str]:
    return {"Authorization": f"Token {user.api_token}"}


def assert_one_text_line(response) -> str:
    assert response["Content-Type"].startswith("text/plain"), response["Content-Type"]
    text = response.content.decode()
    assert text.endswith("\n") and text.count("\n") == 1, text
    assert len(text) < 300, text
    return text


def test_a_2_mib_form_post_is_413_text(client, operator, daemon):
    dockerfile = base64.b64encode(b"A" * (1536 * 1024)).decode()  # 2 MiB of base64
    response = client.post("/b1/build", {"imagename": IMAGE, "dockerfile": dockerfile}, headers=auth(operator))
    assert response.status_code == 413
    assert "larger than the" in assert_one_text_line(response)
    assert not BuildJob.objects.exists()


def test_too_many_form_fields_are_413_text(client, operator, daemon):
    fields = {f"f{i}": "x" for i in range(1100)}
    response = client.post("/b1/build", {"imagename": IMAGE, **fields}, headers=auth(operator))
    assert response.status_code == 413
    assert "more than 1000 fields" in assert_one_text_line(response)


def test_an_unknown_b1_path_is_404_text(client):
    response = client.get("/b1/nothing")
    assert response.status_code == 404
    assert_one_text_line(response)


def test_a_failure_inside_the_view_is_500_text_with_an_id_that_finds_the_traceback(
    client, operator, daemon, monkeypatch, caplog
):
    def broken(**kwargs):
        raise RuntimeError("the database fell over")

    monkeypatch.setattr(seed_api, "submit_build", broken)
    with caplog.at_level(logging.ERROR):
        response = client.get(
            "/b1/build",
            {"imagename": IMAGE, "dockerfile": base64.b64encode(b"FROM busybox\n").decode()},
            headers=auth(operator),
        )
    assert response.status_code == 500
    text = assert_one_text_line(response)
    assert "database" not in text and "Traceback" not in text
    error_id = re.search(r"error id ([0-9a-f]{16})", text).group(1)
    [record] = [r for r in caplog.records if error_id in r.getMessage()]
    assert record.exc_info and "the database fell over" in str(record.exc_info[1])
