"""An image's SBOM files from its layers, as overlay stacks them: what each
layer contributes (`read_layer`: the wanted files it holds, what it removes
from the layers below), and the stack of them merged in order (`merge`), the
files `docker export` of the image would hold, for sbom.contents_of.

A layer removes lower files (OCI image spec, "Representing Changes"):
- `DIR/.wh.NAME`, a whiteout: DIR/NAME and all below it;
- `DIR/.wh..wh..opq`, an opaque directory: all of DIR the lower layers hold;
- any entry at a path a lower file had, which it replaces: a symlink over
  os-release, a package database too large to read, a directory over a file.
  Only such entries on the way to a wanted file are kept (the wanted paths
  themselves, the package databases' directories, `*.dist-info` and
  `*.egg-info`): a layer of 100,000 files costs no more to keep than its
  databases. Not seen: a directory further up a Python distribution's path
  replaced by a symlink or a file (`site-packages` made a link by a later
  layer), where the export would show no distribution and this still lists it.

Pure: a tar stream in (gzip or not), data out; the caller checks the blob's
digest (builds/worker/layer_reads.py) before it trusts or keeps what a layer gave.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterable
from dataclasses import astuple, dataclass
from typing import BinaryIO

from builds.provenance import sbom

# How each layer media type is stored: tarfile's stream mode for it.
TAR_MODES = {
    "application/vnd.oci.image.layer.v1.tar": "r|",
    "application/vnd.docker.image.rootfs.diff.tar": "r|",
    "application/vnd.oci.image.layer.v1.tar+gzip": "r|gz",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "r|gz",
}
WHITEOUT, OPAQUE = ".wh.", ".wh..wh..opq"
# Removals kept of one layer: a real one holds hundreds; a million would hold the worker's memory.
MAX_REMOVED = 100_000


def _parents(path: str):
    while path := posixpath.dirname(path):
        yield path


# The directories the package databases sit in: one replaced by a file or a link takes its database away.
_DATABASE_DIRS = frozenset(p for path in (*sbom.DATABASES, "var/lib/dpkg/status.d/") for p in _parents(path))


@dataclass(frozen=True)
class Contribution:
    files: dict[str, sbom.Found]  # the wanted regular files it holds
    removed: frozenset[str]  # paths whose lower files, and all below them, it removes
    size: int  # bytes it holds on to, roughly: what a cache of it weighs


def read_layer(stream: BinaryIO, mode: str) -> Contribution:
    """One layer's contribution; `mode` from TAR_MODES. Raises tarfile.TarError
    (or EOFError) on a tar it cannot read, or one removing more than MAX_REMOVED paths."""
    files: dict[str, sbom.Found] = {}
    removed: set[str] = set()
    size = 0
    with tarfile.open(fileobj=stream, mode=mode) as tar:
        for member in tar:
            name = _path(member.name)
            if not name:
                continue
            directory, base = posixpath.split(name)
            if base == OPAQUE:
                removed.add(directory)
            elif base.startswith(WHITEOUT):
                removed.add(posixpath.join(directory, base.removeprefix(WHITEOUT)))
            elif member.isfile() and member.size <= sbom.MAX_DATABASE_BYTES and sbom.wanted(name):
                files[name] = found = sbom.read_file(name, _text(tar, member))
                size += sum(len(field) for package in found.packages for field in astuple(package))
            elif (member.isdir() and sbom.wanted(name)) or (not member.isdir() and _on_the_way(name)):
                removed.add(name)  # (a directory over a lower directory merges with it: only one over a file replaces)
            else:
                continue
            size += len(name)
            if len(removed) > MAX_REMOVED:
                raise tarfile.ReadError(f"it removes more than {MAX_REMOVED} paths")
    return Contribution(files, frozenset(removed), size)


def merge(layers: Iterable[Contribution]) -> dict[str, sbom.Found]:
    """The wanted files of the image whose layers, lowest first, are `layers`:
    each layer's removals apply to the layers below it, then its own files go on top."""
    files: dict[str, sbom.Found] = {}
    for layer in layers:
        if layer.removed:
            files = {name: found for name, found in files.items() if not _under_any(name, layer.removed)}
        files.update(layer.files)
    return files


def _under_any(name: str, removed: frozenset[str]) -> bool:
    """Whether `name` is one of `removed` or below one ("" is the root: all)."""
    path = name
    while True:
        if path in removed:
            return True
        if not path:
            return False
        path = posixpath.dirname(path)


def _on_the_way(name: str) -> bool:
    """A non-directory at this path, other than a wanted regular file, replaces a lower wanted file or its directory."""
    return sbom.wanted(name) or name in _DATABASE_DIRS or name.endswith((".dist-info", ".egg-info"))


def _path(name: str) -> str:
    """A member's path relative to the root, as `docker export` names it ("" for the root itself)."""
    return posixpath.normpath("/" + name).lstrip("/")


def _text(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    file = tar.extractfile(member)
    return file.read().decode("utf-8", errors="replace") if file else ""
