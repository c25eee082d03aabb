"""channels-redis with a bounded connection pool that waits rather than fails.

channels-redis keeps one redis-py pool per event loop. redis-py 8's asyncio pool
lets 100 connections be in use at once and raises "Too many connections" for
the 101st command, which ended the WebSocket whose consumer sent it (1011).
Bursts of channel-layer commands in one daphne process (viewers of many jobs
joining at once, views publishing) now wait a moment for a connection instead.
"""

from __future__ import annotations

from channels_redis.core import RedisChannelLayer
from redis.asyncio import BlockingConnectionPool


class PooledRedisChannelLayer(RedisChannelLayer):
    def __init__(self, *args, max_connections: int = 20, pool_timeout: float = 10, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_connections = max_connections
        self.pool_timeout = pool_timeout

    def create_pool(self, index: int):
        host = dict(self.hosts[index])
        if "address" not in host:
            return super().create_pool(index)  # Sentinel and the like: channels-redis's own pool
        address = host.pop("address")
        return BlockingConnectionPool.from_url(
            address, max_connections=self.max_connections, timeout=self.pool_timeout, **host
        )
