"""What a notification says about a build: the webhook's JSON, Slack's message,
the e-mail. Only what any reader of the build's page sees: never its Dockerfile,
build args, labels, secrets or who submitted it."""

from __future__ import annotations

import json

from django.conf import settings
from django.utils import timezone

from builds.models import BuildJob
from lib.references import InvalidReference, parse_build_target

_TERMINAL = {"succeeded", "failed", "cancelled"}
_VERB = {
    "queued": "is queued",
    "started": "started",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "was cancelled",
}
_SLACK_COLOR = {"succeeded": "good", "failed": "danger", "cancelled": "warning"}


def _iso(moment) -> str | None:
    return moment.isoformat() if moment else None


def tags_of(job: BuildJob) -> list[str]:
    try:
        tag = parse_build_target(job.image).tag
    except InvalidReference:
        tag = ""
    return [t for t in [tag, *job.extra_tags] if t]


def build_document(job: BuildJob, event: str) -> dict:
    """The build as it stood at `event`: a queued or started build's results
    are not known yet, even if the build has gone on since."""
    done = event in _TERMINAL
    site = settings.GENERATOR_SITE_URL
    status = {"queued": "queued", "started": "building"}.get(event, event)
    return {
        "id": job.id,
        "status": status,
        "attempt": job.attempt,
        "image": job.image,
        "tags": tags_of(job),
        "repository": job.repository.full_name if job.repository_id else None,
        "ref": job.ref,
        "sha": job.commit_sha,
        "team": job.team.slug if job.team_id else None,
        "builder": job.builder,
        "error": job.error if event in ("failed", "cancelled") else "",
        "image_id": job.image_id if done else "",
        "digest": job.digest if done else "",
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at) if event != "queued" else None,
        "finished_at": _iso(job.finished_at) if done else None,
        "links": {
            "page": f"{site}/builds/{job.id}/",
            "log": f"{site}/api/v1/builds/{job.id}/log/",
            "api": f"{site}/api/v1/builds/{job.id}/",
        },
    }


def webhook_body(job: BuildJob, event: str) -> str:
    document = {"event": event, "sent_at": timezone.now().isoformat(), "build": build_document(job, event)}
    return json.dumps(document, separators=(",", ":"))


def headline(job: BuildJob, event: str) -> str:
    where = (
        f" ({job.repository.full_name} {job.ref.rsplit('/', 1)[-1]} {job.commit_sha[:12]})" if job.repository_id else ""
    )
    return f"Build of {job.image}{where} {_VERB[event]}"


def slack_body(job: BuildJob, event: str) -> str:
    """An incoming-webhook message: a line of text (also the notification's
    preview), and an attachment with the details, linking to the build."""
    document = build_document(job, event)
    fields = [{"title": "Status", "value": document["status"], "short": True}]
    if document["digest"]:
        fields.append({"title": "Digest", "value": document["digest"], "short": False})
    if document["error"]:
        fields.append({"title": "Error", "value": document["error"][:500], "short": False})
    link = document["links"]["page"]
    attachment = {
        "fallback": headline(job, event),
        "color": _SLACK_COLOR.get(event, "#439FE0"),
        "title": job.image,
        "title_link": link,
        "fields": fields,
        "footer": "generator",
    }
    return json.dumps({"text": f"{headline(job, event)}: <{link}|{job.id[:12]}>", "attachments": [attachment]})


def email_subject(job: BuildJob, event: str) -> str:
    return f"[generator] {headline(job, event)}"[:200]


def email_text(job: BuildJob, event: str) -> str:
    document = build_document(job, event)
    lines = [headline(job, event), "", f"Build:  {job.id}", f"Status: {document['status']}", f"Image:  {job.image}"]
    if document["repository"]:
        lines.append(f"Commit: {document['repository']} {document['ref']} {document['sha']}")
    if document["digest"]:
        lines.append(f"Digest: {document['digest']}")
    if document["error"]:
        lines += ["", "Error:", document["error"]]
    lines += ["", f"Page: {document['links']['page']}", f"Log:  {document['links']['log']}", ""]
    return "\n".join(lines)
