"""Build rules: which pushed refs build, and their tags."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from builds.triggers.rules import (
    MAX_NAME_LENGTH,
    PushedRef,
    RuleError,
    as_tag,
    check_pattern,
    check_rule,
    check_template,
    parse_ref,
    tags_for,
)

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


@pytest.mark.parametrize(
    ("pattern", "templates", "reason"),
    [
        ("/^v(.*)$/", "{9}", "has 1 group"),
        ("/^v(.*)$/", "latest,{2}", "has 1 group"),
        ("main", "{1}", "has no groups"),
        ("/^v(.*)$/", "{0}", "has 1 group"),
        ("/(a)(b)/", "{3}", "has 2 groups"),
        ("main", "{²}", "unknown placeholder"),
    ],
)
def test_a_template_naming_a_group_the_pattern_lacks_is_refused_at_save(pattern, templates, reason):
    with pytest.raises(RuleError, match=reason):
        check_rule(pattern, templates)


def test_templates_naming_the_groups_the_pattern_has_are_accepted():
    check_rule("/^release-([0-9]+)\\.([0-9]+)$/", "{1},{1}.{2},{ref}-{short_sha}")
    check_rule("/^(?P<major>[0-9]+)$/", "{1}")
    assert check_pattern("/(a)(b)(c)/") == 3 and check_pattern("main") == 0


@pytest.mark.parametrize(
    "pattern",
    ["/(a)\\1/", "/^v(?=[0-9])/", "/(?<!x)main$/", "/(?P<n>a)(?P=n)/", "/(?>a+)/"],
)
def test_backreferences_and_lookaround_are_refused_naming_re2(pattern):
    with pytest.raises(RuleError, match="RE2, in linear time: no backreferences, no lookahead or lookbehind"):
        check_pattern(pattern)


def test_a_name_longer_than_a_ref_column_holds_matches_no_rule():
    everything = [Rule("branch", "/.*/", "{ref}")]
    assert tags_for(everything, PushedRef("branch", "a" * MAX_NAME_LENGTH), SHA) == ["a" * 128]
    assert tags_for(everything, PushedRef("branch", "a" * (MAX_NAME_LENGTH + 1)), SHA) == []


def test_a_rule_written_around_the_checks_fails_as_a_rule_error_not_a_crash():
    # An unknown placeholder in a row saved before the checks, or written by SQL.
    with pytest.raises(RuleError, match="unknown placeholder"):
        tags_for([Rule("branch", "main", "{branch}")], PushedRef("branch", "main"), SHA)
    with pytest.raises(RuleError, match="RE2"):
        tags_for([Rule("branch", "/(a)\\1/", "x")], PushedRef("branch", "aa"), SHA)
