"""Uploaded build contexts (.tar, .tar.gz): hostile until proven otherwise.

Checked as a stream, in bounded memory whatever the upload: a gzip is inflated
chunk by chunk, the tar is read member by member, and each member that passes
is written at once to a new tar (the context the daemon gets): regular files,
directories, and symbolic links that stay inside the context. Absolute paths,
`..`, links that point outside, hard links, devices and FIFOs are refused with
the member's name. The inflated bytes and the members are counted as they come:
past either limit the check stops there (a decompression bomb is never inflated
beyond the limit). No Django here: the caller says where the result goes.
"""

from __future__ import annotations

import posixpath
import tarfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from lib.errors import SubmissionError, TooLarge

GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 64 * 1024
# Long names, link targets and pax records: a real one is a few KiB at most, and
# tarfile reads each whole into memory before it hands us the member.
MAX_EXTENDED_HEADER = 1024 * 1024
# Extended headers in a row before a member (tarfile follows them recursively).
MAX_EXTENDED_CHAIN = 8
_EXTENDED = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


@dataclass(frozen=True)
class CheckedContext:
    """What passed: the rewritten tar's size in bytes, and its members."""

    size: int
    members: int


def check_context(upload: BinaryIO, out: BinaryIO, *, max_bytes: int, max_files: int) -> CheckedContext:
    """Reads `upload` (a tar, or a gzip of one) and writes the checked, rewritten
    context to `out` as it goes. Raises SubmissionError (TooLarge past a limit)
    naming what was refused; `out` then holds a part to throw away."""
    tar_bytes = _TarStream(upload, limit=max_bytes)
    try:
        with (
            tarfile.open(fileobj=tar_bytes, mode="r|", tarinfo=_BoundedTarInfo) as source,
            tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as clean,
        ):
            members = _rewrite(source, clean, tar_bytes, max_files=max_files)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        if tar_bytes.over_limit:  # tarfile may have wrapped our own refusal
            raise tar_bytes.too_large() from None
        if isinstance(exc, zlib.error):
            raise SubmissionError(f"the build context is not valid gzip: {exc}") from None
        raise SubmissionError(f"the build context is not a tar archive: {exc}") from None
    return CheckedContext(size=out.tell(), members=members)


