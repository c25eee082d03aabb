"""GET /api/v1/registry/repositories/: what the caller may pull from the farm's
registry. The registry cannot filter its own catalog (`/v2/_catalog` lists every
repository or, without `registry:catalog:*`, nothing), so the token server
grants the catalog to staff only (teams/registry_access.py) and this lists, for
anyone logged in, the catalog cut down to what their token would let them pull."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import permissions
from rest_framework.decorators import api_view, permission_classes
from rest_framework.exceptions import NotFound
from rest_framework.response import Response

from builds.registry.accounts import farm_signer
from builds.registry.client import RegistryAPI, RegistryError
from teams.registry_access import account_for_user, readable


@extend_schema(
    description="The repositories of the farm's registry the caller may pull (their teams' namespaces and public "
    "ones; staff: all). The registry's own /v2/_catalog lists every repository, so the farm grants it to staff only.",
    responses={200: {"type": "object"}},
)
@api_view(["GET"])
@permission_classes([permissions.IsAuthenticated])
def registry_repositories(request) -> Response:
    host = settings.GENERATOR_REGISTRY_TOKEN_HOST
    if not host:
        raise NotFound("this farm runs no registry of its own (GENERATOR_REGISTRY_TOKEN_HOST is empty)")
    try:
        with RegistryAPI(host, token_source=farm_signer().farm_token) as api:
            names = api.catalog()
    except RegistryError as exc:
        return Response({"detail": str(exc)}, status=502 if exc.transient else 500)
    return Response({"registry": host, "repositories": readable(account_for_user(request.user), host, names)})
