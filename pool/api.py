"""REST API v1 for the daemon pool: anyone logged in reads it, staff change it."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import permissions, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from audit.hooks import AuditedViewSet, record_change
from pool import disk_prune, health
from pool.models import DISK_FIELDS, HEALTH_FIELDS, DockerDaemon
from pool.tls import TLS_FIELDS


class DaemonSerializer(serializers.ModelSerializer):
    queue = serializers.CharField(read_only=True)
    uses_tls = serializers.BooleanField(read_only=True)
    # The limits in force: the row's, or the farm's default where it has none.
    images_limit_bytes = serializers.IntegerField(read_only=True)
    build_cache_limit_bytes = serializers.IntegerField(read_only=True)

    class Meta:
        model = DockerDaemon
        fields = ["id", "name", "url", "group", "capacity", "enabled", "draining", "queue", *TLS_FIELDS, "uses_tls"]
        fields += ["build_memory_mb", "build_cpus", "build_pids", "emulated_platforms", "builds_platforms"]
        fields += ["images_limit_mb", "build_cache_limit_mb", "images_limit_bytes", "build_cache_limit_bytes"]
        fields += HEALTH_FIELDS + DISK_FIELDS
        read_only_fields = list(HEALTH_FIELDS + DISK_FIELDS)
        extra_kwargs = {"tls_key": {"write_only": True, "style": {"input_type": "password"}}}

    def validate(self, data):
        """The whole entry is checked (loopback or TLS, PEM that parses); an update
        that leaves out the key keeps the stored one, unless it clears the certificates."""
        entry = {name: getattr(self.instance, name, "") for name in ["url", *TLS_FIELDS]}
        entry.update((name, value) for name, value in data.items() if name in entry)
        if "tls_key" not in data and not (entry["tls_ca"] or entry["tls_cert"]):
            data["tls_key"] = entry["tls_key"] = ""
        DockerDaemon(**entry).clean()
        return data


class StaffWrites(permissions.BasePermission):
    message = "only staff may change the pool"

    def has_permission(self, request, view) -> bool:
        return request.method in permissions.SAFE_METHODS or bool(request.user.is_staff)


class DaemonViewSet(AuditedViewSet, viewsets.ModelViewSet):
    serializer_class = DaemonSerializer
    permission_classes = [permissions.IsAuthenticated, StaffWrites]
    queryset = DockerDaemon.objects.order_by("name")

    @extend_schema(request=None, responses={200: DaemonSerializer})
    @action(detail=True, methods=["post"])
    def drain(self, request, pk=None):
        return self._set(draining=True)

    @extend_schema(request=None, responses={200: DaemonSerializer})
    @action(detail=True, methods=["post"])
    def enable(self, request, pk=None):
        return self._set(enabled=True, draining=False)

    @extend_schema(request=None, responses={200: DaemonSerializer})
    @action(detail=True, methods=["post"])
    def disable(self, request, pk=None):
        return self._set(enabled=False)

    @extend_schema(request=None, responses={200: DaemonSerializer})
    @action(detail=True, methods=["post"], url_path="check")
    def check_now(self, request, pk=None):
        daemon = self.get_object()
        health.check_now(daemon)
        daemon.refresh_from_db()
        return Response(DaemonSerializer(daemon).data)

    @extend_schema(request=None, responses={200: DaemonSerializer})
    @action(detail=True, methods=["post"])
    def prune(self, request, pk=None):
        """Prunes the daemon's images and build cache to its limits now, as beat does."""
        daemon = self.get_object()
        result = disk_prune.prune_daemons(DockerDaemon.objects.filter(pk=daemon.pk))[daemon.name]
        daemon.refresh_from_db()  # like check: the outcome is on the row (disk_error when it failed)
        outcome = f"failed: {result.error}" if result.error else result.summary()
        return Response({**DaemonSerializer(daemon).data, "prune": outcome})

    def _set(self, **fields) -> Response:
        daemon = self.get_object()
        DockerDaemon.objects.filter(pk=daemon.pk).update(**fields)
        daemon.refresh_from_db()
        record_change("change", daemon, list(fields))
        return Response(DaemonSerializer(daemon).data)
