from django.urls import path

from builds.consumers import BuildLogConsumer

websocket_urlpatterns = [
    path("b1/build/log/ws/<str:job_id>", BuildLogConsumer.as_asgi()),
]
