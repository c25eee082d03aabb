"""`POST /webhooks/github/`: GitHub's push, pull_request and ping events, and
the farm's GitHub App's check_run, check_suite and installation events
(builds/github/check_run_events.py), signed with the App's webhook secret.

It only checks, records and enqueues, so it answers well inside GitHub's 10 s.
Order of checks: size (413), a signature header at all (401), JSON within
bounds (400, builds/github/webhook_json.py), then the HMAC with the named repository's
secret (401). A repository that is not registered gets that same 401, byte for
byte and after an HMAC of the same cost, so the answer does not tell who is
registered; nothing unauthenticated is stored. Then a redelivery (the first
answer again), a push already built (its jobs again), then the event.

One build per (repository, ref, commit) within GENERATOR_WEBHOOK_DEDUPE_SECONDS,
whatever the delivery id (it is not signed: anyone holding one signed body can
send it again with a new id):

1. The delivery that builds a push records it in WebhookDelivery.push_key, a
   unique column, in the same transaction as the job, before the job is made.
2. Two deliveries of one push at once: on PostgreSQL the second INSERT of the
   key waits for the first transaction and then fails (IntegrityError); on
   SQLite the second transaction does not begin until the first has committed
   (BEGIN IMMEDIATE). Either way the second then looks again, finds the
   first's key and answers with its jobs.
3. A key past the window, or a push that moves its ref back to the commit
   from the ref's newest build's commit, releases the old key (an UPDATE that
   one of two racing deliveries wins) and builds again.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from builds.github import app as github_app
from builds.github import check_run_events, pull_requests
from builds.github.webhook_json import PayloadError, load_object
from builds.jobs.services import SubmissionError, submit_push_build
from builds.metrics import figures as metrics
from builds.models import BuildJob, Repository, WebhookDelivery
from builds.sources import changed_files
from builds.triggers.rules import MAX_REF_LENGTH, RuleError, is_ref_text, matching, parse_ref, tags_for

logger = logging.getLogger(__name__)

_SHA = re.compile(r"[0-9a-f]{40}")
SKIP_MARKERS = ("[skip ci]", "[ci skip]")
BAD_SIGNATURE = "the signature does not match: check the webhook's secret"
# An unregistered repository's body is checked against this, so that it costs
# what a registered one's does; nothing can match it.
_NO_SECRET = secrets.token_hex(32)
# Unsigned headers, stored: what GitHub sends (a GUID, an event name) and no more.
_DELIVERY_ID = re.compile(r"[\x21-\x7e]{1,100}")
_EVENT = re.compile(r"[a-z_]{0,50}")


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
        payload = load_object(body)
    except PayloadError as exc:
        return answer(400, str(exc))
    # The farm's GitHub App delivers here too, signed with its own secret (builds/github/app.py).
    by_app = github_app.webhook_signed_by_app(body, signature)
    repository_field = payload.get("repository")
    full_name = repository_field.get("full_name") if isinstance(repository_field, dict) else None
    if not full_name:
        event = request.headers.get("X-GitHub-Event", "")
        if by_app and event in check_run_events.INSTALLATION_EVENTS:
            return answer(*check_run_events.installation_changed(event, payload))
        return answer(
            202,
            "ignored: the payload names no repository"
            " (organization webhooks are not supported: add one per repository)",
        )
    repository = _registered(full_name)
    if not by_app and not signature_matches(repository.webhook_secret if repository else _NO_SECRET, body, signature):
        return answer(401, BAD_SIGNATURE)
    if repository is None:
        if by_app:  # the App is on more repositories than the farm builds: no secret to keep
            return answer(202, "ignored: the repository is not registered in the farm")
        # Same answer as a wrong signature: the sender may not learn what is registered.
        logger.info("webhook for a repository that is not registered: %.200r", full_name)
        return answer(401, BAD_SIGNATURE)
    if by_app:
        check_run_events.note_installation(repository, payload)

    event = request.headers.get("X-GitHub-Event", "")
    delivery_id = request.headers.get("X-GitHub-Delivery", "") or f"no-id-{uuid.uuid4().hex}"
    if not _EVENT.fullmatch(event) or not _DELIVERY_ID.fullmatch(delivery_id):
        return answer(400, "X-GitHub-Event or X-GitHub-Delivery is not one GitHub sends")
    for _ in range(3):
        try:
            return _deliver(repository, event, delivery_id, payload)
        except IntegrityError:
            continue  # the same delivery or push, handled at this very moment: look again
    return answer(409, "this push is being handled by another delivery: deliver it again")


def _registered(full_name: object) -> Repository | None:
    if not isinstance(full_name, str) or len(full_name) > 200 or "\x00" in full_name:
        return None  # no row can have it (and PostgreSQL refuses NUL in a query)
    return Repository.objects.filter(full_name=full_name).first()


@dataclass(frozen=True)
class Push:
    ref: str
    sha: str
    before: str

    def key(self, repository: Repository) -> str:
        return hashlib.sha256(f"{repository.pk}\n{self.ref}\n{self.sha}".encode()).hexdigest()


def _push_that_may_build(event: str, payload: dict) -> Push | None:
    """The push, if it names a branch or tag and a commit, or the pull request's
    head it builds (refs/pull/N/head); the rest is for the handlers."""
    if event == "pull_request":
        pull = _pull_request(payload)
        if pull is None or pull.action not in pull_requests.BUILDING_ACTIONS:
            return None
        return Push(pull.ref, pull.head_sha, str(payload.get("before", "")))
    ref, sha = payload.get("ref"), payload.get("after")
    if event != "push" or not isinstance(ref, str) or not isinstance(sha, str) or payload.get("deleted"):
        return None
    if not is_ref_text(ref) or parse_ref(ref) is None or not _SHA.fullmatch(sha) or set(sha) == {"0"}:
        return None
    return Push(ref, sha, str(payload.get("before", "")))


def _deliver(repository: Repository, event: str, delivery_id: str, payload: dict) -> JsonResponse:
    with transaction.atomic():
        if previous := WebhookDelivery.objects.filter(delivery_id=delivery_id).first():
            return _replay(previous)
        push = _push_that_may_build(event, payload)
        key = push.key(repository) if push else None
        if key and (first := _first_delivery(repository, push, key)):
            status, result, jobs = 202, _duplicate_result(push, first), first.response.get("jobs", [])
            _record(delivery_id, event, repository, status, result, jobs)
            metrics.add_counter(metrics.DELIVERIES, 1, event=event, status=str(status))
            return answer(status, result, jobs)
        delivery = _record(delivery_id, event, repository, 202, "handling", [], push_key=key)
        status, result, jobs = _handle(event, repository, payload)
        # A push that built nothing (no rule, an empty pool) may build when delivered again.
        delivery.push_key = key if jobs else None
        delivery.status_code, delivery.result, delivery.response = status, result, {"result": result, "jobs": jobs}
        delivery.save(update_fields=["push_key", "status_code", "result", "response"])
        metrics.add_counter(metrics.DELIVERIES, 1, event=event, status=str(status))
    return answer(status, result, jobs)


def _record(
    delivery_id: str,
    event: str,
    repository: Repository,
    status: int,
    result: str,
    jobs: list[str],
    push_key: str | None = None,
) -> WebhookDelivery:
    return WebhookDelivery.objects.create(
        delivery_id=delivery_id,
        event=event,
        repository=repository,
        status_code=status,
        result=result,
        response={"result": result, "jobs": jobs},
        push_key=push_key,
    )


def _first_delivery(repository: Repository, push: Push, key: str) -> WebhookDelivery | None:
    """The delivery that built this push, if it still stands for it."""
    first = WebhookDelivery.objects.filter(push_key=key).first()
    if first is None:
        return None
    window = timedelta(seconds=settings.GENERATOR_WEBHOOK_DEDUPE_SECONDS)
    if first.received_at >= timezone.now() - window and not _moves_ref_back(repository, push):
        return first
    WebhookDelivery.objects.filter(pk=first.pk, push_key=key).update(push_key=None)
    return None


def _moves_ref_back(repository: Repository, push: Push) -> bool:
    """A force push that returns a ref to a commit built before (`git push -f
    origin v1:main` after v2 was built) builds it again: the ref's tags must
    point at it. A copy of the first push's body does not: its `before` is not
    the ref's newest build."""
    newest = BuildJob.objects.filter(repository=repository, ref=push.ref).order_by("-created_at").first()
    return newest is not None and newest.commit_sha != push.sha and newest.commit_sha == push.before