def _rewrite(source: tarfile.TarFile, clean: tarfile.TarFile, tar_bytes: _TarStream, *, max_files: int) -> int:
    members, written = 0, 0
    while (member := source.next()) is not None:
        source.members.clear()  # tarfile keeps every member it read: not 100,000 of them
        members += 1
        if members > max_files:
            raise TooLarge(f"the build context has more than {max_files} files, directories and links (the limit)")
        name = _clean_name(member.name)
        if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
            raise SubmissionError(f"the build context has a device or FIFO: {name!r}")
        if member.issym() or member.islnk():
            _check_link(member, name)
        elif not (member.isfile() or member.isdir()):
            raise SubmissionError(f"the build context has a member of an unknown type: {name!r}")
        copy = tarfile.TarInfo(name)
        # A whole-second mtime needs no PAX header (the docker CLI's archive check reads only 1 KiB).
        copy.type, copy.mode, copy.mtime = member.type, member.mode & 0o7777, int(member.mtime)
        copy.size = member.size if member.isfile() else 0
        copy.linkname = member.linkname if member.issym() else ""
        if copy.type not in (tarfile.DIRTYPE, tarfile.SYMTYPE):
            copy.type = tarfile.REGTYPE  # a sparse file is written out whole, and counted so
        # The rewritten tar is held to the limit as well (a sparse member's size is
        # not its bytes in the upload), before its data is read: a member that
        # would pass the limit is refused without inflating it.
        written += tarfile.BLOCKSIZE + -(-copy.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        if written > tar_bytes.limit:
            raise tar_bytes.too_large()
        data = _Exactly(source.extractfile(member), copy.size, name) if copy.size else None
        clean.addfile(copy, data)
        clean.members.clear()
    return members


class _TarStream:
    """The upload as tar bytes, read as tarfile asks: gunzipped on the fly if it is
    a gzip, never inflated past `limit` bytes, never more than a chunk at a time."""

    def __init__(self, raw: BinaryIO, *, limit: int) -> None:
        self._raw = raw
        self.limit = limit
        self._input = raw.read(CHUNK)
        self.gzipped = self._input.startswith(GZIP_MAGIC)
        self._inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS) if self.gzipped else None
        self.total = 0
        self.over_limit = False

    def too_large(self) -> TooLarge:
        if self.gzipped:
            return TooLarge(f"the build context decompresses to more than the {self.limit}-byte limit")
        return TooLarge(f"the build context is larger than the {self.limit}-byte limit")

    def read(self, size: int = -1) -> bytes:
        size = CHUNK if size is None or size < 0 else min(size, CHUNK)
        data = self._inflate(size) if self._inflater else self._plain(size)
        self.total += len(data)
        if self.total > self.limit:
            self.over_limit = True
            raise self.too_large()
        return data

    def _plain(self, size: int) -> bytes:
        if self._input:
            data, self._input = self._input[:size], self._input[size:]
            return data
        return self._raw.read(size)

    def _inflate(self, size: int) -> bytes:
        while not self._inflater.eof:
            if not self._input:
                self._input = self._raw.read(CHUNK)
                if not self._input:
                    raise SubmissionError("the build context is not valid gzip: it ends before its end")
            try:
                data = self._inflater.decompress(self._input, size)
            except zlib.error as exc:
                raise SubmissionError(f"the build context is not valid gzip: {exc}") from None
            self._input = self._inflater.unconsumed_tail
            if data:
                return data
        return b""  # a tar ends well before its gzip does; what follows the gzip is ignored


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads a long name or a pax header whole into memory, and follows a
    chain of them recursively, before the member they describe: both bounded here."""

    def _proc_member(self, tarfile_):
        if self.type == tarfile.GNUTYPE_SPARSE:
            # Its map of holes is read whole, however many blocks it claims.
            raise SubmissionError(f"the build context has a GNU sparse file, which is not accepted: {self.name!r}")
        if self.type not in _EXTENDED:
            tarfile_._extended_chain = 0
            return super()._proc_member(tarfile_)
        if self.size > MAX_EXTENDED_HEADER:
            raise SubmissionError(f"the build context has an extended tar header of {self.size} bytes")
        tarfile_._extended_chain = getattr(tarfile_, "_extended_chain", 0) + 1
        if tarfile_._extended_chain > MAX_EXTENDED_CHAIN:
            raise SubmissionError("the build context has a chain of extended tar headers with no member")
        return super()._proc_member(tarfile_)


class _Exactly:
    """A member's data, which must be as long as its header says (a truncated
    upload is the sender's fault, told as such, not an I/O error of ours)."""

    def __init__(self, data: BinaryIO, size: int, name: str) -> None:
        self._data, self._left, self._name = data, size, name

    def read(self, size: int = -1) -> bytes:
        want = self._left if size is None or size < 0 else min(size, self._left)
        chunk = self._data.read(want)
        if len(chunk) < want:
            raise SubmissionError(f"the build context ends in the middle of {self._name!r}")
        self._left -= len(chunk)
        return chunk


def _clean_name(name: str) -> str:
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise SubmissionError(f"the build context has a member with an absolute path: {name!r}")
    normalized = posixpath.normpath(name)
    if normalized == ".." or normalized.startswith("../") or ".." in name.split("/"):
        raise SubmissionError(f"the build context has a member outside it: {name!r}")
    return normalized


def _check_link(member: tarfile.TarInfo, name: str) -> None:
    if member.islnk():
        raise SubmissionError(f"the build context has a hard link, which is not accepted: {name!r}")
    target = member.linkname
    if target.startswith("/"):
        raise SubmissionError(f"the build context has a link pointing outside it: {name!r} -> {target!r}")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if resolved == ".." or resolved.startswith("../"):
        raise SubmissionError(f"the build context has a link pointing outside it: {name!r} -> {target!r}")
