"""A multi-platform build's log: each line of the parent's WebSocket frames
carries its platform, live, replayed after N and from the archive alike; the
job page's step parser keeps a section per platform (tests/builds/logs/test_steps_js.py
runs steps.js the same way); the CLI prints each line with its platform."""

from __future__ import annotations

import io
import json
import subprocess
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from builds import cli
from builds.jobs.multiplatform import create_children, mirror_into_parent
from builds.live.frames import encode_line, platform_of
from builds.logs import archive as log_archive
from builds.logs.writer import LogWriter, append_shared
from builds.models import BuildJob
from tests.builds.logs.test_archive import log_store  # noqa: F401 (a fixture: this test's own log store)
from tests.builds.logs.test_steps_js import NODE, ROOT, captured, parse
from tests.builds.test_consumers import communicator, make_job

BOTH = ["linux/amd64", "linux/arm64"]
PARENT_PLATFORMS = frozenset(BOTH)


def test_a_parents_line_carries_the_platform_of_its_prefix_and_nothing_else_does():
    assert platform_of("[linux/arm64] #5 0.412 aarch64", PARENT_PLATFORMS) == "linux/arm64"
    # A child's own line that starts like a platform: the first prefix is the mirror's.
    assert platform_of("[linux/amd64] [linux/arm64] x", PARENT_PLATFORMS) == "linux/amd64"
    assert platform_of("[generator] Pushed a/b@sha256:1", PARENT_PLATFORMS) == ""
    assert platform_of("[linux/s390x] not one of this build's", PARENT_PLATFORMS) == ""
    assert platform_of("[linux/arm64]no space", PARENT_PLATFORMS) == ""
    # Any other job's lines are left as they are, whatever they print.
    assert platform_of("[linux/arm64] printed by a build", frozenset()) == ""
    assert encode_line(3, "[linux/arm64] a") == '{"seq": 3, "text": "[linux/arm64] a"}'
    assert json.loads(encode_line(3, '[linux/arm64] "q"', PARENT_PLATFORMS)) == {
        "seq": 3,
        "text": '[linux/arm64] "q"',
        "platform": "linux/arm64",
    }


def two_platform_build(team, *, status: str = "building") -> tuple[BuildJob, list[LogWriter]]:
    parent = BuildJob.objects.create(
        image="localhost:5000/a/b:1", dockerfile="FROM busybox\n", platforms=BOTH, builder="buildkit", team=team
    )
    children = create_children(parent)
    BuildJob.objects.filter(pk=parent.pk).update(status=status)
    writers = []
    for child in children:
        writer = LogWriter(child.id, last_seq=0, batch_lines=2, flush_seconds=60)
        writer.mirror = mirror_into_parent(child)
        writers.append(writer)
    return BuildJob.objects.get(pk=parent.pk), writers


def write_interleaved(writers: list[LogWriter], first: int, last: int) -> None:
    """Both children at once, as two workers write: a batch of one, then of the other."""
    for number in range(first, last + 1):
        for writer in writers:
            writer.write(f"#{number} line {number}")
    for writer in writers:
        writer.flush()


def stored_frames_lines(frames: list[dict]) -> list[dict]:
    return [line for frame in frames if frame["type"] == "log" for line in frame["lines"]]


async def read_until_end(ws) -> list[dict]:
    frames = []
    while True:
        frame = await ws.receive_json_from(timeout=10)
        frames.append(frame)
        if frame["type"] == "end":
            return frames


async def replay(job_id: str, token: str, after: int = 0) -> list[dict]:
    ws = communicator(job_id, token, query=f"after={after}")
    connected, _ = await ws.connect()
    assert connected
    frames = await read_until_end(ws)
    await ws.disconnect()
    return frames


