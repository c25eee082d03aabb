"""Which daemons a pushed image warms, and the data disk's bound on a warm
(pool/prepull.py: pure functions, rows never saved)."""

from __future__ import annotations

from django.test import override_settings

from pool.disks import DataDisk
from pool.models import DockerDaemon
from pool.prepull import disk_refusal, targets

MIB = 1 << 20
_pk = iter(range(1, 1000))


def daemon(name: str, **fields) -> DockerDaemon:
    fields = {"native_platform": "linux/amd64", **fields}
    return DockerDaemon(pk=next(_pk), name=name, url="tcp://127.0.0.1:9", **fields)


def names(daemons) -> list[str]:
    return [d.name for d in daemons]


@override_settings(GENERATOR_DISK_IMAGES_LIMIT_MB=100)
def test_a_push_warms_the_daemons_of_its_group_that_take_builds_and_no_other():
    source = daemon("source")
    pool = [
        source,
        daemon("peer"),
        daemon("other-group", group="team-b"),
        daemon("disabled", enabled=False),
        daemon("draining", draining=True),
        daemon("sick", healthy=False),
        daemon("no-worker", worker_online=False),
        daemon("disk-full", disk_full=True),
        daemon("arm", native_platform="linux/arm64"),
        daemon("not-measured-yet", native_platform=""),
        daemon("images-at-their-limit", disk_farm_images_bytes=100 * MIB),
        daemon("images-under-their-limit", disk_farm_images_bytes=99 * MIB),
    ]
    warmed = targets(pool, source, "", "r/app", most=0)
    assert names(warmed) == ["peer", "not-measured-yet", "images-under-their-limit"]


def test_a_pinned_repositorys_push_warms_its_own_group_only():
    source = daemon("b1", group="team-b")
    pool = [source, daemon("b2", group="team-b"), daemon("shared"), daemon("c1", group="team-c")]
    assert names(targets(pool, source, "team-b", "r/app", most=2)) == ["b2"]
    assert targets([source], source, "team-b", "r/app", most=2) == []  # a group of one: nothing to warm


def test_a_push_warms_a_few_daemons_the_same_for_each_push_of_a_repository():
    """128 daemons: each image pulled onto `most`, not 127 (bench/scale.py's pool
    spent 270 ms of worker CPU a build asking warms of every one)."""
    source, *others = pool = [daemon(f"d{i}") for i in range(128)]
    first = names(targets(pool, source, "", "r/app", most=2))
    assert len(first) == 2 and "d0" not in first
    assert names(targets(list(reversed(pool)), source, "", "r/app", most=2)) == first  # not the pool's order
    spread = {name for repository in range(40) for name in names(targets(pool, source, "", f"r/{repository}", most=2))}
    assert len(spread) > 20  # repositories land on different daemons


def test_a_data_disk_at_or_over_its_bound_takes_no_warm():
    half_used = DataDisk("/data", size=1000 * MIB, free=500 * MIB)
    assert disk_refusal(half_used, 0.6) == ""
    assert "50% used" in disk_refusal(half_used, 0.5)
    full = DataDisk("/data", size=1000 * MIB, free=5 * MIB)
    assert disk_refusal(full, 1.0) != ""  # full, whatever the bound
    assert disk_refusal(None, 0.5) == ""  # not seen from this host: the images limit bounds it
