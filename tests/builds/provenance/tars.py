"""Layer tars made by hand for the SBOM's tests: files, symlinks, directories
and whiteouts, as a layer's diff holds them."""

from __future__ import annotations

import io
import tarfile


class Link(str):
    """A symlink's target."""


DIRECTORY = object()


def tar_bytes(entries: dict[str, str | Link | object], padding: int = 0) -> bytes:
    """A tar of `entries` (a file's text, a Link, DIRECTORY), in order; with
    `padding`, a file of that many zeros after them."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, entry in entries.items():
            member = tarfile.TarInfo(name)
            if isinstance(entry, Link):
                member.type, member.linkname = tarfile.SYMTYPE, str(entry)
                tar.addfile(member)
            elif entry is DIRECTORY:
                member.type, member.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(member)
            else:
                data = entry.encode()
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
        if padding:
            member = tarfile.TarInfo("usr/share/big")
            member.size = padding
            tar.addfile(member, io.BytesIO(b"\0" * padding))
    return buffer.getvalue()
