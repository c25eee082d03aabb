"""builds/cli_pull.py: the CLI's reading of an image name (the pull itself:
tests/farm/test_registry_auth.py)."""

from __future__ import annotations

import pytest

from builds.cli_pull import PullError, split_image


def test_it_splits_host_path_and_tag_or_digest():
    assert split_image("localhost:5000/cts/example") == ("localhost:5000", "cts/example", "latest")
    assert split_image("localhost:5000/cts/example:1.0") == ("localhost:5000", "cts/example", "1.0")
    digest = "sha256:" + "a" * 64
    assert split_image(f"r.example/a/b@{digest}") == ("r.example", "a/b", digest)


def test_an_image_without_a_registry_is_refused():
    with pytest.raises(PullError, match="names no registry"):
        split_image("busybox")
