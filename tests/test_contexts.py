"""Uploaded build contexts are hostile until proven otherwise."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from builds.contexts import clean_context
from builds.errors import SubmissionError, TooLarge


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


DOCKERFILE = file("Dockerfile", b"FROM busybox\nCOPY . /app\n")


def names(context: bytes) -> dict[str, str]:
    with tarfile.open(fileobj=io.BytesIO(context)) as tar:
        return {m.name: ("link:" + m.linkname if m.issym() else m.type.decode()) for m in tar.getmembers()}


def test_a_plain_context_passes_rewritten():
    context = tar_of(DOCKERFILE, file("./app/main.py"), special("app/current", tarfile.SYMTYPE, "main.py"))
    assert names(clean_context(context, dockerfile="Dockerfile", limit=10**6)) == {
        "Dockerfile": "0",
        "app/main.py": "0",
        "app/current": "link:main.py",
    }


def test_a_gzipped_context_passes():
    context = gzip.compress(tar_of(DOCKERFILE))
    assert "Dockerfile" in names(clean_context(context, dockerfile="Dockerfile", limit=10**6))


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (file("/etc/passwd"), "absolute path: '/etc/passwd'"),
        (file("../outside"), "outside it: '../outside'"),
        (file("app/../../outside"), "outside it"),
        (special("escape", tarfile.SYMTYPE, "/etc/shadow"), "link pointing outside it: 'escape' -> '/etc/shadow'"),
        (special("app/escape", tarfile.SYMTYPE, "../../etc"), "link pointing outside it"),
        (special("hard", tarfile.LNKTYPE, "Dockerfile"), "hard link"),
        (special("dev/sda", tarfile.BLKTYPE), "device or FIFO: 'dev/sda'"),
        (special("dev/tty", tarfile.CHRTYPE), "device or FIFO"),
        (special("pipe", tarfile.FIFOTYPE), "device or FIFO"),
    ],
)
def test_hostile_members_are_refused_with_their_name(member, reason):
    with pytest.raises(SubmissionError, match=reason.replace("(", r"\(")):
        clean_context(tar_of(DOCKERFILE, member), dockerfile="Dockerfile", limit=10**6)


def test_a_context_without_its_dockerfile_is_refused():
    with pytest.raises(SubmissionError, match="has no 'build/Dockerfile'"):
        clean_context(tar_of(DOCKERFILE), dockerfile="build/Dockerfile", limit=10**6)


def test_not_a_tar_is_refused():
    with pytest.raises(SubmissionError, match="not a tar archive"):
        clean_context(b"just some bytes" * 100, dockerfile="Dockerfile", limit=10**6)
    with pytest.raises(SubmissionError, match="not valid gzip"):
        clean_context(b"\x1f\x8b" + b"\x00" * 50, dockerfile="Dockerfile", limit=10**6)


def test_a_decompression_bomb_stops_at_the_limit():
    bomb = gzip.compress(tar_of(DOCKERFILE, file("zeros", b"\0" * 50_000_000)))
    assert len(bomb) < 100_000
    with pytest.raises(TooLarge, match="decompresses to more than the 1000000-byte limit"):
        clean_context(bomb, dockerfile="Dockerfile", limit=1_000_000)


def test_a_plain_tar_over_the_limit_is_too_large():
    with pytest.raises(TooLarge):
        clean_context(tar_of(DOCKERFILE, file("big", b"x" * 20_000)), dockerfile="Dockerfile", limit=10_000)
