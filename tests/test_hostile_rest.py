"""The REST API under hostile input: JSON answers only, a 4xx for bad input
(oversized bodies 413, deep nesting 400), and a 500 with an error id that finds
the traceback in the log. (Bad tokens were 401s already: tests/builds/test_api.py.)"""

from __future__ import annotations

import json
import logging

import pytest
from rest_framework.test import APIClient

from builds import api as builds_api
from builds.models import BuildJob

DOCKERFILE = "FROM busybox\nRUN echo hi\n"
IMAGE = "localhost:5000/team/app"


@pytest.fixture
def api(operator):
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Token {operator.api_token}")
    return client


def detail_of(response) -> str:
    assert response["Content-Type"] == "application/json", response["Content-Type"]
    body = json.loads(response.content)
    assert isinstance(body["detail"], str) and len(body["detail"]) < 300, body
    return body["detail"]


def post_json(api, text: str | bytes):
    return api.generic("POST", "/api/v1/builds/", text, content_type="application/json")


def test_a_25_mb_json_body_is_413_json(api, daemon):
    body = json.dumps({"image": IMAGE, "dockerfile": "RUN true\n" * (25 * 1024 * 1024 // 9)})
    assert len(body) > 25 * 1000 * 1000
    response = post_json(api, body)
    assert response.status_code == 413
    assert "larger than the" in detail_of(response)
    assert not BuildJob.objects.exists()


def test_a_2_mib_form_body_is_413_json(api, daemon):
    response = api.post("/api/v1/builds/", {"image": IMAGE, "dockerfile": "x" * (2 * 1024 * 1024)}, format="multipart")
    # Multipart: the field is over DATA_UPLOAD_MAX_MEMORY_SIZE; urlencoded the same.
    assert response.status_code == 413
    assert "larger than the" in detail_of(response)
    urlencoded = api.generic(
        "POST", "/api/v1/builds/", "dockerfile=" + "x" * (2 * 1024 * 1024), "application/x-www-form-urlencoded"
    )
    assert urlencoded.status_code == 413
    detail_of(urlencoded)


@pytest.mark.parametrize("depth", [100_000, 1_000, 65])
def test_json_nested_past_64_levels_is_400_json(api, daemon, depth):
    response = post_json(api, "[" * depth + "]" * depth)
    assert response.status_code == 400
    assert detail_of(response) == "JSON nested deeper than 64 levels"


def test_the_bounded_parser_still_reads_64_levels_and_refuses_malformed_json(api, daemon):
    nested = "1"
    for _ in range(63):
        nested = f'{{"a": {nested}}}'
    response = post_json(api, f'{{"image": "{IMAGE}", "dockerfile": "FROM busybox\\n", "labels": {nested}}}')
    assert response.status_code == 400  # labels must be strings: the serializer says so, not the parser
    assert "nested" not in response.content.decode()
    for text in ['{"image": ', "NaN", b'{"image": "\xff"}', "[" * 65 + "]" * 65]:
        response = post_json(api, text)
        assert response.status_code == 400, text
        assert detail_of(response).startswith(("JSON parse error", "JSON nested deeper")), text


def test_a_failure_inside_a_view_is_500_json_with_an_id_in_the_log(api, daemon, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full at /srv/secret/path")

    monkeypatch.setattr(builds_api, "submit", broken)
    with caplog.at_level(logging.ERROR):
        response = api.post("/api/v1/builds/", {"image": IMAGE, "dockerfile": DOCKERFILE}, format="json")
    assert response.status_code == 500
    body = json.loads(response.content)
    assert set(body) == {"detail", "error_id"} and "/srv" not in body["detail"]
    [record] = [r for r in caplog.records if body["error_id"] in r.getMessage()]
    assert record.name == "django.request"
    assert "disk full" in str(record.exc_info[1])


def test_an_unknown_api_path_is_404_json(api):
    response = api.get("/api/v1/nothing/here/")
    assert response.status_code == 404
    detail_of(response)
