"""Image references against Docker's own test tables (shared/testdata/image-references.txt)."""

from __future__ import annotations

import pytest

from lib.references import InvalidReference, parse_build_target, parse_reference
from tests.conftest import SHARED


def reference_cases() -> list[tuple[str, str]]:
    cases = []
    for line in (SHARED / "testdata" / "image-references.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        verdict, _, reference = line.partition(" ")
        cases.append((verdict, reference))
    return cases


CASES = reference_cases()


def test_the_table_is_read_whole():
    assert len(CASES) == 60
    assert {verdict for verdict, _ in CASES} == {"VALID", "INVALID"}


@pytest.mark.parametrize(("verdict", "reference"), CASES, ids=[ref[:60] or "<empty>" for _, ref in CASES])
def test_it_agrees_with_docker_on_validity(verdict, reference):
    if verdict == "VALID":
        assert str(parse_reference(reference)) == reference
    else:
        with pytest.raises(InvalidReference):
            parse_reference(reference)


@pytest.mark.parametrize(
    ("text", "repository", "tag", "domain"),
    [
        ("localhost:5000/cts/example", "localhost:5000/cts/example", None, "localhost:5000"),
        ("test:5000/repo:tag", "test:5000/repo", "tag", "test:5000"),
        ("localhost:8080@sha256:" + "be" * 32, "localhost", "8080", None),
        ("[2001:db8::1]:5000/repo:tag", "[2001:db8::1]:5000/repo", "tag", "[2001:db8::1]:5000"),
    ],
)
def test_it_splits_repository_tag_and_domain(text, repository, tag, domain):
    reference = parse_reference(text)
    assert (reference.repository, reference.tag, reference.domain) == (repository, tag, domain)


def test_a_build_target_defaults_to_latest():
    assert str(parse_build_target("localhost:5000/cts/example")) == "localhost:5000/cts/example:latest"


def test_a_build_target_cannot_name_a_digest():
    with pytest.raises(InvalidReference, match="cannot name a digest"):
        parse_build_target("localhost:5000/cts/example@sha256:" + "f" * 64)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "at least one component"),
        ("Uppercase:tag", "must be lowercase"),
        ("repo@sha256:" + "f" * 34, "invalid checksum digest format"),
        ("validname@sha512:" + "f" * 128, "unsupported digest algorithm"),
        ("aa/asdf$$^/aa", "invalid reference format"),
        ("domain/" + "a" * 256 + ":tag", "not be more than 255 characters"),
    ],
)
def test_it_says_why_a_reference_is_invalid(text, reason):
    with pytest.raises(InvalidReference, match=reason):
        parse_reference(text)
