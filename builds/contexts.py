"""Uploaded build contexts (.tar, .tar.gz): hostile until proven otherwise.

The upload is decompressed with a hard cap (a decompression bomb stops at the
limit), every member is checked, and the context the daemon gets is a new tar
written from the members that passed: regular files, directories, and symbolic
links that stay inside the context. Absolute paths, `..`, links that point
outside, hard links, devices and FIFOs are refused with the member's name.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import zlib

from .errors import SubmissionError, TooLarge

GZIP_MAGIC = b"\x1f\x8b"


def decompress(upload: bytes, *, limit: int) -> bytes:
    if not upload.startswith(GZIP_MAGIC):
        if len(upload) > limit:
            raise TooLarge(f"the build context is {len(upload)} bytes; the limit is {limit} bytes")
        return upload
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    out = bytearray()
    data = upload
    try:
        while data and not inflater.eof:
            out += inflater.decompress(data, limit + 1 - len(out))
            if len(out) > limit:
                raise TooLarge(f"the build context decompresses to more than the {limit}-byte limit")
            data = inflater.unconsumed_tail
        out += inflater.flush()
    except zlib.error as exc:
        raise SubmissionError(f"the build context is not valid gzip: {exc}") from None
    if len(out) > limit:
        raise TooLarge(f"the build context decompresses to more than the {limit}-byte limit")
    return bytes(out)


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


def clean_context(upload: bytes, *, dockerfile: str, limit: int) -> bytes:
    """The context to build, rewritten from the members that passed every check."""
    data = decompress(upload, limit=limit)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as source:
            names, rewritten = _rewrite(source)
    except tarfile.TarError as exc:
        raise SubmissionError(f"the build context is not a tar archive: {exc}") from None
    if posixpath.normpath(dockerfile) not in names:
        raise SubmissionError(f"the build context has no {dockerfile!r}")
    return rewritten


def _rewrite(source: tarfile.TarFile) -> tuple[set[str], bytes]:
    out = io.BytesIO()
    names = set()
    with tarfile.open(fileobj=out, mode="w") as clean:
        for member in source.getmembers():
            name = _clean_name(member.name)
            if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
                raise SubmissionError(f"the build context has a device or FIFO: {name!r}")
            if member.issym() or member.islnk():
                _check_link(member, name)
            elif not (member.isfile() or member.isdir()):
                raise SubmissionError(f"the build context has a member of an unknown type: {name!r}")
            copy = tarfile.TarInfo(name)
            copy.type, copy.mode, copy.mtime, copy.size = member.type, member.mode & 0o7777, member.mtime, member.size
            copy.linkname = member.linkname if member.issym() else ""
            clean.addfile(copy, source.extractfile(member) if member.isfile() else None)
            names.add(name)
    return names, out.getvalue()
