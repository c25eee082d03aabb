"""How long each BuildKit step of a build took, from its log lines as they are
stored (`#5 [2/3] RUN make` names step 5, `#5 DONE 1.2s` ends it): the same
reading as the job page's (builds/static/builds/steps.js), kept to what the
insights page needs. Pure: lines in, (title, seconds) out."""

from __future__ import annotations

import re

_NUMBERED = re.compile(r"#(\d+) (.*)")
_DONE = re.compile(r"DONE (\d+(?:\.\d+)?)s")
MAX_TITLE = 200


class StepTimes:
    """Fed every stored line of one attempt; `timings` holds the finished steps
    of the Dockerfile (BuildKit's own, `[internal] ...` and the export, left out)."""

    def __init__(self) -> None:
        self._titles: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    def feed(self, text: str) -> None:
        if not text.startswith("#"):
            return
        match = _NUMBERED.fullmatch(text)
        if match is None:
            return
        number, rest = match.groups()
        title = self._titles.get(number)
        if title is None:
            self._titles[number] = rest
            return
        done = _DONE.fullmatch(rest)
        if done and title.startswith("[") and not title.startswith("[internal]"):
            title = title[:MAX_TITLE]
            self.timings[title] = self.timings.get(title, 0.0) + float(done.group(1))
