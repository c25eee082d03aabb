"""A schema fuzz run: schemathesis generates requests from the served OpenAPI
schema, valid and not, for every operation; none may answer 5xx.

The WSGI app runs in this process on the test database. The daemon health
check is left out: fuzzed daemon URLs would have it connect to arbitrary hosts,
and only loopback may be targeted here (tests/test_api.py covers it).
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

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
