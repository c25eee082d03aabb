"""REST API v1 and its OpenAPI schema and docs, served from the farm itself."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from builds.api import BuildViewSet, RegistryViewSet, RepositoryViewSet, TeamSigningKeyActions, signing_key
from builds.registry.listing import registry_repositories
from notifications.api import EndpointViewSet
from pool.api import DaemonViewSet
from teams import api as teams_api


class TeamViewSet(TeamSigningKeyActions, teams_api.TeamViewSet):
    """Teams' API with the team's own signing key (builds') joined in."""


router = DefaultRouter()
router.register("builds", BuildViewSet, basename="build")
router.register("daemons", DaemonViewSet, basename="daemon")
router.register("repositories", RepositoryViewSet, basename="repository")
router.register("registries", RegistryViewSet, basename="registry")
router.register("teams", TeamViewSet, basename="team")
router.register("namespaces", teams_api.NamespaceViewSet, basename="namespace")
router.register("notification-endpoints", EndpointViewSet, basename="notification-endpoint")

urlpatterns = [
    path("api/v1/signing-key/", signing_key, name="signing-key"),
    path("api/v1/registry/repositories/", registry_repositories, name="registry-repositories"),
    path("api/v1/", include(router.urls)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
]
