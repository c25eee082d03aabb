"""The worker's log publisher: events from plain threads reach the channel layer in
order, over the publisher's own long-lived connection (not one per event)."""

from __future__ import annotations

import asyncio
import threading

import redis
from channels_redis.core import RedisChannelLayer

from builds.logs import Publisher


def connections_received(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return client.info("stats")["total_connections_received"]
    finally:
        client.close()


def test_events_from_plain_threads_arrive_in_order_over_one_connection(redis_url):
    layer = RedisChannelLayer(hosts=[redis_url])
    loop = asyncio.new_event_loop()
    channel = loop.run_until_complete(layer.new_channel())
    loop.run_until_complete(layer.group_add("build-log.publisher-test", channel))
    before = connections_received(redis_url)

    publisher = Publisher()
    sender = threading.Thread(
        target=lambda: [publisher.send(layer, "build-log.publisher-test", {"type": "t", "n": n}) for n in range(60)]
    )
    sender.start()
    sender.join()
    assert publisher.drain(timeout=10)

    # One pool on the publisher's loop; async_to_sync per event made 60.
    assert connections_received(redis_url) - before <= 2

    async def receive_all():
        return [await layer.receive(channel) for _ in range(60)]

    received = loop.run_until_complete(asyncio.wait_for(receive_all(), timeout=10))
    assert [event["n"] for event in received] == list(range(60))
    loop.close()  # the publisher's loop keeps its own connections


def test_a_failing_send_is_logged_and_later_events_still_go(redis_url, caplog):
    class Broken:
        async def group_send(self, group, event):
            raise ConnectionError("redis went away")

    publisher = Publisher()
    publisher.send(Broken(), "g", {"type": "lost"})
    layer = RedisChannelLayer(hosts=[redis_url])
    loop = asyncio.new_event_loop()
    channel = loop.run_until_complete(layer.new_channel())
    loop.run_until_complete(layer.group_add("build-log.after-failure", channel))
    publisher.send(layer, "build-log.after-failure", {"type": "t", "n": 1})
    assert publisher.drain(timeout=10)
    assert loop.run_until_complete(asyncio.wait_for(layer.receive(channel), timeout=10))["n"] == 1
    assert "could not publish lost" in caplog.text
    loop.close()  # the publisher's loop keeps its own connections
