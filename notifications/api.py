"""/api/v1/notification-endpoints/: a team's endpoints (staff: all, and the
farm-wide ones), their deliveries, and redelivery. Another team's endpoint is a 404."""

from __future__ import annotations

from django.db.models import Q
from drf_spectacular.utils import extend_schema
from rest_framework import permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.response import Response

from builds.jobs import ownership
from notifications import sending
from notifications.models import Delivery, Endpoint
from notifications.serializers import DeliverySerializer, EndpointSerializer


class EndpointViewSet(viewsets.ModelViewSet):
    serializer_class = EndpointSerializer
    permission_classes = [permissions.IsAuthenticated]

    def get_queryset(self):
        user = self.request.user
        endpoints = Endpoint.objects.select_related("repository").order_by("name", "pk")
        if ownership.is_staff(user):
            return endpoints
        return endpoints.filter(Q(repository__in=ownership.team_repositories(user)))

    @extend_schema(responses=DeliverySerializer(many=True))
    @action(detail=True, methods=["get"])
    def deliveries(self, request, pk=None):
        """The endpoint's latest 50 deliveries, each with its tries and answers."""
        endpoint = self.get_object()
        latest = Delivery.objects.filter(endpoint=endpoint).prefetch_related("attempts")[:50]
        return Response(DeliverySerializer(latest, many=True).data)

    @extend_schema(request=None, responses=DeliverySerializer)
    @action(detail=True, methods=["post"], url_path=r"deliveries/(?P<delivery_id>[0-9a-f-]{36})/redeliver")
    def redeliver(self, request, pk=None, delivery_id=None):
        """Sends a delivery's body again, as a new delivery."""
        endpoint = self.get_object()
        delivery = Delivery.objects.filter(endpoint=endpoint, pk=delivery_id).first()
        if delivery is None:
            raise NotFound("no such delivery of this endpoint")
        again = sending.redeliver(delivery)
        return Response(DeliverySerializer(again).data, status=status.HTTP_202_ACCEPTED)