@pytest.mark.django_db(transaction=True)
async def test_a_parents_frames_carry_each_lines_platform_live_replayed_and_archived(team, reader):
    parent, writers = await database_sync_to_async(two_platform_build)(team)
    await database_sync_to_async(write_interleaved)(writers, 1, 3)
    ws = communicator(parent.id, reader.api_token)
    connected, _ = await ws.connect()
    assert connected
    backlog = await ws.receive_json_from(timeout=5)

    def more_then_the_end():
        write_interleaved(writers, 4, 5)
        append_shared(parent.id, ["[generator] Pushed localhost:5000/a/b:1@sha256:1: an image index"])
        finished = timezone.now() - timedelta(days=30)
        BuildJob.objects.filter(pk=parent.pk).update(status="succeeded", finished_at=finished)
        from builds.logs.writer import publish

        publish(parent.id, {"type": "job.status", "status": "succeeded"})

    await database_sync_to_async(more_then_the_end)()
    live = [backlog, *await read_until_end(ws)]
    await ws.disconnect()

    lines = stored_frames_lines(live)
    assert [line["seq"] for line in lines] == list(range(1, 12))
    for line in lines[:-1]:
        platform = line["text"][1 : line["text"].index("]")]
        assert line == {"seq": line["seq"], "text": line["text"], "platform": platform}
        assert platform in BOTH
    assert lines[-1] == {"seq": 11, "text": "[generator] Pushed localhost:5000/a/b:1@sha256:1: an image index"}
    # Each platform's lines in the order its child wrote them.
    for platform in BOTH:
        own = [line["text"] for line in lines if line.get("platform") == platform]
        assert own == [f"[{platform}] #{n} line {n}" for n in range(1, 6)]

    everything = await replay(parent.id, reader.api_token)
    assert stored_frames_lines(everything) == lines
    later = await replay(parent.id, reader.api_token, after=4)
    assert stored_frames_lines(later) == lines[4:]
    # The parent alone: its children are still queued.
    assert await database_sync_to_async(log_archive.archive_due)() == (1, 11)
    log_archive._cache.clear()
    assert await replay(parent.id, reader.api_token) == everything
    assert await replay(parent.id, reader.api_token, after=4) == later


@pytest.mark.django_db(transaction=True)
async def test_an_ordinary_build_printing_a_platform_gets_no_platform_field(daemon, reader):
    def job_printing_a_platform():
        job = make_job(daemon, status="failed")
        writer = LogWriter(job.id, last_seq=0, batch_lines=10, flush_seconds=60)
        writer.write("[linux/arm64] printed by the Dockerfile")
        writer.flush()
        return job

    job = await database_sync_to_async(job_printing_a_platform)()
    frames = await replay(job.id, reader.api_token)
    assert stored_frames_lines(frames) == [{"seq": 1, "text": "[linux/arm64] printed by the Dockerfile"}]


SECTIONS_HARNESS = """
const { PlatformSections } = require(process.argv[1]);
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const log = new PlatformSections(input.platforms);
const placed = input.lines.map(([seq, text, platform]) => {
  const { step, role, section, text: shown } = log.line(seq, text, platform);
  return [seq, section ? section.platform : null, step ? step.id : null, role, shown];
});
const sections = log.sections.map((s) => ({ platform: s.platform, status: s.status, steps: s.parser.steps }));
const failure = log.failure && { seq: log.failure.seq, step: log.failure.step && log.failure.step.id };
console.log(JSON.stringify({ steps: log.steps, sections, placed, failure }));
"""


