"""builds/dockerfiles/in_context.py: the Dockerfile BuildKit reads from a tar context, or a refusal."""

from __future__ import annotations

import io
import tarfile

import pytest

from builds.dockerfiles.in_context import UnreadableDockerfile, read_dockerfile
from tests.memory import MiB, peak_growth

LIMIT = 1024 * 1024


def tar_of(*members: tuple, gzip: bool = False) -> io.BytesIO:
    """Members in order: (name, bytes) a file, (name, "dir"), (name, "->", target)
    a symbolic link, (name, "=>", target) a hard link."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gzip else "w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member[0])
            if isinstance(member[1], bytes):
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
                continue
            if member[1] == "dir":
                info.type = tarfile.DIRTYPE
            else:
                info.type = tarfile.SYMTYPE if member[1] == "->" else tarfile.LNKTYPE
                info.linkname = member[2]
            tar.addfile(info)
    buffer.seek(0)
    return buffer


def read(context: io.BytesIO, path: str = "Dockerfile", limit: int = LIMIT) -> bytes:
    return read_dockerfile(context, path, limit=limit).data


def found_at(context: io.BytesIO, path: str = "Dockerfile") -> str:
    return read_dockerfile(context, path, limit=LIMIT).path


def test_it_reads_the_named_file_and_leaves_the_context_at_its_start():
    context = tar_of(("Dockerfile", b"FROM a\n"), ("other", b"x"))
    assert read(context) == b"FROM a\n"
    assert context.tell() == 0
    assert read(tar_of(("Dockerfile", b"FROM a\n"), gzip=True)) == b"FROM a\n"
    assert read(tar_of(("Dockerfile", b"FROM a\n")), "") == b"FROM a\n"  # the daemon's default name


def test_a_path_under_a_dot_directory_is_that_path():
    # Issue 22's second bypass: lstrip("./") made ".ci/Dockerfile" "ci/Dockerfile", and an empty text passed.
    context = tar_of((".ci/Dockerfile", b"# syntax=evil\nFROM a\n"), ("ci/Dockerfile", b"FROM benign\n"))
    assert read(context, ".ci/Dockerfile") == b"# syntax=evil\nFROM a\n"
    assert read(context, "./.ci/Dockerfile") == b"# syntax=evil\nFROM a\n"
    assert read(tar_of(("./.ci/Dockerfile", b"FROM c\n")), ".ci//Dockerfile") == b"FROM c\n"


def test_the_path_found_is_cleaned_below_the_context_root():
    # Where builds/worker/cache_scope.py puts the Dockerfile it rewrites: where the engine reads.
    assert found_at(tar_of(("Dockerfile", b"FROM a\n")), "./Dockerfile") == "Dockerfile"
    assert found_at(tar_of((".ci/Dockerfile", b"FROM a\n")), ".ci/Dockerfile") == ".ci/Dockerfile"
    assert found_at(tar_of(("Dockerfile.prod", b"FROM a\n")), "a/../../Dockerfile.prod") == "Dockerfile.prod"


def test_paths_are_cleaned_lexically_with_dot_dot_held_at_the_root():
    context = tar_of(("Dockerfile", b"FROM root\n"), ("a/Dockerfile", b"FROM a\n"))
    assert read(context, "missing/../Dockerfile") == b"FROM root\n"  # RootPath cleans before it looks
    linked = tar_of(("Dockerfile", b"FROM root\n"), ("b/c", "dir"), ("b/Dockerfile", b"FROM b\n"), ("a", "->", "b/c"))
    assert found_at(linked, "a/../Dockerfile") == "b/Dockerfile"  # `..` after a link: from where it leads
    assert read(context, "../../a/Dockerfile") == b"FROM a\n"
    assert read(context, "/a/Dockerfile") == b"FROM a\n"


def test_a_symlinked_dockerfile_is_followed():
    # Issue 22's third bypass: a symlink was not a regular member, and an empty text was checked.
    context = tar_of(("real/Dockerfile.evil", b"# syntax=evil\n"), ("Dockerfile", "->", "real/Dockerfile.evil"))
    assert read(context) == b"# syntax=evil\n"


def test_a_chain_of_links_and_linked_directories_is_followed():
    context = tar_of(
        ("deep/dir/target", b"FROM chain\n"),
        ("d", "->", "deep/dir"),
        ("c", "->", "d/target"),
        ("b", "->", "./c"),
        ("Dockerfile", "->", "b"),
    )
    assert read(context) == b"FROM chain\n"
    assert found_at(context) == "deep/dir/target"


def test_a_link_that_climbs_out_is_held_at_the_root():
    context = tar_of(("x", b"FROM inside\n"), ("sub/Dockerfile", "->", "../../../x"), ("abs", "->", "/x"))
    assert read(context, "sub/Dockerfile") == b"FROM inside\n"
    assert read(context, "abs") == b"FROM inside\n"


def test_a_link_loop_is_refused_naming_the_path():
    context = tar_of(("a", "->", "b"), ("b", "->", "a"), ("Dockerfile", "->", "a"))
    with pytest.raises(UnreadableDockerfile, match=r"'Dockerfile'.*loop"):
        read(context)


def test_a_missing_or_directory_dockerfile_is_refused():
    with pytest.raises(UnreadableDockerfile, match=r"'build/Dockerfile'.*does not exist"):
        read(tar_of(("Dockerfile", b"FROM a\n")), "build/Dockerfile")
    with pytest.raises(UnreadableDockerfile, match=r"'Dockerfile'.*is a directory"):
        read(tar_of(("Dockerfile", "dir"), ("Dockerfile/x", b"y")))
    with pytest.raises(UnreadableDockerfile, match="does not exist"):
        read(tar_of(("Dockerfile", "->", "nowhere")))


def test_the_lower_case_name_is_read_where_dockerfile_cannot_be():
    # build.go falls back to "dockerfile" on any error reading ".../Dockerfile".
    assert read(tar_of(("dockerfile", b"# syntax=evil\n"))) == b"# syntax=evil\n"
    assert read(tar_of(("Dockerfile", "dir"), ("dockerfile", b"# syntax=evil\n"))) == b"# syntax=evil\n"
    assert read(tar_of(("a/dockerfile", b"FROM low\n")), "a/Dockerfile") == b"FROM low\n"
    assert found_at(tar_of(("a/dockerfile", b"FROM low\n")), "a/Dockerfile") == "a/dockerfile"
    with pytest.raises(UnreadableDockerfile):
        read(tar_of(("dockerfile", b"FROM low\n")), "Containerfile")


def test_a_later_duplicate_member_wins():
    context = tar_of(("Dockerfile", b"FROM first\n"), ("Dockerfile", b"# syntax=evil\nFROM second\n"))
    assert read(context) == b"# syntax=evil\nFROM second\n"
    replaced = tar_of(("Dockerfile", b"FROM first\n"), ("Dockerfile", "->", "other"), ("other", b"FROM other\n"))
    assert read(replaced) == b"FROM other\n"


def test_a_link_replacing_a_directory_takes_its_content_away():
    context = tar_of(("d/Dockerfile", b"FROM gone\n"), ("e/Dockerfile", b"FROM e\n"), ("d", "->", "e"))
    assert read(context, "d/Dockerfile") == b"FROM e\n"


def test_a_member_beneath_a_linked_directory_lands_where_the_link_points():
    context = tar_of(("sub", "dir"), ("d", "->", "sub"), ("d/Dockerfile", b"FROM through\n"))
    assert read(context, "sub/Dockerfile") == b"FROM through\n"


def test_a_hard_link_is_a_copy_of_its_target_at_that_point():
    context = tar_of(("real", b"# syntax=evil\n"), ("Dockerfile", "=>", "real"), ("real", b"FROM later\n"))
    assert read(context) == b"# syntax=evil\n"
    with pytest.raises(UnreadableDockerfile, match="hard link Dockerfile points to missing"):
        read(tar_of(("Dockerfile", "=>", "nothing")))


def test_a_dockerfile_over_the_limit_is_refused():
    with pytest.raises(UnreadableDockerfile, match=r"'Dockerfile'.*1001 bytes; the limit .* 1000 bytes"):
        read(tar_of(("Dockerfile", b"#" * 1001)), limit=1000)


def test_not_a_tar_is_refused():
    with pytest.raises(UnreadableDockerfile, match="not a valid tar"):
        read(io.BytesIO(b"FROM a\n" * 200))


def test_a_large_context_costs_memory_for_its_directories_only(tmp_path):
    with open(tmp_path / "context.tar", "wb") as out, tarfile.open(fileobj=out, mode="w") as tar:
        for number in range(20_000):
            info = tarfile.TarInfo(f"files/{number // 1000}/{number}.txt")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        for name, target in (("Dockerfile", "files/7/7007.txt"), ("files/7/7007.txt", None)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = (tarfile.SYMTYPE, target) if target else (tarfile.REGTYPE, "")
            info.size = 0 if target else 7
            tar.addfile(info, None if target else io.BytesIO(b"FROM a\n"))
    with open(tmp_path / "context.tar", "rb") as context:
        found, growth = peak_growth(lambda: read(context))
    assert found == b"FROM a\n"  # the later duplicate, through the link
    assert growth < 4 * MiB, f"reading took {growth / MiB:.1f} MiB"
