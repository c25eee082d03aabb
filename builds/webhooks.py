"""`POST /webhooks/github/`: GitHub's push and ping events.

It only checks, records and enqueues, so it answers well inside GitHub's 10 s.
Order of checks: size (413), a signature header at all (401), JSON (400), a
registered repository (else 202, nothing stored: unauthenticated requests must
not fill the database), the HMAC with that repository's secret (401), then a
redelivery (the first answer again), then the event.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import uuid

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .models import Repository, WebhookDelivery
from .rules import parse_ref, tags_for
from .services import SubmissionError, submit_push_build

logger = logging.getLogger(__name__)

_SHA = re.compile(r"[0-9a-f]{40}")
SKIP_MARKERS = ("[skip ci]", "[ci skip]")


def signature_of(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(secret: str, body: bytes, header: str) -> bool:
    return hmac.compare_digest(signature_of(secret, body).encode(), header.encode())


def answer(status: int, result: str, jobs: list[str] | None = None) -> JsonResponse:
    return JsonResponse({"result": result, "jobs": jobs or []}, status=status)


@csrf_exempt  # authenticated by the HMAC signature, not a cookie
@require_POST
def github_webhook(request: HttpRequest) -> JsonResponse:
    limit = settings.GENERATOR_WEBHOOK_MAX_BYTES
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if declared.isdigit() and int(declared) > limit:
        return answer(413, f"the payload is larger than the {limit}-byte limit")
    body = request.read(limit + 1)
    if len(body) > limit:
        return answer(413, f"the payload is larger than the {limit}-byte limit")
    signature = request.headers.get("X-Hub-Signature-256", "")
    if not signature:
        return answer(401, "X-Hub-Signature-256 is missing: give the webhook a secret")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return answer(400, "the body is not JSON: set the webhook's content type to application/json")
    if not isinstance(payload, dict):
        return answer(400, "the payload is not a JSON object")
    full_name = (
        (payload.get("repository") or {}).get("full_name") if isinstance(payload.get("repository"), dict) else None
    )
    if not full_name:
        return answer(
            202,
            "ignored: the payload names no repository"
            " (organization webhooks are not supported: add one per repository)",
        )
    repository = Repository.objects.filter(full_name=full_name).first()
    if repository is None:
        logger.info("webhook for %s, which is not registered", full_name)
        return answer(202, f"ignored: repository {full_name} is not registered here")
    if not signature_matches(repository.webhook_secret, body, signature):
        return answer(401, "the signature does not match: check the webhook's secret")

    event = request.headers.get("X-GitHub-Event", "")
    delivery_id = request.headers.get("X-GitHub-Delivery", "") or f"no-id-{uuid.uuid4().hex}"
    try:
        with transaction.atomic():
            if previous := WebhookDelivery.objects.filter(delivery_id=delivery_id).first():
                return _replay(previous)
            status, result, jobs = _handle(event, repository, payload)
            WebhookDelivery.objects.create(
                delivery_id=delivery_id,
                event=event,
                repository=repository,
                status_code=status,
                result=result,
                response={"result": result, "jobs": jobs},
            )
    except IntegrityError:  # the same delivery, handled at this very moment
        return _replay(WebhookDelivery.objects.get(delivery_id=delivery_id))
    return answer(status, result, jobs)


def _replay(delivery: WebhookDelivery) -> JsonResponse:
    response = JsonResponse(delivery.response, status=delivery.status_code)
    response["X-Generator-Redelivery"] = "true"
    return response


def _handle(event: str, repository: Repository, payload: dict) -> tuple[int, str, list[str]]:
    if event == "ping":
        repository.hook_verified_at = timezone.now()
        repository.save(update_fields=["hook_verified_at"])
        return 200, "pong: the webhook is verified", []
    if event == "push":
        return _handle_push(repository, payload)
    return 202, f"ignored: {event or 'unnamed'} events do not build", []


def _handle_push(repository: Repository, payload: dict) -> tuple[int, str, list[str]]:
    ref, sha = str(payload.get("ref", "")), str(payload.get("after", ""))
    if payload.get("deleted") or set(sha) == {"0"}:
        return 202, f"ignored: the push deleted {ref}", []
    pushed = parse_ref(ref)
    if pushed is None:
        return 202, f"ignored: {ref} is neither a branch nor a tag", []
    if not _SHA.fullmatch(sha):
        return 400, "after is not a commit SHA", []
    head = payload.get("head_commit") if isinstance(payload.get("head_commit"), dict) else {}
    message = str(head.get("message", ""))
    if any(marker in message for marker in SKIP_MARKERS):
        return 202, "skipped: the head commit's message asks for [skip ci]", []
    tags = tags_for(repository.rules.all(), pushed, sha)
    if not tags:
        return 202, f"ignored: no build rule matches {pushed.source} {pushed.name}", []
    try:
        job = submit_push_build(repository=repository, ref=ref, sha=sha, tags=tags)
    except SubmissionError as exc:
        return exc.status, str(exc), []
    return 202, f"building {pushed.source} {pushed.name} at {sha[:12]} as {', '.join(tags)}", [job.id]
