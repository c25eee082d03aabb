"""The WebSocket's `log` frames, cut by bytes.

A frame holds at most GENERATOR_LOG_FRAME_BYTES of JSON; a single line larger
than that (JSON escapes can make a line six times longer) goes in a frame of its
own, and lines are cut at GENERATOR_MAX_LOG_LINE_BYTES when stored
(builds/logs.py): the `websockets` client, which the CLI and many scripts use,
refuses messages over 1 MiB by default. The JSON is written out here rather than
by json.dumps of the whole frame so that each line's size is known as it is added.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

_FRAME_HEAD = '{"type": "log", "lines": ['
_FRAME_TAIL = "]}"
_FRAME_EMPTY = len(_FRAME_HEAD) + len(_FRAME_TAIL)


def encode_line(seq: int, text: str) -> str:
    """A line's JSON, all ASCII (json.dumps escapes the rest): its length is its size in bytes."""
    return f'{{"seq": {seq}, "text": {json.dumps(text)}}}'


def log_frames(lines, max_bytes: int) -> Iterator[str]:
    """`log` frames for the lines, each at most `max_bytes` long, except a frame
    holding a single larger line; made one at a time, as they are sent."""
    parts: list[str] = []
    size = _FRAME_EMPTY
    for seq, text in lines:
        part = encode_line(seq, text)
        if parts and size + len(part) + 2 > max_bytes:
            yield _FRAME_HEAD + ", ".join(parts) + _FRAME_TAIL
            parts, size = [], _FRAME_EMPTY
        parts.append(part)
        size += len(part) + 2
    if parts:
        yield _FRAME_HEAD + ", ".join(parts) + _FRAME_TAIL


class Batch:
    """One published batch of lines, its JSON made once for all of a process's viewers."""

    def __init__(self, lines) -> None:
        self.lines = lines
        self.joined = ", ".join(encode_line(seq, text) for seq, text in lines)

    @classmethod
    def of(cls, event: dict) -> Batch:
        if "batch" not in event:  # the event is shared by the viewers: the first one makes it
            event["batch"] = cls(event["lines"])
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
            yield from log_frames(batch.lines, max_bytes)
            continue
        joined.append(batch.joined)
        size += len(batch.joined) + 2
    if joined:
        yield _FRAME_HEAD + ", ".join(joined) + _FRAME_TAIL
