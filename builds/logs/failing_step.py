"""The failing step of a build, read from its last log lines, for its check
run (builds/github/check_runs.py). Pure: lines in, a FailingStep out.

BuildKit names the step that failed (`#7 ERROR: process ... exit code: 7`),
its output is the lines of that number (`#7 0.132 ...`), and its summary
names the Dockerfile's line (`Dockerfile:3` above the quoted instruction):
that is a file and a line, so GitHub can show them as an annotation on the
Dockerfile. The classic builder names neither a step number nor a line
(`Step 2/3 : RUN make` ... `returned a non-zero code: 2`): its failing step's
lines go in the check run's text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_LINES = 40  # of the step's output, the last ones: where its error is

_STEP_TITLE = re.compile(r"#(\d+) (\[.*)")
_STEP_END = re.compile(r"#(\d+) (DONE|CACHED|ERROR)\b.*")
_DOCKERFILE_LINE = re.compile(r"(?:.*/)?[^/\s]*Dockerfile[^:\s]*:(\d+)")
_DIGEST = re.compile(r"#\d+ sha256:[0-9a-f]{64}")  # the step's vertex id: nothing to read
_CLASSIC_STEP = re.compile(r"Step \d+/\d+ : .*")


@dataclass(frozen=True)
class FailingStep:
    title: str  # `[2/3] RUN make`, or the classic builder's `Step 2/3 : RUN make`
    lines: list[str]
    dockerfile_line: int | None  # the instruction's line, where the builder names it


def find(lines: list[str]) -> FailingStep | None:
    """The step that failed, from the log's last lines; None if none is named
    (a clone, a push or the farm itself failed)."""
    return _buildkit(lines) or _classic(lines)


def _buildkit(lines: list[str]) -> FailingStep | None:
    titles: dict[str, str] = {}
    ended: set[str] = set()
    errors: list[str] = []
    for line in lines:
        if match := _STEP_TITLE.fullmatch(line):
            titles.setdefault(match.group(1), match.group(2))
        if match := _STEP_END.fullmatch(line):
            ended.add(match.group(1))
            if match.group(2) == "ERROR" and match.group(1) in titles:  # not a cache import's miss
                errors.append(match.group(1))
    of_dockerfile = [n for n in titles if not titles[n].startswith("[internal]")]
    # A Dockerfile step's error; else the Dockerfile step still running when the
    # build ended (a timeout); else any step's error (a base image not found).
    # BuildKit's own errors beside a Dockerfile's failure (a cache not found yet) are not it.
    number = next(
        (n for n in reversed(errors) if n in of_dockerfile),
        next((n for n in reversed(of_dockerfile) if n not in ended), errors[-1] if errors else None),
    )
    if number is None:
        return None
    prefix = f"#{number} "
    own = [line for line in lines if line.startswith(prefix) and not _DIGEST.fullmatch(line)]
    after = lines[max(i for i, line in enumerate(lines) if line.startswith(prefix)) :]
    line_number = next((int(m.group(1)) for line in after if (m := _DOCKERFILE_LINE.fullmatch(line.strip()))), None)
    return FailingStep(titles.get(number, f"step #{number}"), own[-MAX_LINES:], line_number)


def _classic(lines: list[str]) -> FailingStep | None:
    starts = [i for i, line in enumerate(lines) if _CLASSIC_STEP.fullmatch(line)]
    if not starts or not any("returned a non-zero code" in line for line in lines[starts[-1] :]):
        return None
    step = lines[starts[-1] :]
    return FailingStep(step[0], step[-MAX_LINES:], None)
