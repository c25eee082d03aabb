"""The seed's `/b1` HTTP API, kept for its users: plain text in and out."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from builds.jobs.ownership import readable_jobs
from builds.jobs.services import SubmissionError, submit_build
from builds.logs.writer import read_lines
from lib.encoding import decode_base64_text
from teams.access import TOKEN_HINT, Identity, can_read_logs, can_submit, user_for_token_header


def plain(text: str, status: int = 200, **headers: str) -> HttpResponse:
    response = HttpResponse(text + ("\n" if text and status >= 400 else ""), status=status, content_type="text/plain")
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def _refusal(identity: Identity, allowed: bool, action: str) -> HttpResponse | None:
    if allowed:
        return None
    if identity.problem:
        return plain(identity.problem, 401, WWW_Authenticate="Token")
    if not identity.user.is_authenticated:
        return plain(f"authentication required to {action}: {TOKEN_HINT}", 401, WWW_Authenticate="Token")
    return plain(f"user {identity.user.get_username()!r} may not {action}", 403)


@csrf_exempt  # token-authenticated only: no cookie is trusted here (teams/access.py)
@require_http_methods(["GET", "POST"])
def build(request: HttpRequest) -> HttpResponse:
    """`/b1/build?imagename=REF&dockerfile=BASE64`, or `mode=dockerfile&context=BASE64`.

    POST with the same fields as a form takes Dockerfiles too long for a URL.
    Answers the 32-hex job id. `team=SLUG`, which the seed did not have, says
    which of the user's teams the build is for; without it, the team that owns
    the image's namespace (builds/jobs/ownership.py).
    """
    identity = user_for_token_header(request.headers.get("Authorization", ""))
    if refusal := _refusal(identity, can_submit(identity.user), "submit builds"):
        return refusal
    params = request.POST if request.method == "POST" else request.GET
    try:
        dockerfile = decode_base64_text(*_dockerfile_field(params))
        job = submit_build(
            image=params.get("imagename", "").strip(),
            dockerfile=dockerfile,
            submitted_by=identity.user if identity.user.is_authenticated else None,
            team=params.get("team", "").strip(),
        )
    except SubmissionError as exc:
        if retry_after := getattr(exc, "retry_after", None):
            return plain(str(exc), exc.status, Retry_After=str(retry_after))
        return plain(str(exc), exc.status)
    return plain(job.id)


def _dockerfile_field(params) -> tuple[str, str]:
    mode = params.get("mode", "")
    if mode == "":
        field = "dockerfile"
    elif mode == "dockerfile":
        field = "context"
    else:
        raise SubmissionError(f"unknown mode {mode!r}: this server supports mode=dockerfile (context=BASE64)")
    if field not in params:
        raise SubmissionError(f"{field} is required: the Dockerfile, base64-encoded")
    return params[field], field


@require_http_methods(["GET"])
def build_log_line(request: HttpRequest, job_id: str) -> HttpResponse:
    """`/b1/build/log/http/ID?count=N`: line N of the log, counting from 0, as the seed served it.

    While the job runs, a line not written yet is an empty 200 (the seed's pollers
    retry); once the job has ended, it is a 404 that says how long the log is.
    """
    identity = user_for_token_header(request.headers.get("Authorization", ""))
    if identity.user.is_anonymous and not identity.problem:
        identity = Identity(request.user)
    if identity.problem:
        return _refusal(identity, False, "read build logs")
    job = readable_jobs(identity.user).filter(pk=job_id).only("status", "log_line_count").first()
    if job is None:
        # Another team's build reads as one that does not exist; an anonymous caller is asked to log in.
        if refusal := _refusal(identity, can_read_logs(identity.user), "read build logs"):
            return refusal
        return plain(f"no build job with id {job_id!r}", 404)
    raw_count = request.GET.get("count", "0")
    if not raw_count.isdigit():
        return plain(f"count must be a whole number from 0, not {raw_count!r}", 400)
    index = int(raw_count)
    lines, _ = read_lines(job.id, index, max_lines=1, max_bytes=1)
    if lines and lines[0][0] == index + 1:
        return plain(lines[0][1], X_Build_Status=job.status)
    if job.is_terminal:
        return plain(
            f"line {index} does not exist: the log of this {job.status} build has {job.log_line_count} lines"
            " (count starts at 0)",
            404,
            X_Build_Status=job.status,
        )
    return plain("", X_Build_Status=job.status)
