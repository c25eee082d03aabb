"""Reading the daemon's streams: fragments into lines, progress into log lines."""

from __future__ import annotations

import io
import tarfile

from builds.engine.docker import LineAssembler, dockerfile_context, progress_lines


def test_fragments_become_whole_lines():
    assembler = LineAssembler()
    # As seen from Engine 20.10: a step apart from its newline, two lines in one chunk.
    chunks = ["Step 1/3 : FROM busybox", "\n", " ---> 761e730e9b08\nStep 2/3 : RUN echo hi\n", "hi\r\n", "partial"]
    lines = [line for chunk in chunks for line in assembler.feed(chunk)]
    assert lines == ["Step 1/3 : FROM busybox", " ---> 761e730e9b08", "Step 2/3 : RUN echo hi", "hi"]
    assert list(assembler.flush()) == ["partial"]
    assert list(assembler.flush()) == []


def test_an_empty_line_is_kept():
    assembler = LineAssembler()
    assert list(assembler.feed("a\n\nb\n")) == ["a", "", "b"]


def test_push_progress_is_one_line_per_layer_state():
    chunks = [
        {"status": "The push refers to repository [localhost:5000/cts/example]"},
        {"status": "Preparing", "progressDetail": {}, "id": "2c9c0e100a23"},
        {
            "status": "Pushing",
            "progressDetail": {"current": 512, "total": 2048},
            "progress": "[=>  ]",
            "id": "2c9c0e100a23",
        },
        {
            "status": "Pushing",
            "progressDetail": {"current": 2048, "total": 2048},
            "progress": "[====]",
            "id": "2c9c0e100a23",
        },
        {"status": "Pushed", "progressDetail": {}, "id": "2c9c0e100a23"},
        {"status": "Pushed", "progressDetail": {}, "id": "2c9c0e100a23"},
        {"status": "latest: digest: sha256:abc size: 735"},
        {"progressDetail": {}, "aux": {"Tag": "latest", "Digest": "sha256:abc", "Size": 735}},
    ]
    lines = []
    passed_on = list(progress_lines(chunks, lines.append))
    assert passed_on == chunks
    assert lines == [
        "The push refers to repository [localhost:5000/cts/example]",
        "2c9c0e100a23: Preparing",
        "2c9c0e100a23: Pushed",
        "latest: digest: sha256:abc size: 735",
    ]


def test_a_dockerfile_becomes_a_one_file_context():
    with tarfile.open(fileobj=io.BytesIO(dockerfile_context("FROM busybox\n"))) as tar:
        assert tar.getnames() == ["Dockerfile"]
        assert tar.extractfile("Dockerfile").read() == b"FROM busybox\n"


def test_a_line_that_never_ends_is_kept_to_a_bound():
    assembler = LineAssembler(max_line=1000)
    for _ in range(5000):  # 5 MB with no newline
        assert list(assembler.feed("x" * 1000)) == []
    assert len(assembler._partial) == 1000
    assert list(assembler.feed("end\nnext")) == ["x" * 1000]
    assert list(assembler.flush()) == ["next"]
