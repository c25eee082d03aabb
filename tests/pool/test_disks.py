"""Each daemon's data root on a filesystem of its own: the sparse, loop-mounted
ext4 `make up` makes (real mounts, as root), pool.json's size for it, when such a
disk counts as full, and the disk policy held within its size. A real ENOSPC in a
build is tests/farm/test_data_disk.py."""

from __future__ import annotations

import json
import os

import pytest

from pool.disks import DataDisk, FullestWatch, statvfs
from pool.models import DockerDaemon
from pool.seed_pool import PoolFileError, read_pool_file
from scripts import farm
from scripts import localfarm as lf

MIB = 1 << 20


def test_make_up_mounts_a_sparse_filesystem_of_the_size_set_and_grows_it(tmp_path):
    image, root = tmp_path / "data.img", tmp_path / "data"
    lf.mount_data_disk(image, root, 64 * MIB)
    try:
        assert os.path.ismount(root)
        assert image.stat().st_size == 64 * MIB and image.stat().st_blocks * 512 < 16 * MIB  # sparse
        small = os.statvfs(root)
        (root / "kept").write_text("written before")
        lf.mount_data_disk(image, root, 64 * MIB)  # mounted already: left as it is
        lf.unmount_below(tmp_path)
        assert not os.path.ismount(root)

        lf.mount_data_disk(image, root, 96 * MIB)  # a larger size: the file and filesystem grow
        grown = os.statvfs(root)
        assert grown.f_blocks * grown.f_frsize > small.f_blocks * small.f_frsize + 24 * MIB
        assert (root / "kept").read_text() == "written before"
    finally:
        lf.unmount_below(tmp_path)
    assert not os.path.ismount(root)


def test_pool_json_sets_a_daemons_disk_size_and_make_up_has_a_default(tmp_path, monkeypatch):
    path = tmp_path / "pool.json"
    path.write_text(
        json.dumps(
            {
                "docker": [
                    {"url": "127.0.0.1", "port": "19000", "data_disk_gb": 0.5},
                    {"url": "127.0.0.1", "port": "19100"},
                ]
            }
        )
    )
    sized, default = read_pool_file(path)
    assert farm.data_disk_bytes(sized) == 512 * MIB
    assert default.data_disk_gb is None and farm.data_disk_bytes(default) == 20 << 30
    monkeypatch.setattr(farm, "DEFAULT_DATA_DISK_GB", 0)  # GENERATOR_DAEMON_DISK_GB=0: the host's filesystem
    assert farm.data_disk_bytes(default) == 0


@pytest.mark.parametrize("size", [-1, "20", True, [1]])
def test_pool_json_refuses_a_disk_size_that_is_no_number_of_gib(tmp_path, size):
    path = tmp_path / "pool.json"
    path.write_text(json.dumps({"docker": [{"url": "127.0.0.1", "port": "19000", "data_disk_gb": size}]}))
    with pytest.raises(PoolFileError, match="data_disk_gb must be a number of GiB"):
        read_pool_file(path)


@pytest.mark.parametrize(
    "size, free, full",
    [
        (272 * MIB, 882 * 1024, True),  # what dd left of make up's ext4 after ENOSPC
        (272 * MIB, 15 * MIB, True),  # under the 16 MiB margin
        (272 * MIB, 17 * MIB, False),
        (20 << 30, 150 * MIB, True),  # under 1% of a 20 GiB disk
        (20 << 30, 300 * MIB, False),
    ],
)
def test_a_data_disk_is_full_below_a_margin(size, free, full):
    disk = DataDisk("/var/lib/docker/100000.100000", size, free)
    assert disk.full is full
    assert disk.describe().endswith(f"MiB free of {size / MIB:.0f} MiB on its data root /var/lib/docker/100000.100000")


def test_the_disk_policy_in_force_fits_in_three_quarters_of_the_data_disk(settings):
    settings.GENERATOR_DISK_IMAGES_LIMIT_MB, settings.GENERATOR_DISK_BUILD_CACHE_LIMIT_MB = 20480, 10240
    unmeasured = DockerDaemon(name="d", url="unix:///a")
    assert (unmeasured.images_limit_bytes, unmeasured.build_cache_limit_bytes) == (20480 * MIB, 10240 * MIB)
    large = DockerDaemon(name="d", url="unix:///a", data_disk_bytes=100 << 30)
    assert (large.images_limit_bytes, large.build_cache_limit_bytes) == (20480 * MIB, 10240 * MIB)  # it fits
    # 30 GiB of limits on a 300 MiB disk: 225 MiB between them, in the same proportion.
    small = DockerDaemon(name="d", url="unix:///a", data_disk_bytes=300 * MIB)
    assert (small.images_limit_bytes, small.build_cache_limit_bytes) == (150 * MIB, 75 * MIB)
    mine = DockerDaemon(
        name="d", url="unix:///a", data_disk_bytes=300 * MIB, images_limit_mb=100, build_cache_limit_mb=50
    )
    assert (mine.images_limit_bytes, mine.build_cache_limit_bytes) == (100 * MIB, 50 * MIB)


def test_the_fullest_sample_outlives_the_files_that_filled_the_disk(tmp_path):
    """As when BuildKit lets go of a failed step's files before its error reaches the worker."""
    image, root = tmp_path / "data.img", tmp_path / "data"
    lf.mount_data_disk(image, root, 32 * MIB)
    try:
        watch = FullestWatch(statvfs(str(root)), every=0)
        assert not watch.fullest.full
        with pytest.raises(OSError, match="No space left on device"), open(root / "big", "wb") as big:
            while True:
                big.write(b"\0" * MIB)
                big.flush()
                os.fsync(big.fileno())
        watch.sample()
        (root / "big").unlink()
        watch.sample(now=True)
        assert watch.fullest.full and watch.fullest.free < MIB
        assert not statvfs(str(root)).full
    finally:
        lf.unmount_below(tmp_path)
    assert statvfs(str(tmp_path / "not-there")) is None
