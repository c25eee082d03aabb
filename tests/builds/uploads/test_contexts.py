"""Uploaded build contexts are hostile until proven otherwise: checked as a
stream, member by member, in bounded memory, into a new tar."""

from __future__ import annotations

import gzip
import io
import os
import tarfile

import pytest

from builds.uploads.contexts import CheckedContext, check_context
from lib.errors import SubmissionError, TooLarge
from tests.memory import MiB, peak_growth


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None], format=tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=format) as tar:
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


def check(upload, *, max_bytes=10**6, max_files=1000, out=None) -> tuple[CheckedContext, bytes]:
    out = out or io.BytesIO()
    source = io.BytesIO(upload) if isinstance(upload, bytes) else upload
    result = check_context(source, out, max_bytes=max_bytes, max_files=max_files)
    return result, out.getvalue() if isinstance(out, io.BytesIO) else b""


def names(context: bytes) -> dict[str, str]:
    with tarfile.open(fileobj=io.BytesIO(context)) as tar:
        return {m.name: ("link:" + m.linkname if m.issym() else m.type.decode()) for m in tar.getmembers()}


def test_a_plain_context_passes_rewritten():
    context = tar_of(DOCKERFILE, file("./app/main.py"), special("app/current", tarfile.SYMTYPE, "main.py"))
    result, rewritten = check(context)
    assert names(rewritten) == {"Dockerfile": "0", "app/main.py": "0", "app/current": "link:main.py"}
    assert result == CheckedContext(size=len(rewritten), members=3)


def test_a_gzipped_context_passes_with_its_contents():
    _, rewritten = check(gzip.compress(tar_of(DOCKERFILE, file("a" * 200 + "/long-name", b"data"))))
    with tarfile.open(fileobj=io.BytesIO(rewritten)) as tar:
        assert tar.extractfile("a" * 200 + "/long-name").read() == b"data"
        assert tar.extractfile("Dockerfile").read() == DOCKERFILE[1]


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
        check(tar_of(DOCKERFILE, member))


def test_not_a_tar_or_not_gzip_is_refused():
    with pytest.raises(SubmissionError, match="not a tar archive"):
        check(b"just some bytes" * 100)
    with pytest.raises(SubmissionError, match="not valid gzip"):
        check(b"\x1f\x8b" + b"\x00" * 50)
    with pytest.raises(SubmissionError, match="not valid gzip: it ends before its end"):
        check(gzip.compress(tar_of(DOCKERFILE, file("noise", os.urandom(100_000))))[:3000])


def test_a_member_cut_short_is_the_senders_fault():
    whole = tar_of(DOCKERFILE, file("big", b"y" * 50_000))
    with pytest.raises(SubmissionError, match="ends in the middle of 'big'|not a tar archive"):
        check(whole[:20_000])


def test_a_plain_tar_over_the_limit_is_too_large():
    with pytest.raises(TooLarge, match="larger than the 10000-byte limit"):
        check(tar_of(DOCKERFILE, file("big", b"x" * 20_000)), max_bytes=10_000)


def test_an_extended_header_past_its_cap_or_a_chain_of_them_is_refused():
    huge_pax = tarfile.TarInfo("Dockerfile")
    huge_pax.pax_headers = {"comment": "z" * (2 * MiB)}
    with pytest.raises(SubmissionError, match="an extended tar header of"):
        check(tar_of((huge_pax, b"FROM busybox\n")), max_bytes=10 * MiB)

    header = tarfile.TarInfo._create_pax_generic_header({"comment": "c"}, tarfile.XHDTYPE, "utf-8")
    chain = header * 50 + tar_of(DOCKERFILE)
    with pytest.raises(SubmissionError, match="a chain of extended tar headers"):
        check(chain)


def test_inflated_bytes_are_counted_whatever_they_are_extended_headers_too():
    """A member's data is refused by its declared size before it is read; what no
    size declares (pax records of up to a MiB each) is counted as it inflates."""
    members = []
    for number in range(12):
        info = tarfile.TarInfo(f"f{number}")
        info.pax_headers = {"comment": "p" * (512 * 1024)}
        members.append((info, b"x"))
    with pytest.raises(TooLarge, match=f"decompresses to more than the {4 * MiB}-byte limit"):
        check(gzip.compress(tar_of(DOCKERFILE, *members)), max_bytes=4 * MiB)


def test_a_gnu_sparse_member_is_refused():
    sparse = tarfile.TarInfo("holes")
    sparse.type = tarfile.GNUTYPE_SPARSE
    with pytest.raises(SubmissionError, match="GNU sparse file"):
        check(tar_of(DOCKERFILE, (sparse, None), format=tarfile.GNU_FORMAT))


# --- bombs and floods, in bounded memory -------------------------------------------


def gzip_of_zeros(size: int) -> bytes:
    """A gzipped tar of a Dockerfile and `size` bytes of zeros, made a MiB at a time."""
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=9) as tar:
        dockerfile = tarfile.TarInfo("Dockerfile")
        dockerfile.size = len(DOCKERFILE[1])
        tar.write(dockerfile.tobuf() + DOCKERFILE[1].ljust(tarfile.BLOCKSIZE, b"\0"))
        zeros = tarfile.TarInfo("zeros")
        zeros.size = size
        tar.write(zeros.tobuf())
        for _ in range(size // MiB):
            tar.write(bytes(MiB))
        tar.write(bytes(2 * tarfile.RECORDSIZE))
    return compressed.getvalue()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return gzip_of_zeros(500 * MiB)


def test_a_gzip_bomb_stops_at_the_limit_in_bounded_memory(bomb, tmp_path):
    assert len(bomb) < 600_000

    def refused():
        limit = f"decompresses to more than the {256 * MiB}-byte limit"
        with pytest.raises(TooLarge, match=limit), open(tmp_path / "out.tar", "wb") as out:
            check(bomb, max_bytes=256 * MiB, out=out)

    _, growth = peak_growth(refused)
    assert growth < 16 * MiB, f"checking the bomb took {growth / MiB:.0f} MiB"


def test_500_mib_inflated_under_the_limit_passes_in_bounded_memory(bomb, tmp_path):
    def passed():
        with open(tmp_path / "out.tar", "wb") as out:
            return check(bomb, max_bytes=512 * MiB, out=out)[0]

    result, growth = peak_growth(passed)
    assert result.members == 2 and result.size == (tmp_path / "out.tar").stat().st_size > 500 * MiB
    assert growth < 16 * MiB, f"checking 500 MiB took {growth / MiB:.0f} MiB"


@pytest.fixture(scope="module")
def hundred_thousand_files() -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as compressed, tarfile.open(fileobj=compressed, mode="w|") as tar:
        tar.addfile(DOCKERFILE[0], io.BytesIO(DOCKERFILE[1]))
        for number in range(100_000):
            info = tarfile.TarInfo(f"files/{number // 1000}/{number}.txt")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    return buffer.getvalue()


def test_100_000_tiny_files_are_counted_and_held_to_the_limit(hundred_thousand_files, tmp_path):
    with pytest.raises(TooLarge, match="more than 50000 files, directories and links"):
        check(hundred_thousand_files, max_bytes=512 * MiB, max_files=50_000)

    def passed():
        with open(tmp_path / "out.tar", "wb") as out:
            return check(hundred_thousand_files, max_bytes=512 * MiB, max_files=100_001, out=out)[0]

    result, growth = peak_growth(passed)
    assert result.members == 100_001
    assert growth < 16 * MiB, f"checking 100,000 files took {growth / MiB:.0f} MiB"
