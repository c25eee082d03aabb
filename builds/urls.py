from django.urls import path

from . import pages, seed_api, webhooks

urlpatterns = [
    path("b1/build", seed_api.build, name="b1-build"),
    path("b1/build/log/http/<str:job_id>", seed_api.build_log_line, name="b1-build-log-line"),
    path("webhooks/github/", webhooks.github_webhook, name="github-webhook"),
    path("builds/<str:job_id>/", pages.job_page, name="job-page"),
]
