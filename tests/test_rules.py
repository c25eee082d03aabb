"""Build rules: which pushed refs build, and their tags."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from builds.rules import PushedRef, RuleError, as_tag, check_pattern, check_template, parse_ref, tags_for

SHA = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"


@dataclass
class Rule:
    source: str
    pattern: str
    tags: str


DOCKER_HUB_LIKE = [
    Rule("branch", "main", "latest,sha-{short_sha}"),
    Rule("tag", "/^v([0-9.]+)$/", "{1},{ref}"),
    Rule("branch", "/^release-(.*)$/", "release-{1}"),
    Rule("branch", "/.*/", "branch-{ref}"),
]


@pytest.mark.parametrize(
    ("ref", "tags"),
    [
        ("refs/heads/main", ["latest", "sha-6113728", "branch-main"]),
        ("refs/tags/v1.2.3", ["1.2.3", "v1.2.3"]),
        ("refs/tags/nightly", []),
        ("refs/heads/release-2026.11", ["release-2026.11", "branch-release-2026.11"]),
        ("refs/heads/feature/login", ["branch-feature-login"]),
    ],
)
def test_rules_give_tags_like_docker_hub(ref, tags):
    assert tags_for(DOCKER_HUB_LIKE, parse_ref(ref), SHA) == tags


def test_refs_are_branches_or_tags():
    assert parse_ref("refs/heads/a/b") == PushedRef("branch", "a/b")
    assert parse_ref("refs/tags/v1") == PushedRef("tag", "v1")
    assert parse_ref("refs/pull/1/head") is None
    assert parse_ref("refs/heads/") is None


def test_a_template_can_use_the_full_sha():
    assert tags_for([Rule("branch", "main", "{sha}")], PushedRef("branch", "main"), SHA) == [SHA]


@pytest.mark.parametrize(
    ("text", "tag"), [("feature/x", "feature-x"), ("-lead", "lead"), ("a" * 200, "a" * 128), ("/", None)]
)
def test_rendered_text_becomes_a_valid_tag(text, tag):
    assert as_tag(text) == tag


def test_a_group_the_expression_does_not_have_is_an_error():
    with pytest.raises(RuleError, match="has 1 group"):
        tags_for([Rule("tag", "/^v(.*)$/", "{2}")], PushedRef("tag", "v1"), SHA)


@pytest.mark.parametrize(
    ("pattern", "template", "reason"),
    [
        ("/(/", "x", "not a valid regular expression"),
        ("", "x", "needs"),
        ("main", "{branch}", "unknown placeholder"),
        ("main", "", "empty"),
    ],
)
def test_bad_rules_are_refused(pattern, template, reason):
    with pytest.raises(RuleError, match=reason):
        check_pattern(pattern)
        check_template(template)
