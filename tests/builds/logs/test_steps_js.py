"""The job page's step parser (builds/static/builds/steps.js), run by node on logs
captured from real farm builds (tests/logs/: BuildKit 0.8 as Docker 20.10's CLI
prints it with --progress=plain, and the classic builder)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from itertools import zip_longest

from tests.conftest import ROOT

LOGS = ROOT / "tests" / "logs"
NODE = "/usr/bin/node"
HARNESS = """
const { StepParser } = require(process.argv[1]);
const parser = new StepParser();
const settled = {};
const placed = JSON.parse(require("fs").readFileSync(0, "utf8")).map(([seq, text]) => {
  const { step, role, settled: others } = parser.line(seq, text);
  if (others.length) settled[seq] = others.map((other) => other.id);
  return [seq, step ? step.id : null, role];
});
const failure = parser.failure && { seq: parser.failure.seq, step: parser.failure.step && parser.failure.step.id };
console.log(JSON.stringify({ steps: parser.steps, placed, failure, settled }));
"""


@dataclass
class Parsed:
    lines: dict[int, str]
    steps: list[dict]
    placed: list[tuple[int, int | None, str]]
    failure: dict | None
    settled: dict[int, list[int]]  # seq -> the ids of the other steps that line finished

    def step(self, prefix: str) -> dict:
        (step,) = [s for s in self.steps if s["title"].startswith(prefix + " ")]
        return step

    def texts(self, prefix: str, role: str = "body") -> list[str]:
        step = self.step(prefix)
        return [self.lines[seq] for seq, sid, r in self.placed if sid == step["id"] and r == role]

    def outside(self) -> list[int]:
        return [seq for seq, sid, role in self.placed if sid is None]


def captured(name: str, first_seq: int = 1) -> list[tuple[int, str]]:
    text = (LOGS / name).read_text()
    return list(enumerate(text.removesuffix("\n").split("\n"), start=first_seq))


def parse(lines: list[tuple[int, str]]) -> Parsed:
    result = subprocess.run(
        [NODE, "-e", HARNESS, str(ROOT / "builds" / "static" / "builds" / "steps.js")],
        input=json.dumps(lines),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    out = json.loads(result.stdout)
    assert [seq for seq, *_ in out["placed"]] == [seq for seq, _ in lines]
    settled = {int(seq): ids for seq, ids in out["settled"].items()}
    return Parsed(dict(lines), out["steps"], [tuple(p) for p in out["placed"]], out["failure"], settled)


def test_buildkit_steps_have_their_duration_cached_and_the_failing_one():
    log = parse(captured("buildkit-failed-step.log"))
    assert [s["title"] for s in log.steps[:3]] == [
        "#1 [internal] load remote build context",
        "#2 copy /context /",
        "#3 [internal] load metadata for docker.io/library/busybox:latest",
    ]
    cached, normal, failing = log.step("#4"), log.step("#9"), log.step("#10")
    assert cached["title"].startswith("#4 [base 2/2] RUN echo prepared")
    assert (cached["cached"], cached["finished"], cached["failed"]) == (True, True, False)
    assert normal["title"] == "#9 [stage-3 3/4] RUN echo normal step && sleep 0.5"
    assert (normal["seconds"], normal["cached"], normal["failed"]) == (0.8, False, False)
    assert log.texts("#9") == ["#9 sha256:baf6bd53ba23fd11950f86327f3fcf0aac45c68671e681af74e608fda3846368",
                               "#9 0.307 normal step", "#9 DONE 0.8s"]  # fmt: skip
    assert (failing["failed"], failing["seconds"]) == (True, None)
    assert log.lines[log.failure["seq"]].startswith("#10 ERROR: executor failed running")
    assert log.failure["step"] == failing["id"]
    assert [s["title"] for s in log.steps if s["failed"]] == [failing["title"]]
    # The farm's lines and BuildKit's closing excerpt stay outside the steps, in order.
    assert log.outside() == [1, 2, 3, 63, 64, 65, 66, 67]
    assert log.lines[64] == " > [stage-3 4/4] RUN echo about to fail && exit 3:"


def test_a_cache_that_is_not_there_yet_fails_no_step():
    # The image's first build: BuildKit says ERROR importing its cache and goes on.
    log = parse(captured("buildkit-parallel-stages.log"))
    imported = log.step("#4")
    assert imported["title"].startswith("#4 importing cache manifest from")
    assert (imported["ignoredError"], imported["failed"], imported["finished"]) == (True, False, True)
    assert log.failure is None
    assert not [s for s in log.steps if s["failed"] or not s["finished"]]


def test_parallel_stages_printed_in_turns_go_to_their_own_steps():
    log = parse(captured("buildkit-parallel-stages.log"))
    left, right = log.step("#6"), log.step("#8")
    assert [t.split(" ", 2)[2] for t in log.texts("#6") if " left " in t] == [f"left {i}" for i in range(1, 7)]
    assert [t.split(" ", 2)[2] for t in log.texts("#8") if " right " in t] == [f"right {i}" for i in range(1, 13)]
    assert (left["seconds"], right["seconds"]) == (10.0, 9.4)
    # BuildKit prints a step's title and digest again when it comes back to it, and
    # "..." when it leaves it: noise in the steps view, still in the plain one.
    assert log.texts("#6", "noise") == [
        "#6 ...", "", left["title"], "#6 sha256:fce4819a20315f2e183427d323752ca950ae6b3816778c4628e1c1673a2fdcee",
        "#6 ...", "", left["title"], "#6 sha256:fce4819a20315f2e183427d323752ca950ae6b3816778c4628e1c1673a2fdcee",
        "",
    ]  # fmt: skip
    assert log.outside() == [1, 2, 3, *range(95, 113)]  # the cache excerpt, the push


def test_lines_of_two_steps_alternating_one_by_one_go_to_their_own_steps():
    # Newer BuildKit prints each line as it comes, titles once and no digests:
    # the real lines of #6 and #8, so printed, alternate line by line.
    lines = [text for _, text in captured("buildkit-parallel-stages.log")]

    def printed_by_newer_buildkit(number: str) -> list[str]:
        own = [t for t in lines if t.startswith(number + " ") and t != number + " ..." and " sha256:" not in t]
        return [own[0], *(t for t in own[1:] if t != own[0])]

    left, right = printed_by_newer_buildkit("#6"), printed_by_newer_buildkit("#8")
    mixed = lines[: lines.index(left[0])] + [t for pair in zip_longest(left, right) for t in pair if t]
    log = parse(list(enumerate(mixed, start=1)))
    assert [log.step("#6")["title"], *log.texts("#6")] == left
    assert [log.step("#8")["title"], *log.texts("#8")] == right
    assert len(left) == 8 and len(right) == 14
    assert (log.step("#6")["seconds"], log.step("#8")["seconds"]) == (10.0, 9.4)


def test_a_timed_out_build_fails_the_step_that_was_running():
    log = parse(captured("buildkit-timeout.log"))
    running = log.step("#5")
    assert (running["failed"], running["finished"]) == (True, True)
    assert log.failure == {"seq": 27, "step": running["id"]}
    assert log.lines[27] == "[generator] Build failed: timed out after 20 s"
    assert log.step("#4")["cached"] and not log.step("#4")["failed"]


def test_classic_steps_group_by_their_step_lines():
    log = parse(captured("classic-failed-step.log"))
    assert [s["title"] for s in log.steps] == [
        "Step 1/4 : FROM busybox",
        "Step 2/4 : RUN echo classic 402ca05f",
        "Step 3/4 : RUN echo normal",
        "Step 4/4 : RUN echo about to fail && exit 3",
    ]
    assert log.step("Step 2/4")["cached"] and not log.step("Step 3/4")["cached"]
    assert log.texts("Step 3/4") == [
        " ---> Running in 7921b53f2936", "normal", "Removing intermediate container 7921b53f2936", " ---> b83011df6407",
    ]  # fmt: skip
    failing = log.step("Step 4/4")
    assert [s["title"] for s in log.steps if s["failed"]] == [failing["title"]]
    assert log.failure == {"seq": 17, "step": failing["id"]}  # the farm's line: Docker names no failing step
    assert log.outside() == [1, 2, 17]


def test_the_classic_builders_outcome_and_the_push_stay_outside_the_last_step():
    log = parse(captured("classic-succeeded.log"))
    assert log.texts("Step 2/2")[-1] == " ---> ae08df57542c"
    assert log.outside() == [1, 2, *range(10, 19)]
    assert log.failure is None and all(s["finished"] for s in log.steps)


def test_a_classic_step_is_said_settled_by_the_line_that_finishes_it_for_the_page_to_draw_it_again():
    # The page draws a step when a line of its own arrives; the line that ends a classic step (the next head,
    # the build's outcome) may come in a later frame, and the step must not stay drawn as running.
    log = parse(captured("classic-succeeded.log"))
    first, last = log.step("Step 1/2"), log.step("Step 2/2")
    assert log.settled == {5: [first["id"]], 10: [last["id"]]}  # "Step 2/2 : ...", "Successfully built ..."
    assert log.lines[5].startswith("Step 2/2") and log.lines[10].startswith("Successfully built")


def test_a_cancel_settles_every_step_still_running():
    lines = [(1, "Step 1/2 : FROM busybox"), (2, " ---> f7bd09384956"), (3, "Step 2/2 : RUN sleep 60"),
             (4, " ---> Running in d37e68e59ff8"), (5, "[generator] Cancelled by an operator")]  # fmt: skip
    log = parse(lines)
    assert log.settled == {3: [log.step("Step 1/2")["id"]], 5: [log.step("Step 2/2")["id"]]}
    assert log.step("Step 2/2")["stopped"]


def test_a_second_attempt_numbers_its_steps_afresh():
    first = captured("buildkit-timeout.log")
    log = parse(first + captured("buildkit-cached-step.log", first_seq=len(first) + 1))
    ones = [s for s in log.steps if s["title"] == "#1 [internal] load remote build context"]
    assert [s["headSeq"] for s in ones] == [4, len(first) + 4]
    assert [s["finished"] for s in ones] == [True, True]
    assert log.step("#6 [3/3]")["seconds"] == 0.3
    assert log.failure["seq"] == 27  # the first attempt's
