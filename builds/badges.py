"""Status badges (SVG) for README files: the outcome of the latest finished build
of a repository or an image. A public repository's are anyone's, like Docker
Hub's and Read the Docs'; otherwise only the builds the viewer may read count
(builds/jobs/ownership.py), so another team's badge is "unknown", as for a name
nobody registered."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string

from builds.jobs.ownership import readable_jobs
from builds.models import BuildJob

_LOOK = {
    "succeeded": ("passing", "#2da44e"),
    "failed": ("failing", "#cf222e"),
    "cancelled": ("cancelled", "#9a6700"),
    None: ("unknown", "#8c959f"),
}


def _badge(latest: BuildJob | None) -> HttpResponse:
    message, colour = _LOOK[latest.status if latest else None]
    label_width, message_width = 40, 8 + 7 * len(message)
    svg = render_to_string(
        "builds/badge.svg",
        {
            "message": message,
            "colour": colour,
            "label_width": label_width,
            "message_width": message_width,
            "width": label_width + message_width,
            "label_x": label_width / 2,
            "message_x": label_width + message_width / 2,
        },
    )
    response = HttpResponse(svg, content_type="image/svg+xml")
    response["Cache-Control"] = "no-cache, max-age=0"  # GitHub's image proxy must not keep an old result
    return response


def _latest(jobs) -> BuildJob | None:
    return jobs.filter(status__in=BuildJob.TERMINAL).order_by("-finished_at").first()


def repository_badge(request: HttpRequest, owner: str, name: str) -> HttpResponse:
    return _badge(_latest(readable_jobs(request.user).filter(repository__full_name=f"{owner}/{name}")))


def image_badge(request: HttpRequest, image: str) -> HttpResponse:
    return _badge(_latest(readable_jobs(request.user).filter(image__startswith=f"{image}:")))
