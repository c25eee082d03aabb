"""Where an attempt's time went: a few named moments, logged as one record at its end.

The build task starts a clock (`timed`, builds/tasks.py) and the runner marks
the claim; code further down marks
moments by name (`mark`) with no clock passed along: the clock rides in a
context variable, which the log writer's pump copies into its producer thread.
When the attempt ends, one INFO record in the worker's log:

    job 62439e33... phases: contained=+0.012 build_started=+0.041 build_done=+0.352 ...

in seconds since the task began (`claimed` is the job's `started_at`). bench/overhead.py reads
it from the worker's log for its timeline; an operator reads the same line to
see which step of a slow build took the time. No Django here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

logger = logging.getLogger(__name__)


class PhaseClock:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.marks: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        self.marks.append((name, time.monotonic() - self.start))  # append is atomic: the pump's thread marks too

    def summary(self) -> str:
        return " ".join(f"{name}=+{seconds:.3f}" for name, seconds in self.marks)


_clock: ContextVar[PhaseClock | None] = ContextVar("generator_phase_clock", default=None)


@contextmanager
def timed(job_id: str) -> Iterator[PhaseClock]:
    """The attempt's clock inside the block; its record logged on leaving, whatever happened."""
    clock = PhaseClock()
    token = _clock.set(clock)
    try:
        yield clock
    finally:
        _clock.reset(token)
        if clock.marks:  # nothing marked: the attempt was not this worker's to run
            logger.info("job %s phases: %s", job_id, clock.summary())


def mark(name: str) -> None:
    """Notes that the attempt reached `name` now (nothing outside an attempt)."""
    if (clock := _clock.get()) is not None:
        clock.mark(name)
