"""builds/worker/cache_scope.py: the team's ARG in the Dockerfile the engine reads, and
the context stream that carries it."""

from __future__ import annotations

import io
import os
import tarfile

from builds.worker.cache_scope import NAME_PREFIX, ContextWithFile, arg_name, remapped_root, scoped_dockerfile


def tar_of(files: dict[str, bytes]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def unpacked(stream, into) -> None:
    """As an engine unpacks a context: member after member, a later one replacing an earlier one."""
    with tarfile.open(fileobj=io.BytesIO(stream.read()), mode="r:") as tar:
        tar.extractall(into, filter="data")


def test_the_dockerfile_the_engine_unpacks_is_the_scoped_one(tmp_path):
    long_name = "deep/" * 30 + "file.txt"  # past the 100 bytes of a plain header: PAX
    context = tar_of({"Dockerfile": b"FROM busybox\nRUN true\n", long_name: b"x" * 1000, "app/main.py": b"print()"})
    wrapped = ContextWithFile(context, "Dockerfile", b"FROM busybox\nARG X\nRUN true\n")
    unpacked(wrapped, tmp_path)
    assert (tmp_path / "Dockerfile").read_bytes() == b"FROM busybox\nARG X\nRUN true\n"
    assert (tmp_path / long_name).read_bytes() == b"x" * 1000
    assert (tmp_path / "app/main.py").read_bytes() == b"print()"


def test_the_stream_seeks_and_tells_as_a_file_does():
    context = tar_of({"Dockerfile": b"FROM scratch\n"})
    wrapped = ContextWithFile(context, "Dockerfile", b"FROM scratch\nARG X\n")
    whole = wrapped.read()
    assert len(whole) % tarfile.BLOCKSIZE == 0 and whole.endswith(b"\0" * 2 * tarfile.BLOCKSIZE)
    assert wrapped.seek(0, os.SEEK_END) == len(whole) == wrapped.tell()  # requests sizes a body this way
    wrapped.seek(100)
    assert wrapped.read(1000) == whole[100:1100]
    wrapped.seek(0)
    assert b"".join(iter(lambda: wrapped.read(333), b"")) == whole


def test_a_context_read_from_the_middle_of_its_file_starts_there():
    raw = io.BytesIO(b"header-bytes" + tar_of({"Dockerfile": b"FROM scratch\n"}).read())
    raw.seek(len(b"header-bytes"))
    wrapped = ContextWithFile(raw, "Dockerfile", b"FROM scratch\nARG X\n")
    assert raw.tell() == len(b"header-bytes")  # finding the archive's end moved nothing
    with tarfile.open(fileobj=io.BytesIO(wrapped.read()), mode="r:") as tar:
        assert [m.name for m in tar.getmembers()] == ["Dockerfile", "Dockerfile"]


def test_each_team_has_its_own_arg_name_stable_for_a_key():
    names = {arg_name(team, "key") for team in (1, 2, 3, None)}
    assert len(names) == 4 and all(name.startswith(NAME_PREFIX) and name.isidentifier() for name in names)
    assert arg_name(1, "key") == arg_name(1, "key") != arg_name(1, "another key")


def test_every_stage_declares_the_arg():
    text = "# syntax-like comment\nFROM busybox AS one\nRUN a\nFROM \\\n  busybox\nRUN b\n"
    scoped = scoped_dockerfile(text, "GENERATOR_TEAM_x").replace("GENERATOR_TEAM_x", "T")
    assert scoped == "# syntax-like comment\nFROM busybox AS one\nARG T\nRUN a\nFROM \\\n  busybox\nARG T\nRUN b\n"


def test_the_archives_end_is_found_past_a_member_whose_size_a_pax_header_gives():
    # Over 8 GiB a member's size is only in its PAX header (its ustar field says 0):
    # made here by hand for a 2 KiB member, whose ustar field is then set to 0.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        blob = tarfile.TarInfo("blob")
        blob.size, blob.pax_headers = 2048, {"size": "2048"}
        tar.addfile(blob, io.BytesIO(b"\1" * 2048))
        dockerfile = tarfile.TarInfo("Dockerfile")
        dockerfile.size = 13
        tar.addfile(dockerfile, io.BytesIO(b"FROM scratch\n"))
    data = bytearray(buffer.getvalue())
    header = data.index(b"blob\0", tarfile.BLOCKSIZE)  # the member's own header, after its PAX header
    data[header + 124 : header + 136] = b"00000000000\0"
    data[header + 148 : header + 156] = b"        "
    data[header + 148 : header + 155] = b"%06o\0" % sum(data[header : header + tarfile.BLOCKSIZE])
    wrapped = ContextWithFile(io.BytesIO(bytes(data)), "Dockerfile", b"FROM scratch\nARG X\n")
    with tarfile.open(fileobj=io.BytesIO(wrapped.read()), mode="r:") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["blob", "Dockerfile", "Dockerfile"]
        assert tar.extractfile(members[-1]).read() == b"FROM scratch\nARG X\n"


def test_a_remapping_daemons_root_is_read_from_its_data_root():
    remapping = ["name=seccomp,profile=default", "name=userns"]
    assert remapped_root({"SecurityOptions": remapping, "DockerRootDir": "/var/lib/docker/100000.100000"}) == (
        100000,
        100000,
    )
    assert remapped_root({"SecurityOptions": remapping, "DockerRootDir": "/d/data/165536.165540/"}) == (165536, 165540)
    assert remapped_root({"SecurityOptions": ["name=seccomp"], "DockerRootDir": "/srv/docker/1.2"}) == (0, 0)
    assert remapped_root({"SecurityOptions": remapping, "DockerRootDir": "/var/lib/docker"}) == (0, 0)
    assert remapped_root({}) == (0, 0)


def test_every_members_owner_is_shifted_by_the_remapped_root(tmp_path):
    files = {"Dockerfile": b"FROM scratch\n", "deep/" * 30 + "long.txt": b"x" * 700, "app/run.sh": b"echo\n"}
    context = tar_of(files)
    wrapped = ContextWithFile(context, "Dockerfile", b"FROM scratch\nARG X\n", owners=(100000, 100010))
    whole = b"".join(iter(lambda: wrapped.read(100), b""))  # reads that cut headers in two
    with tarfile.open(fileobj=io.BytesIO(whole), mode="r:") as tar:
        members = tar.getmembers()  # tarfile checks every header's checksum
        assert {(m.uid, m.gid) for m in members} == {(100000, 100010)}
        assert tar.extractfile(members[1]).read() == b"x" * 700
    wrapped.seek(0)
    assert wrapped.read() == whole
