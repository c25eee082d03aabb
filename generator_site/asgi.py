"""ASGI entry point, served by daphne: Django for HTTP, Channels for WebSockets."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "generator_site.settings")
# Each request runs in a thread of its own here: on PostgreSQL, borrow connections
# from a pool rather than open one per request (settings.py, GENERATOR_DB_POOL).
os.environ.setdefault("GENERATOR_DB_POOL", "true")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from builds.jobs.dispatch_soon import DISPATCH_IN_BACKGROUND, in_background  # noqa: E402
from builds.routing import websocket_urlpatterns  # noqa: E402
from generator_site.request_limits import RequestHeadLimits  # noqa: E402
from generator_site.websocket_auth import TokenAuthMiddleware, browser_origin_validator  # noqa: E402
from generator_site.websocket_errors import NoSuchPath  # noqa: E402

# In daphne started by serve.py, a submit's dispatch pass runs in a thread of the
# process after the answer (builds/jobs/dispatch_soon.py); where this module is only
# imported (the tests' WebSocket communicator), passes run where they are asked for.
if os.environ.get(DISPATCH_IN_BACKGROUND) == "true":
    in_background()

# Any other path: a clean 4404 close, not the router's ValueError.
websocket_routes = [*websocket_urlpatterns, re_path(r"", NoSuchPath.as_asgi())]

application = RequestHeadLimits(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            "websocket": browser_origin_validator(
                AuthMiddlewareStack(TokenAuthMiddleware(URLRouter(websocket_routes)))
            ),
        }
    )
)