def _pull_request(payload: dict) -> pull_requests.PullRequest | None:
    try:
        return pull_requests.parse(payload)
    except pull_requests.NotAPullRequest:
        return None


def _duplicate_result(push: Push, first: WebhookDelivery) -> str:
    pushed = parse_ref(push.ref)
    what = f"{pushed.source} {pushed.name}" if pushed else push.ref
    return (
        f"already built: {what} at {push.sha[:12]} came in delivery {first.delivery_id}; one build per commit of a ref"
    )


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
    if event == "pull_request":
        answered = pull_requests.handle(repository, payload)
        if (pull := _pull_request(payload)) and pull.action == "closed":
            # Its head built once stands for nothing now: reopened, it builds again.
            key = Push(pull.ref, pull.head_sha, "").key(repository)
            WebhookDelivery.objects.filter(push_key=key).update(push_key=None)
        return answered
    if event in check_run_events.REREQUEST_EVENTS:
        return check_run_events.rerequest(event, repository, payload)
    return 202, f"ignored: {event or 'unnamed'} events do not build", []


def _note_default_branch(repository: Repository, payload: dict) -> None:
    """GitHub names the repository's default branch in every push: kept for the
    pool-wide cache (builders.pool_cache)."""
    field = payload.get("repository")
    branch = field.get("default_branch") if isinstance(field, dict) else None
    valid = isinstance(branch, str) and 0 < len(branch) <= 200 and is_ref_text(f"refs/heads/{branch}")
    if valid and branch != repository.default_branch:
        Repository.objects.filter(pk=repository.pk).update(default_branch=branch)
        repository.default_branch = branch


