"""REST API v1 for builds and repositories (DRF). Every build goes through
services.submit, as from every other front door."""

from __future__ import annotations

import base64
import json

from django.conf import settings
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.db.models import Prefetch
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action, api_view, permission_classes
from rest_framework.exceptions import APIException
from rest_framework.parsers import FileUploadParser, FormParser, MultiPartParser
from rest_framework.response import Response

from audit.hooks import AuditedViewSet
from audit.log import record
from builds.jobs import ownership
from builds.jobs.services import BuildRequest, SubmissionError, TooLarge, cancel_build, retry_build, submit
from builds.logs.writer import read_lines
from builds.models import Attestation, Registry, SigningKey
from builds.provenance import signing
from builds.provenance.cosign_layout import KINDS as ATTESTATION_KINDS
from builds.serializers import BuildCreateSerializer, BuildJobSerializer, RegistrySerializer, RepositorySerializer
from lib.api_parsers import BoundedJSONParser


class Refused(APIException):
    def __init__(self, error: SubmissionError) -> None:
        self.status_code = error.status
        # DRF's exception handler turns `wait` into Retry-After (429: a team's limit).
        self.wait = getattr(error, "retry_after", None)
        super().__init__(detail=str(error))


class MayBuild(permissions.BasePermission):
    """Reading needs a login; submitting, retrying and cancelling need the right to build."""

    message = "you may read builds but not start or stop them (permission builds.add_buildjob)"

    def has_permission(self, request, view) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        return request.user.has_perm("builds.add_buildjob")


class ContextUploadHandler(TemporaryFileUploadHandler):
    """An uploaded context goes to a temporary file on disk as it arrives, never
    whole in memory, and stops at GENERATOR_MAX_UPLOAD_BYTES whatever the request
    declared (a chunked body declares nothing). The file is removed when closed."""

    def __init__(self, request=None) -> None:
        super().__init__(request)
        self.limit = settings.GENERATOR_MAX_UPLOAD_BYTES
        self.received = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self.received += len(raw_data)
        if self.received > self.limit:
            self.file.close()
            raise Refused(TooLarge(f"the upload is larger than the {self.limit}-byte limit"))
        return super().receive_data_chunk(raw_data, start)


class TarUploadParser(FileUploadParser):
    """A raw .tar request body as the build context (no Content-Disposition needed)."""

    media_type = "application/x-tar"

    def get_filename(self, stream, media_type, parser_context):
        return super().get_filename(stream, media_type, parser_context) or "context.tar"


class GzipUploadParser(TarUploadParser):
    media_type = "application/gzip"


class BuildViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = BuildJobSerializer
    permission_classes = [permissions.IsAuthenticated, MayBuild]
    parser_classes = [BoundedJSONParser, MultiPartParser, FormParser, TarUploadParser, GzipUploadParser]

    def initialize_request(self, request, *args, **kwargs):
        # Before anything reads the body (a session's CSRF check reads a multipart form too).
        request.upload_handlers = [ContextUploadHandler(request)]
        return super().initialize_request(request, *args, **kwargs)

    def get_queryset(self):
        # Another team's build is a 404, as an id that does not exist (builds/jobs/ownership.py).
        jobs = ownership.readable_jobs(self.request.user).select_related("repository", "daemon", "cancelled_by", "team")
        signed = Attestation.objects.only("job_id", "digest", "predicate_type", "key_id")  # never the envelopes
        jobs = jobs.prefetch_related(Prefetch("attestations", signed))
        params = self.request.query_params
        for name in ("status", "repository", "image", "daemon", "team"):
            if "\x00" in params.get(name, ""):  # PostgreSQL's text cannot hold it: a 400, not a 500
                raise serializers.ValidationError({name: "must not contain NUL characters"})
        if value := params.get("status"):
            jobs = jobs.filter(status=value)
        if value := params.get("repository"):
            jobs = jobs.filter(repository__full_name=value)
        if value := params.get("image"):
            jobs = jobs.filter(image__startswith=value)
        if value := params.get("daemon"):
            jobs = jobs.filter(daemon__name=value)
        if value := params.get("team"):
            jobs = jobs.filter(team__slug=value)
        return jobs.order_by("-created_at")

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, description="queued, building, pushing, succeeded, failed, cancelled"),
            OpenApiParameter("repository", str, description="owner/name"),
            OpenApiParameter("image", str, description="image reference prefix"),
            OpenApiParameter("daemon", str, description="daemon name"),
            OpenApiParameter("team", str, description="team slug"),
        ],
        description="The builds you may read: your teams', public repositories' (all of them for staff,"
        " or for anyone with GENERATOR_PUBLIC_LOGS).",
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(
        request=BuildCreateSerializer,
        responses={201: BuildJobSerializer},
        description="Needs the permission builds.add_buildjob. The build is for one of your teams (`team`, else"
        " the repository's, else the one owning the image's namespace) and pushes only into that team's"
        " namespaces: 403 naming the namespace or repository otherwise. Staff build anything.",
    )
    def create(self, request):
        declared = request.META.get("CONTENT_LENGTH") or "0"
        limit = settings.GENERATOR_MAX_UPLOAD_BYTES
        if declared.isdigit() and int(declared) > limit:
            raise Refused(TooLarge(f"the upload is larger than the {limit}-byte limit"))
        if not isinstance(request.data, dict):
            return Response({"detail": "the body must be a JSON object"}, status=status.HTTP_400_BAD_REQUEST)
        # Not .copy(): a QueryDict copies deeply, and an uploaded file on disk cannot be.
        data = request.data
        if "file" in data:  # a raw tar body; the other fields come in the query string
            data = {**request.query_params.dict(), "context": data["file"]}
        form = BuildCreateSerializer(data=data, context={"request": request})
        form.is_valid(raise_exception=True)
        fields = dict(form.validated_data)
        upload = fields.pop("context", None)  # a temporary file, read as a stream
        try:
            job = submit(
                BuildRequest(context=upload, dockerfile=fields.pop("dockerfile", ""), **fields),
                submitted_by=request.user,
            )
        except SubmissionError as exc:
            raise Refused(exc) from None
        finally:
            if upload is not None:
                upload.close()
        return Response(BuildJobSerializer(job).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=None,
        responses={200: BuildJobSerializer},
        description="Its submitter, an admin of its team, or staff; 404 for a build you may not read.",
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        job = self.get_object()
        if not ownership.may_cancel(request.user, job):
            return Response(
                {"detail": "only its submitter, an admin of its team or an operator may cancel this build"},
                status=403,
            )
        outcome = cancel_build(job, request.user)
        if outcome.startswith("already"):
            return Response({"detail": f"the build is {outcome}"}, status=status.HTTP_409_CONFLICT)
        job.refresh_from_db()
        return Response(BuildJobSerializer(job).data)

    @extend_schema(
        request=None,
        responses={201: BuildJobSerializer},
        description="A new build by you, for the old build's team, with the checks of a submit: a member of"
        " that team (or staff) with builds.add_buildjob; 404 for a build you may not read.",
    )
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        try:
            job = retry_build(self.get_object(), request.user)
        except SubmissionError as exc:
            raise Refused(exc) from None
        return Response(BuildJobSerializer(job).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[OpenApiParameter("offset", int, description="lines already read: the answer starts after them")],
        responses={(200, "text/plain"): str},
    )
    @action(detail=True, methods=["get"])
    def log(self, request, pk=None):
        job = self.get_object()
        offset = request.query_params.get("offset", "0")
        if not offset.isdigit():
            return Response({"detail": f"offset must be a whole number from 0, not {offset!r}"}, status=400)
        # A page is at most 100,000 lines or about 16 MiB: lines may be up to 64 KiB each.
        lines, _ = read_lines(job.id, int(offset), max_lines=100_000, max_bytes=16 << 20)
        text = "".join(f"{line}\n" for _, line in lines)
        response = HttpResponse(text, content_type="text/plain; charset=utf-8")
        response["X-Log-Next-Offset"] = str(lines[-1][0] if lines else int(offset))
        response["X-Build-Status"] = job.status
        return response

    @extend_schema(
        parameters=[
            OpenApiParameter("kind", str, OpenApiParameter.PATH, enum=sorted(ATTESTATION_KINDS)),
            OpenApiParameter("envelope", bool, description="the signed DSSE envelope rather than its statement"),
        ],
        responses={200: dict},
    )
    @action(detail=True, methods=["get"], url_path=r"attestations/(?P<kind>provenance|sbom)")
    def attestation(self, request, pk=None, kind: str = ""):
        """The image's signed provenance or SBOM, as in the registry's `.att` tag: the in-toto statement, or with
        `?envelope=1` the DSSE envelope the farm's key signed (`GET /api/v1/signing-key/`)."""
        job = self.get_object()
        found = job.attestations.filter(digest=job.digest, predicate_type=ATTESTATION_KINDS[kind]).first()
        if found is None:
            return Response({"detail": f"this build has no {kind} (it pushed nothing, or before issue 28)"}, 404)
        envelope = json.loads(found.envelope)
        if request.query_params.get("envelope") in ("1", "true"):
            return Response(envelope)
        return Response(json.loads(base64.b64decode(envelope["payload"])))


@extend_schema_view(
    list=extend_schema(description="Your teams' repositories and public ones (staff: all)."),
    create=extend_schema(description="Needs builds.add_repository; `team` one of yours (default: your only one)."),
    update=extend_schema(description="Needs builds.change_repository and a repository of your team."),
    partial_update=extend_schema(description="Needs builds.change_repository and a repository of your team."),
    destroy=extend_schema(description="Needs builds.delete_repository and a repository of your team."),
)
class RepositoryViewSet(AuditedViewSet, viewsets.ModelViewSet):
    """Registered GitHub repositories, each of a team. Reading needs a login
    (another team's private repository is a 404); writing, the model permissions
    and a repository of your team."""

    serializer_class = RepositorySerializer
    permission_classes = [permissions.IsAuthenticated, permissions.DjangoModelPermissionsOrAnonReadOnly]

    def get_queryset(self):
        user = self.request.user
        if self.request.method in permissions.SAFE_METHODS:
            repositories = ownership.readable_repositories(user)
        else:
            repositories = ownership.team_repositories(user)
        return repositories.select_related("team").prefetch_related("rules", "secrets").order_by("full_name")


class StaffOnly(permissions.BasePermission):
    message = "only staff may see or change the registries builds push to"

    def has_permission(self, request, view) -> bool:
        return bool(request.user.is_staff)


class RegistryViewSet(AuditedViewSet, viewsets.ModelViewSet):
    """The registries builds may push to (the allow-list), with credentials for
    those that ask. Staff only; passwords are write-only."""

    serializer_class = RegistrySerializer
    permission_classes = [permissions.IsAuthenticated, StaffOnly]
    queryset = Registry.objects.order_by("host")


@extend_schema(responses={(200, "application/x-pem-file"): str})
@api_view(["GET"])
@permission_classes([permissions.AllowAny])
def signing_key(request):
    """The farm's public signing key (PEM) that verifies every image's signature
    and attestations; `?all=1` adds the retired ones, for images signed before a rotation."""
    from builds.models import SigningKey
    from builds.provenance.signing import active_key

    keys = [active_key().public_key]
    if request.query_params.get("all") in ("1", "true"):
        retired = SigningKey.objects.filter(scope="farm", retired_at__isnull=False).order_by("-retired_at")
        keys += list(retired.values_list("public_key", flat=True))
    return HttpResponse("".join(keys), content_type="application/x-pem-file")


class TeamSigningKeySerializer(serializers.Serializer):
    private_key = serializers.CharField(
        write_only=True, trim_whitespace=False, max_length=10_000,
        help_text="An unencrypted PEM ECDSA P-256 private key; never answered.",
    )  # fmt: skip
    public_key = serializers.CharField(read_only=True)
    key_id = serializers.CharField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)

    def validate_private_key(self, value: str) -> str:
        try:
            signing.brought_key(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None
        return value


class TeamSigningKeyActions:
    """A team's own signing key, at /api/v1/teams/<slug>/signing-key/: an action of
    teams' TeamViewSet, joined to it where the API is composed (generator_site/api_urls.py),
    since teams knows no builds."""

    @extend_schema(
        methods=["GET"],
        responses={200: TeamSigningKeySerializer},
        description="The key the team brought to sign its builds' images (public half): the team's admins or "
        "staff; 404 while the farm's key signs them.",
    )
    @extend_schema(
        methods=["PUT"],
        request=TeamSigningKeySerializer,
        responses={201: TeamSigningKeySerializer},
        description="Bring the team's own signing key (ECDSA P-256, unencrypted PEM): its builds' images, "
        "provenance and SBOMs are signed with it from then on. Stored encrypted, never answered; the team's "
        "previous key is retired. The team's admins or staff.",
    )
    @extend_schema(
        methods=["DELETE"],
        request=None,
        responses={204: None},
        description="Retire the team's own key: the farm's key signs its builds again.",
    )
    @action(
        detail=True,
        methods=["get", "put", "delete"],
        url_path="signing-key",
        serializer_class=TeamSigningKeySerializer,
        pagination_class=None,
    )
    def signing_key(self, request, slug=None):
        team = self._administered()
        scope = signing.team_scope(team.pk)
        if request.method == "PUT":
            form = TeamSigningKeySerializer(data=request.data)
            form.is_valid(raise_exception=True)
            key = signing.bring(scope, form.validated_data["private_key"])
            record("create", "signing key", key, team=team, details={"fields": ["private_key"]})
            return Response(TeamSigningKeySerializer(key).data, status=status.HTTP_201_CREATED)
        key = SigningKey.objects.filter(scope=scope, retired_at__isnull=True).first()
        if key is None:
            return Response({"detail": f"team {slug} has no signing key of its own: the farm's signs"}, status=404)
        if request.method == "GET":
            return Response(TeamSigningKeySerializer(key).data)
        signing.retire(scope)
        record("delete", "signing key", key, team=team)
        return Response(status=status.HTTP_204_NO_CONTENT)
