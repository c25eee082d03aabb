"""One Redis client per URL per process, with short timeouts: for the farm's own
bookkeeping in Redis (locks, flags), whose callers go on without it."""

from __future__ import annotations

import redis
from django.conf import settings

_clients: dict[str, redis.Redis] = {}


def farm_redis() -> redis.Redis:
    """The client for settings.REDIS_URL (the test settings change it: read at each call)."""
    url = settings.REDIS_URL
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    return _clients[url]
