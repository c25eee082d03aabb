"""Each team's own step cache: no step result one team's build computed is
used by another team's build, on any daemon, whatever its steps say.

A builder reuses a step's result when the step and its inputs match, and a
secret's value, an SSH agent or what a step fetched from the network is no
input: team B writing team A's `RUN --mount=type=secret,... cp /run/secrets/x
/leak` got A's result, secret and all (issue 22). So every team's steps differ:
after each FROM the farm adds `ARG GENERATOR_TEAM_<id>` and passes that build
arg. A build arg a stage declares is part of every later RUN step's key, in
BuildKit as in the classic builder (checked: shared/docs/machines.md), and
every FROM starts a stage without it, hence one after each.

The name is the team's, not only the value: a Dockerfile may set any ENV to
any value (another team's name and value included, read from its image
history), but it cannot take its own team's ARG out of its steps, so no step of
one team carries exactly another team's environment. Base layers stay shared
(pulled by digest, content-addressed), and so do COPY steps of the same bytes
on the same parent. ONBUILD steps of a base image run before the stage's first
instruction, so before the ARG: docs/security.md says what that leaves.

The Dockerfile the engine reads is the one in the context, so the context the
daemon gets is the original tar up to its end-of-archive, then the Dockerfile
again with the ARG lines (a later member replaces an earlier one of the same
name when a tar is unpacked, as the engine does), then a new end. The member
is named by the path the engine reads the Dockerfile from, links resolved
(builds/dockerfiles/in_context.py), so that it lands there. Nothing is
copied but the stream itself. For BuildKit on a daemon that remaps users, the
stream also gives every member's owner as that daemon sees host ids
(`remapped_root`): BuildKit 0.8 unpacks a tar context without remapping, and
COPY'd files owned by an unmapped id were left out of the exported layers.
No Django models here.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import io
import os
import re
import tarfile
from typing import BinaryIO

from builds.dockerfiles.text import DockerfileError, insert_after_each_from

NAME_PREFIX = "GENERATOR_TEAM_"


def arg_name(team_id: int | None, key: str, apart: str = "") -> str:
    """The team's build arg: opaque (no team id in image histories) and stable
    while the farm's secret key is (a new key means one cold build per team).
    `apart` names builds kept out of the team's cache (a fork's pull request)."""
    scope = f"team-step-cache:{team_id}" + (f":{apart}" if apart else "")
    digest = hmac.new(key.encode(), scope.encode(), hashlib.sha256).hexdigest()
    return NAME_PREFIX + digest[:20]


def scoped_dockerfile(text: str | bytes, name: str) -> str | bytes:
    """The Dockerfile with `ARG name` after each FROM. DockerfileError where the
    engine's parser would refuse the text: the build fails with its reason."""
    return insert_after_each_from(text, f"ARG {name}")


