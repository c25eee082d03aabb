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


class RegistryNotAllowed(SubmissionError):
    """The image would be pushed to a registry no operator allowed (no Registry row)."""

    def __init__(self, host: str) -> None:
        self.host = host
        super().__init__(
            f"registry {host} is not one the farm pushes to:"
            " an operator adds it under Registries (admin or /api/v1/registries/)"
        )


class Forbidden(SubmissionError):
    """The request is well formed, but its user's team may not do it: pushing into
    another team's namespace, building another team's repository."""

    status = 403


class TooManyBuilds(SubmissionError):
    """The team is over one of its limits (teams/models.py) and its operator chose
    "reject": try again after `retry_after` seconds."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)
