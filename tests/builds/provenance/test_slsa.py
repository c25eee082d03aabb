"""The provenance statement (builds/provenance/slsa.py): its fields from a build's
facts, checked against in-toto-attestation's own Statement and SLSA
provenance v1 types; base images read from the builders' log lines; no
secret value in it."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import Statement

from builds.provenance.slsa import (
    BUILD_TYPE,
    SLSA_PROVENANCE,
    BaseImage,
    BuildFacts,
    Child,
    FromLines,
    Source,
    payload,
    statement,
)

DIGEST = "sha256:" + "a" * 64
BASE = "sha256:" + "b" * 64
COMMIT = "c" * 40


def facts(**changes) -> BuildFacts:
    given = {
        "job_id": "0123456789abcdef0123456789abcdef",
        "image_repository": "localhost:5000/team/app",
        "tags": ["main", "1.2"],
        "digest": DIGEST,
        "source": Source(
            repository_url="https://x-access-token:hunter2@github.com/team/app.git",
            repository_name="team/app",
            ref="refs/heads/main",
            commit=COMMIT,
        ),
        "dockerfile_path": "docker/Dockerfile",
        "target": "runtime",
        "platforms": ["linux/amd64"],
        "builder": "buildkit",
        "builder_id": "https://farm.example/",
        "versions": {"generator": "0.1.0", "docker-engine": "20.10.24", "buildkit": "built into Docker Engine"},
        "started": datetime(2026, 12, 6, 10, 0, tzinfo=UTC),
        "finished": datetime(2026, 12, 6, 10, 1, 30, tzinfo=UTC),
        "build_args": {"VERSION": "1.2", "TOKEN_LIKE": "prefix-s3cr3t-value-suffix"},
        "secret_names": ["npm_token"],
        "base_images": [BaseImage("localhost:5000/library/busybox:latest", BASE, "buildkit")],
        "daemon": "d1",
    }
    given.update(changes)
    return BuildFacts(**given)


def checked(document: dict) -> dict:
    """The statement through in-toto-attestation's types: its Statement's own
    checks, and the predicate parsed as SLSA provenance v1 (an unknown or
    mistyped field is refused)."""
    Statement.copy_from_pb(json_format.ParseDict(document, statement_pb2.Statement())).validate()
    json_format.ParseDict(document["predicate"], provenance_pb2.Provenance())
    return document


def test_the_statement_names_the_image_its_commit_base_and_farm():
    document = checked(statement(facts(), ["s3cr3t-value"]))
    assert document["_type"] == "https://in-toto.io/Statement/v1"
    assert document["subject"] == [{"name": "localhost:5000/team/app", "digest": {"sha256": "a" * 64}}]
    assert document["predicateType"] == SLSA_PROVENANCE
    definition = document["predicate"]["buildDefinition"]
    assert definition["buildType"] == BUILD_TYPE
    params = definition["externalParameters"]
    assert params["source"] == {
        "repository": "team/app",
        "uri": "git+https://github.com/team/app.git@refs/heads/main",
        "ref": "refs/heads/main",
    }
    assert params["dockerfile"] == "docker/Dockerfile" and params["target"] == "runtime"
    assert params["platforms"] == ["linux/amd64"] and params["tags"] == ["main", "1.2"]
    assert params["secrets"] == ["npm_token"]
    assert definition["resolvedDependencies"] == [
        {"uri": "git+https://github.com/team/app.git@refs/heads/main", "digest": {"gitCommit": COMMIT}},
        {
            "uri": "pkg:docker/localhost:5000/library/busybox@latest",
            "name": "localhost:5000/library/busybox:latest",
            "digest": {"sha256": "b" * 64},
            "annotations": {"resolvedBy": "buildkit"},
        },
    ]
    run = document["predicate"]["runDetails"]
    assert run["builder"]["id"] == "https://farm.example/"
    assert run["builder"]["version"]["docker-engine"] == "20.10.24"
    assert run["metadata"] == {
        "invocationId": "0123456789abcdef0123456789abcdef",
        "startedOn": "2026-12-06T10:00:00Z",
        "finishedOn": "2026-12-06T10:01:30Z",
    }


def test_no_secret_value_and_no_clone_url_password_goes_in():
    text = payload(statement(facts(), ["s3cr3t-value"])).decode()
    assert "s3cr3t-value" not in text and "hunter2" not in text and "x-access-token" not in text
    assert json.loads(text)["predicate"]["buildDefinition"]["externalParameters"]["buildArgs"] == {
        "TOKEN_LIKE": "prefix-***-suffix",
        "VERSION": "1.2",
    }


def test_an_upload_and_a_dockerfile_text_are_named_by_their_digest():
    upload = checked(statement(facts(source=Source(upload_digest="sha256:" + "d" * 64))))
    definition = upload["predicate"]["buildDefinition"]
    assert definition["externalParameters"]["source"] == {"upload": {"digest": {"sha256": "d" * 64}}}
    assert definition["resolvedDependencies"][0] == {"name": "context.tar", "digest": {"sha256": "d" * 64}}
    text = checked(statement(facts(source=Source(dockerfile_digest="sha256:" + "e" * 64))))
    assert text["predicate"]["buildDefinition"]["externalParameters"]["source"] == {
        "dockerfileText": {"digest": {"sha256": "e" * 64}}
    }


def test_an_index_names_each_platforms_image_by_digest():
    children = [Child("linux/amd64", "sha256:" + "1" * 64, "c1"), Child("linux/arm64", "sha256:" + "2" * 64, "c2")]
    document = checked(statement(facts(builder="index", platforms=["linux/amd64", "linux/arm64"], children=children,
                                       base_images=[])))  # fmt: skip
    found = document["predicate"]["buildDefinition"]["resolvedDependencies"][1:]
    assert [(d["digest"]["sha256"][0], d["annotations"]["platform"]) for d in found] == [
        ("1", "linux/amd64"),
        ("2", "linux/arm64"),
    ]


def test_the_same_facts_sign_the_same_bytes():
    assert payload(statement(facts())) == payload(statement(facts()))


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (  # BuildKit, resolved from a registry
            ["#3 [internal] load metadata for localhost:5000/library/busybox:latest",
             f"#5 [1/2] FROM localhost:5000/library/busybox@{BASE}"],
            [BaseImage("localhost:5000/library/busybox", BASE, "buildkit")],
        ),
        (  # BuildKit, an image the daemon had: no digest in its log
            ["#4 [1/2] FROM docker.io/library/busybox", "#6 [stage-1 2/3] FROM docker.io/library/alpine:3"],
            [BaseImage("docker.io/library/busybox"), BaseImage("docker.io/library/alpine:3")],
        ),
        (  # the classic builder: stage names and scratch are no images
            ["Step 1/5 : FROM busybox AS build", "Step 3/5 : FROM build", "Step 4/5 : FROM scratch",
             "Step 5/5 : FROM --platform=linux/amd64 alpine:3"],
            [BaseImage("busybox"), BaseImage("alpine:3")],
        ),
        (["#7 0.301 FROM busybox printed by a RUN step", "FROM busybox"], []),
    ],
)  # fmt: skip
def test_base_images_are_read_from_the_builders_lines(lines, expected):
    froms = FromLines()
    for line in lines:
        froms.feed(line)
    assert list(froms.images.values()) == expected