class ContextWithFile(io.RawIOBase):
    """A seekable, read-only tar stream: `context` (a seekable plain tar, read
    from where it stands) without its end-of-archive blocks, one member `name`
    holding `data`, and a new end. tell/seek let the docker CLI's and requests'
    look-ahead work as on the original file."""

    def __init__(self, context: BinaryIO, name: str, data: bytes, owners: tuple[int, int] = (0, 0)) -> None:
        """`owners`: uid and gid added to every member's owner, as a daemon that
        remaps users sees them (remapped_root)."""
        super().__init__()
        self._context, self._start = context, context.tell()
        self._owners = owners
        end, self._headers = _archive_end(context)
        self._prefix = end - self._start
        member = tarfile.TarInfo(name)
        member.size, member.mode, member.mtime = len(data), 0o644, 0
        member.uid, member.gid = owners
        padding = -len(data) % tarfile.BLOCKSIZE
        self._tail = member.tobuf(tarfile.PAX_FORMAT) + data + b"\0" * (padding + 2 * tarfile.BLOCKSIZE)
        self._size = self._prefix + len(self._tail)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._size - self._position
        out = b""
        if self._position < self._prefix and size > 0:
            self._context.seek(self._start + self._position)
            out = self._owned(self._position, self._context.read(min(size, self._prefix - self._position)))
            self._position += len(out)
            size -= len(out)
        if self._position >= self._prefix and size > 0:
            at = self._position - self._prefix
            more = self._tail[at : at + size]
            self._position += len(more)
            out += more
        return out

    def _owned(self, at: int, chunk: bytes) -> bytes:
        """`chunk` (read from offset `at`) with the owners added in the headers it overlaps."""
        if self._owners == (0, 0) or not chunk:
            return chunk
        out = bytearray(chunk)
        first = bisect.bisect_right(self._headers, at - tarfile.BLOCKSIZE)
        for header in self._headers[first:]:
            if header >= at + len(chunk):
                break
            self._context.seek(self._start + header)
            patched = _with_owners(self._context.read(tarfile.BLOCKSIZE), self._owners)
            lo, hi = max(header, at), min(header + tarfile.BLOCKSIZE, at + len(chunk))
            out[lo - at : hi - at] = patched[lo - header : hi - header]
        self._context.seek(self._start + at + len(chunk))
        return bytes(out)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _archive_end(context: BinaryIO) -> tuple[int, list[int]]:
    """The offset of the tar's end-of-archive blocks, and of each header block
    before it (relative to where the stream stands), the stream left where it
    was. Headers are read and members' data skipped by hand, one read and one
    seek a member: tarfile's own reading took 5 s for 100,000 members. A PAX
    header's `size` record (a member over 8 GiB) gives the next member's size."""
    start = context.tell()
    offset, pax_size, headers = start, None, []
    try:
        while True:
            context.seek(offset)
            header = context.read(tarfile.BLOCKSIZE)
            if len(header) < tarfile.BLOCKSIZE or header == _ZERO_BLOCK:
                return offset, headers
            headers.append(offset - start)
            size = tarfile.nti(header[124:136]) if pax_size is None else pax_size
            pax_size = _pax_size(context.read(size)) if header[156:157] == tarfile.XHDTYPE else None
            offset += tarfile.BLOCKSIZE + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    finally:
        context.seek(start)


def remapped_root(info: dict) -> tuple[int, int]:
    """The host uid and gid a daemon's root is, from its `GET /info` (0, 0
    without user namespaces): a remapping daemon says `name=userns` among its
    security options and keeps its data in `<data root>/<uid>.<gid>`.

    Why it matters: Docker 20.10's BuildKit unpacks a context sent as a tar
    (the farm's way) with the tar's owners as host ids, not remapped: a file
    owned by 0 is, inside the build, owned by no mapped user, and BuildKit's
    COPY then leaves it out of the image's layer (checked on these daemons: an
    empty layer; with owners shifted by the daemon's remapped root, the file is
    there, owned by 0). The classic builder remaps them itself."""
    if not any("name=userns" in option for option in info.get("SecurityOptions") or []):
        return (0, 0)
    found = re.search(r"/(\d+)\.(\d+)/?$", info.get("DockerRootDir") or "")
    return (int(found[1]), int(found[2])) if found else (0, 0)


def _with_owners(header: bytes, owners: tuple[int, int]) -> bytes:
    """A ustar header block with its uid and gid fields raised by `owners` and its checksum made again."""
    block = bytearray(header)
    for (start, end), add in zip(((108, 116), (116, 124)), owners, strict=True):
        try:
            value = tarfile.nti(bytes(block[start:end])) + add
        except tarfile.InvalidHeaderError:
            continue
        block[start:end] = b"%07o\0" % value if value < 8**7 else tarfile.itn(value, 8, tarfile.GNU_FORMAT)
    block[148:156] = b" " * 8
    block[148:155] = b"%06o\0" % sum(block)
    return bytes(block)


_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)
_PAX_SIZE = re.compile(rb"(?:^|\n)\d+ size=(\d+)\n")


def _pax_size(records: bytes) -> int | None:
    found = _PAX_SIZE.findall(records)
    return int(found[-1]) if found else None


__all__ = ["ContextWithFile", "DockerfileError", "arg_name", "scoped_dockerfile"]
