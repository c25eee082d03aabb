"""The worker's log publisher: events from plain threads reach the channel layer in
order, over the publisher's own long-lived connection (not one per event); and the
farm's channel layer keeps to a bounded pool of connections."""

from __future__ import annotations

import asyncio
import copy
import threading

import redis
from channels_redis.core import RedisChannelLayer
from django.utils.module_loading import import_string

from builds.logs.writer import Publisher
from generator_site import settings as site_settings


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


def test_the_farms_layer_waits_for_a_pooled_connection_instead_of_failing_past_the_pool(redis_url):
    # The layer as settings.py configures it, on the suite's Redis. redis-py 8's
    # own pool raised "Too many connections" for the 101st command at once.
    config = copy.deepcopy(site_settings.CHANNEL_LAYERS["default"])
    config["CONFIG"]["hosts"][0]["address"] = redis_url
    layer = import_string(config["BACKEND"])(**config["CONFIG"])
    before = connections_received(redis_url)

    async def join_300_at_once():
        channels = [await layer.new_channel() for _ in range(300)]
        await asyncio.gather(*(layer.group_add("build-log.pool-test", channel) for channel in channels))
        return await layer.connection(0).zcard(layer._group_key("build-log.pool-test"))

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(join_300_at_once()) == 300
    finally:
        loop.close()
    # The pool's connections, and the one that asks Redis for the count.
    assert connections_received(redis_url) - before <= config["CONFIG"]["max_connections"] + 1