def _pusher_email(payload: dict) -> str:
    """The pusher's e-mail as GitHub sent it, if it is one (notifications mail it)."""
    pusher = payload.get("pusher")
    email = pusher.get("email") if isinstance(pusher, dict) else None
    if not isinstance(email, str) or len(email) > 254:
        return ""
    try:
        validate_email(email)
    except ValidationError:
        return ""
    return email


def _handle_push(repository: Repository, payload: dict) -> tuple[int, str, list[str]]:
    ref, sha = payload.get("ref"), str(payload.get("after", ""))
    if not isinstance(ref, str):
        return 400, "the payload's ref is not a string", []
    if len(ref) > MAX_REF_LENGTH:
        return 202, f"ignored: the ref is {len(ref)} characters long; the farm builds refs of {MAX_REF_LENGTH}", []
    if not is_ref_text(ref):
        return 400, "the payload's ref has characters git refuses in a ref name", []
    if payload.get("deleted") or set(sha) == {"0"}:
        return 202, f"ignored: the push deleted {ref}", []
    _note_default_branch(repository, payload)
    pushed = parse_ref(ref)
    if pushed is None:
        return 202, f"ignored: {ref} is neither a branch nor a tag", []
    if not _SHA.fullmatch(sha):
        return 400, "after is not a commit SHA", []
    head = payload.get("head_commit") if isinstance(payload.get("head_commit"), dict) else {}
    message = str(head.get("message", ""))
    if any(marker in message for marker in SKIP_MARKERS):
        return 202, "skipped: the head commit's message asks for [skip ci]", []
    try:
        matched = matching(repository.rules.all(), pushed)
        filtered = changed_files.filter_rules(repository, matched, payload, sha) if matched else None
        tags = tags_for(filtered.rules, pushed, sha) if filtered else []
    except RuleError as exc:
        return 400, f"a build rule of {repository.full_name} cannot be applied: {exc} (fix it in admin)", []
    if filtered is not None and not filtered.rules:
        return 202, f"ignored: {pushed.source} {pushed.name} at {sha[:12]}: {filtered.why_none}", []
    if not tags:
        return 202, f"ignored: no build rule matches {pushed.source} {pushed.name}", []
    try:
        job = submit_push_build(repository=repository, ref=ref, sha=sha, tags=tags, pusher_email=_pusher_email(payload))
    except SubmissionError as exc:
        return exc.status, str(exc), []
    note = f" ({filtered.note})" if filtered.note else ""
    return 202, f"building {pushed.source} {pushed.name} at {sha[:12]} as {', '.join(tags)}{note}", [job.id]
