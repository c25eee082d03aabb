"""Why the farm refuses a build request: str() is the reason, `status` the HTTP code."""

from __future__ import annotations


class SubmissionError(ValueError):
    """A request the farm will not build; str() is the reason, `status` the HTTP code."""

    status = 400


class TooLarge(SubmissionError):
    status = 413


class PoolUnavailable(SubmissionError):
    status = 503


class Conflict(SubmissionError):
    status = 409