def sections_of(lines: list[tuple[int, str, str | None]], platforms: list[str]) -> dict:
    result = subprocess.run(
        [NODE, "-e", SECTIONS_HARNESS, str(ROOT / "builds" / "static" / "builds" / "steps.js")],
        input=json.dumps({"platforms": platforms, "lines": lines}),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return json.loads(result.stdout)


def interleaved(logs: dict[str, list[str]], chunk: int) -> list[tuple[int, str, str]]:
    """The children's logs as their parent gets them: each line prefixed with its
    platform, the children's batches taking turns."""
    mixed: list[tuple[str, str]] = []
    queues = {platform: list(lines) for platform, lines in logs.items()}
    while any(queues.values()):
        for platform, lines in queues.items():
            mixed += [(platform, text) for text in lines[:chunk]]
            del lines[:chunk]
    return [(seq, f"[{platform}] {text}", platform) for seq, (platform, text) in enumerate(mixed, start=1)]


def steps_alone(lines: list[str]) -> list[dict]:
    return parse(list(enumerate(lines, start=1))).steps


COMPARED = ("title", "kind", "seconds", "cached", "finished", "failed", "stopped", "ignoredError")


def test_each_platform_of_an_interleaved_log_has_its_own_section_and_steps():
    amd = [text for _, text in captured("buildkit-cached-step.log")]
    arm = [text for _, text in captured("buildkit-failed-step.log")]
    lines = interleaved({"linux/amd64": amd, "linux/arm64": arm}, chunk=3)
    last = len(lines) + 1
    lines.append((last, "[generator] Build failed: linux/arm64: exit code: 3; nothing was tagged", None))
    log = sections_of(lines, BOTH)

    amd_section, arm_section = log["sections"]
    assert (amd_section["platform"], amd_section["status"]) == ("linux/amd64", "succeeded")
    assert (arm_section["platform"], arm_section["status"]) == ("linux/arm64", "failed")
    # Each section groups its platform's lines as that child's log alone would be:
    # both number their steps from #1, and neither takes the other's.
    for section, alone in ((amd_section, amd), (arm_section, arm)):
        assert [{k: s[k] for k in COMPARED} for s in section["steps"]] == [
            {k: s[k] for k in COMPARED} for s in steps_alone(alone)
        ]
        assert {s["platform"] for s in section["steps"]} == {section["platform"]}
    assert sum(s["title"].startswith("#1 ") for s in log["steps"]) == 2
    assert [s["id"] for s in log["steps"]] == list(range(len(log["steps"])))  # one id, one step of the page
    # Lines go to their platform's section without their prefix, in order; the
    # parent's own line stays outside.
    for platform, alone in (("linux/amd64", amd), ("linux/arm64", arm)):
        assert [shown for _, section, _, _, shown in log["placed"] if section == platform] == alone
    assert [(seq, role) for seq, section, _, role, _ in log["placed"] if section is None] == [(last, "outside")]
    # The first error is the arm64 step's ERROR, before the parent's line that says so.
    failing = next(s for s in arm_section["steps"] if s["failed"])
    assert failing["title"].startswith("#10 [stage-3 4/4]")
    error = next(seq for seq, text, _ in lines if text.startswith("[linux/arm64] #10 ERROR: executor failed running"))
    assert log["failure"] == {"seq": error, "step": failing["id"]}


def test_a_platform_that_has_printed_nothing_yet_waits_in_the_builds_order():
    log = sections_of([(1, "[linux/arm64] [generator] Building x on farm-1 (attempt 1)", "linux/arm64")], BOTH)
    assert [(s["platform"], s["status"]) for s in log["sections"]] == [
        ("linux/amd64", "waiting"),
        ("linux/arm64", "building"),
    ]
    assert log["placed"] == [[1, "linux/arm64", None, "outside", "[generator] Building x on farm-1 (attempt 1)"]]


def test_the_parents_page_names_its_platforms_for_the_log_script(client, operator, team):
    parent, _ = two_platform_build(team)
    client.force_login(operator)
    page = client.get(f"/builds/{parent.id}/").content.decode()
    assert f'<div id="job" data-job="{parent.id}" data-platforms="linux/amd64 linux/arm64">' in page
    child = parent.children.first()
    assert f'<div id="job" data-job="{child.id}">' in client.get(f"/builds/{child.id}/").content.decode()


class FakeStream:
    """What websockets' connect gives the CLI: these frames, then the end."""

    def __init__(self, frames: list[dict]) -> None:
        self.frames = frames

    def __enter__(self):
        return iter(json.dumps(frame) for frame in self.frames)

    def __exit__(self, *exc) -> None:
        pass


def test_the_cli_prints_each_line_of_a_multi_platform_build_with_its_platform(monkeypatch):
    frames = [
        {"type": "log", "lines": [
            {"seq": 1, "text": "[linux/amd64] #1 [internal] load build definition", "platform": "linux/amd64"},
            {"seq": 2, "text": "[linux/arm64] #1 [internal] load build definition", "platform": "linux/arm64"},
            {"seq": 3, "text": "[linux/arm64] #5 0.412 aarch64", "platform": "linux/arm64"},
        ]},
        {"type": "log", "lines": [{"seq": 4, "text": "[generator] Pushed a/b@sha256:1: an image index"}]},
        {"type": "end", "status": "succeeded", "error": "", "image_id": "", "digest": "sha256:1", "lines": 4},
    ]  # fmt: skip
    monkeypatch.setattr("websockets.sync.client.connect", lambda url, **kw: FakeStream(frames))
    out = io.StringIO()
    assert cli.Farm("http://farm.invalid", "t").follow("job", out) == "succeeded"
    assert out.getvalue().splitlines() == [
        "[linux/amd64] #1 [internal] load build definition",
        "[linux/arm64] #1 [internal] load build definition",
        "[linux/arm64] #5 0.412 aarch64",
        "[generator] Pushed a/b@sha256:1: an image index",
    ]
