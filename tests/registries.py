"""A plain registry of a test module's own (Debian's docker-registry, no auth), on a free port."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scripts import localfarm as lf


@contextmanager
def plain_registry(supervisor, services_dir: Path, name: str) -> Iterator[tuple[str, Path]]:
    """Its `localhost:PORT` and its storage folder, while the block runs."""
    port, storage = lf.free_port(), services_dir / name
    lf.start_registry(supervisor, port, storage, name)
    try:
        yield f"localhost:{port}", storage
    finally:
        supervisor.stop(name)
