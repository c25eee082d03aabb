"""A schema fuzz run: schemathesis generates requests from the served OpenAPI
schema, valid and not, for every operation; none may answer 5xx.

The WSGI app runs in this process on the test database. The daemon health
check is left out: fuzzed daemon URLs would have it connect to arbitrary hosts,
and only loopback may be targeted here (tests/builds/test_api.py covers it).

Then every operation that takes a JSON body gets two hostile ones the generator
would not make: 100,000 nested arrays (a 400, not a RecursionError's 500) and a
3 MiB document (a 413), each answered in JSON.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error

from builds.models import Registry, Repository
from notifications.models import Endpoint

schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application()).exclude(
    path_regex=r"/check/$"
)


@pytest.fixture
def token(operator, daemon):
    # Django closes the connection after each request; inside a test transaction
    # that would close the test's own. Its test client does the same as this.
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    yield operator.api_token
    for signal in (request_started, request_finished):
        signal.connect(close_old_connections)


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_makes_the_api_fail(case, token):
    case.call_and_validate(headers={"Authorization": f"Token {token}"}, checks=[not_a_server_error])


# --- hostile bodies for every operation that takes one ---------------------------

DEEP = "[" * 100_000 + "]" * 100_000
HUGE = '{"x": "' + "A" * (3 * 1024 * 1024) + '"}'  # over DATA_UPLOAD_MAX_MEMORY_SIZE


def operations_with_a_json_body():
    for result in schema.get_all_operations():
        operation = result.ok()
        if any(body.media_type == "application/json" for body in operation.body):
            yield operation.method.upper(), operation.path


@pytest.mark.parametrize(("method", "path"), sorted(operations_with_a_json_body()))
@pytest.mark.parametrize(("body", "expected"), [(DEEP, 400), (HUGE, 413)], ids=["deep", "huge"])
def test_deep_or_huge_json_is_a_4xx_for_every_operation(method, path, body, expected, operator, daemon, team):
    repository = Repository.objects.create(
        full_name="o/r", clone_url="https://github.com/o/r.git", image="localhost:5000/o/r", webhook_secret="s"
    )
    ids = {
        "daemons": daemon.pk,
        "registries": Registry.objects.get().pk,
        "repositories": repository.pk,
        "namespaces": team.namespaces.get().pk,
        "notification-endpoints": Endpoint.objects.create(name="n", repository=repository, url="https://h.invalid/").pk,
    }
    collection = path.split("/")[3]
    url = path.replace("{id}", str(ids[collection])) if "{id}" in path else path
    url = url.replace("{slug}", team.slug)
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Token {operator.api_token}")
    response = client.generic(method, url, body, content_type="application/json")
    assert response.status_code == expected, (method, url, response.content[:300])
    assert response["Content-Type"] == "application/json"
