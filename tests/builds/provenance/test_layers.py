"""An image's SBOM files merged from its layers as overlay stacks them
(builds/provenance/layers.py): whiteouts, opaque directories and entries that
replace a lower file, each layer's changes applying to the layers below it."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from builds.provenance import layers, sbom
from tests.builds.provenance.tars import DIRECTORY, Link, tar_bytes

STATUS = "Package: libc6\nStatus: install ok installed\nVersion: 2.36\n\nPackage: curl\nVersion: 7.88\n"
REWRITTEN = "Package: libc6\nStatus: install ok installed\nVersion: 2.36\n"
DIST_INFO = "usr/lib/python3/dist-packages/requests-2.32.3.dist-info"
METADATA = "Name: requests\nVersion: 2.32.3\n"


def layer(entries: dict, mode: str = "r|") -> layers.Contribution:
    data = tar_bytes(entries)
    return layers.read_layer(io.BytesIO(gzip.compress(data) if mode == "r|gz" else data), mode)


def packages(*stack: layers.Contribution) -> set[str]:
    return {p.name for p in sbom.contents_of(layers.merge(stack)).packages}


def test_a_rewritten_dpkg_status_replaces_the_lower_one():
    base = layer({"var/lib/dpkg/status": STATUS})
    assert packages(base) == {"libc6", "curl"}
    assert packages(base, layer({"var/lib/dpkg/status": REWRITTEN})) == {"libc6"}


def test_a_layer_holding_the_databases_directories_keeps_the_files_below_them():
    base = layer({"etc/os-release": "ID=debian\n", "var/lib/dpkg/status": STATUS})
    # A diff names the directories above what it changed: directories merge with those below.
    above = layer({"etc/": DIRECTORY, "var/": DIRECTORY, "var/lib/": DIRECTORY, "var/lib/dpkg/": DIRECTORY})
    assert not above.removed
    assert packages(base, above) == {"libc6", "curl"} and sbom.contents_of(layers.merge([base, above])).distro


def test_a_directory_over_a_lower_database_file_replaces_it():
    base = layer({"var/lib/dpkg/status": STATUS})
    assert packages(base, layer({"var/lib/dpkg/status/": DIRECTORY})) == set()


def test_a_whiteout_removes_a_lower_distribution_and_everything_below_it():
    base = layer({f"{DIST_INFO}/METADATA": METADATA, "var/lib/dpkg/status": STATUS})
    removal = layer({"usr/lib/python3/dist-packages/.wh.requests-2.32.3.dist-info": ""})
    assert removal.removed == {DIST_INFO} and not removal.files
    assert packages(base, removal) == {"libc6", "curl"}
    # A layer's whiteout is of the layers below it: one above puts the distribution back.
    assert packages(base, removal, layer({f"{DIST_INFO}/METADATA": METADATA})) == {"libc6", "curl", "requests"}


def test_an_opaque_directory_hides_the_lower_files_but_not_its_own():
    d = "var/lib/dpkg/status.d"
    base = layer({f"{d}/base": "Package: base-files\nVersion: 12\n", f"{d}/tzdata": "Package: tzdata\nVersion: 24\n"})
    remade = layer({f"{d}/": DIRECTORY, f"{d}/.wh..wh..opq": "", f"{d}/netbase": "Package: netbase\nVersion: 6.4\n"})
    assert packages(base, remade) == {"netbase"}


def test_an_opaque_root_hides_every_lower_layer():
    assert packages(layer({"var/lib/dpkg/status": STATUS}), layer({".wh..wh..opq": ""})) == set()


def test_a_symlink_over_os_release_hides_the_lower_file():
    base = layer({"etc/os-release": "ID=debian\nVERSION_ID=12\n", "usr/lib/os-release": "ID=alpine\nVERSION_ID=3.19\n"})
    assert sbom.contents_of(layers.merge([base])).distro == "debian"
    linked = layer({"etc/os-release": Link("../usr/lib/os-release")})
    assert sbom.contents_of(layers.merge([base, linked])).distro == "alpine"  # as an export: usr/lib's, not the link


def test_a_database_directory_replaced_by_a_link_takes_its_database_away():
    base = layer({"lib/apk/db/installed": "P:musl\nV:1.2.4-r2\n"})
    assert packages(base) == {"musl"}
    assert packages(base, layer({"lib/apk": Link("/elsewhere")})) == set()


def test_a_database_too_large_to_read_still_replaces_the_lower_one(monkeypatch):
    base = layer({"var/lib/dpkg/status": STATUS})
    monkeypatch.setattr(sbom, "MAX_DATABASE_BYTES", len(REWRITTEN) - 1)
    assert packages(base, layer({"var/lib/dpkg/status": REWRITTEN})) == set()


def test_files_no_sbom_reads_are_not_kept():
    busy = layer({f"usr/share/doc/{n}/copyright": "text" for n in range(100)} | {"var/lib/apt/lists/.wh.x": ""})
    assert not busy.files and busy.removed == {"var/lib/apt/lists/x"}  # whiteouts are kept: any may matter


def test_a_layer_removing_too_many_paths_is_not_read(monkeypatch):
    monkeypatch.setattr(layers, "MAX_REMOVED", 10)
    assert len(layer({f"srv/.wh.{n}": "" for n in range(10)}).removed) == 10
    with pytest.raises(tarfile.ReadError, match="removes more than 10 paths"):
        layer({f"srv/.wh.{n}": "" for n in range(11)})


def test_a_gzip_layer_reads_as_its_tar():
    assert packages(layer({"./var/lib/dpkg/status": STATUS}, mode="r|gz")) == {"libc6", "curl"}


def test_packages_come_in_the_order_an_export_lists_their_files():
    # An export walks each directory's names sorted: "a/..." before "a.b/..." though "." < "/".
    x = "Name: x\nVersion: 1\n"
    files = layers.merge([layer({"srv/a.b/x-1.dist-info/METADATA": x, "srv/a/x-1.dist-info/METADATA": x})])
    assert [p.path for p in sbom.contents_of(files).packages] == [
        "srv/a/x-1.dist-info/METADATA",
        "srv/a.b/x-1.dist-info/METADATA",
    ]


def test_a_broken_tar_raises():
    with pytest.raises(tarfile.TarError):
        layers.read_layer(io.BytesIO(b"not a tar, not gzip" * 100), "r|gz")
