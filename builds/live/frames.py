"""The WebSocket's `log` frames, cut by bytes.

A frame holds at most GENERATOR_LOG_FRAME_BYTES of JSON; a single line larger
than that (JSON escapes can make a line six times longer) goes in a frame of its
own, and lines are cut at GENERATOR_MAX_LOG_LINE_BYTES when stored
(builds/logs/writer.py): the `websockets` client, which the CLI and many scripts use,
refuses messages over 1 MiB by default. The JSON is written out here rather than
by json.dumps of the whole frame so that each line's size is known as it is added.

A multi-platform parent's lines carry their platform: `{"seq": 12, "text":
"[linux/arm64] #5 ...", "platform": "linux/arm64"}`; other lines, and the
parent's own `[generator]` lines, are as they always were (fields are only
added: the seed's clients read `text`, which keeps its prefix).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

_FRAME_HEAD = '{"type": "log", "lines": ['
_FRAME_TAIL = "]}"
_FRAME_EMPTY = len(_FRAME_HEAD) + len(_FRAME_TAIL)


NO_PLATFORMS: frozenset[str] = frozenset()


def platform_of(text: str, platforms: frozenset[str]) -> str:
    """The platform of a line of a multi-platform parent whose `platforms` these
    are, from its `[os/arch] ` prefix; "" for the parent's own lines and for
    every line of any other job.

    Derived, not stored: every line of a parent comes from
    multiplatform.mirror_into_parent, which puts its child's platform first, or
    is the farm's own (`[generator] `), so the prefix, checked against the
    parent's platforms, is the platform exactly. A column would take a
    migration, the archive's format (`[seq, text]`), read_lines and the live
    event for a value the text already holds; this costs a startswith per line,
    and the live stream, the replay and the archive give the same answer
    because they give the same text. Only a parent's lines are looked at: an
    ordinary build may well print `[linux/arm64] ` itself."""
    if not platforms or not text.startswith("["):
        return ""
    end = text.find("] ", 1)
    return text[1:end] if end > 0 and text[1:end] in platforms else ""


def encode_line(seq: int, text: str, platforms: frozenset[str] = NO_PLATFORMS) -> str:
    """A line's JSON, all ASCII (json.dumps escapes the rest): its length is its size in bytes."""
    if platform := platform_of(text, platforms):
        return f'{{"seq": {seq}, "text": {json.dumps(text)}, "platform": {json.dumps(platform)}}}'
    return f'{{"seq": {seq}, "text": {json.dumps(text)}}}'


def log_frames(lines, max_bytes: int, platforms: frozenset[str] = NO_PLATFORMS) -> Iterator[str]:
    """`log` frames for the lines, each at most `max_bytes` long, except a frame
    holding a single larger line; made one at a time, as they are sent.
    `platforms`: a multi-platform parent's, whose lines carry theirs."""
    parts: list[str] = []
    size = _FRAME_EMPTY
    for seq, text in lines:
        part = encode_line(seq, text, platforms)
        if parts and size + len(part) + 2 > max_bytes:
            yield _FRAME_HEAD + ", ".join(parts) + _FRAME_TAIL
            parts, size = [], _FRAME_EMPTY
        parts.append(part)
        size += len(part) + 2
    if parts:
        yield _FRAME_HEAD + ", ".join(parts) + _FRAME_TAIL


class Batch:
    """One published batch of lines, its JSON made once for all of a process's viewers."""

    def __init__(self, lines, platforms: frozenset[str] = NO_PLATFORMS) -> None:
        self.lines = lines
        self.platforms = platforms
        self.joined = ", ".join(encode_line(seq, text, platforms) for seq, text in lines)

    @classmethod
    def of(cls, event: dict, platforms: frozenset[str] = NO_PLATFORMS) -> Batch:
        # The event is shared by the viewers of one job (so of one set of
        # platforms): the first one makes its JSON.
        if "batch" not in event:
            event["batch"] = cls(event["lines"], platforms)
        return event["batch"]


def batch_frames(batches: list[Batch], max_bytes: int) -> Iterator[str]:
    """Frames for consecutive batches, as many whole batches per frame as fit;
    made one at a time, as they are sent (a slow client's are not all in memory)."""
    joined: list[str] = []
    size = _FRAME_EMPTY
    for batch in batches:
        if joined and (size + len(batch.joined) + 2 > max_bytes or len(batch.joined) + _FRAME_EMPTY > max_bytes):
            yield _FRAME_HEAD + ", ".join(joined) + _FRAME_TAIL
            joined, size = [], _FRAME_EMPTY
        if len(batch.joined) + _FRAME_EMPTY > max_bytes:
            yield from log_frames(batch.lines, max_bytes, batch.platforms)
            continue
        joined.append(batch.joined)
        size += len(batch.joined) + 2
    if joined:
        yield _FRAME_HEAD + ", ".join(joined) + _FRAME_TAIL


# The `end` frame's fields, each with the BuildJob field it shows.
END_FIELDS = {
    "status": "status",
    "error": "error",
    "image_id": "image_id",
    "digest": "digest",
    "lines": "log_line_count",
}


def end_of(row: dict) -> dict:
    """The `end` frame's fields of a job's row (with every END_FIELDS column read)."""
    return {name: row[field] for name, field in END_FIELDS.items()}
