from django.urls import path

from builds import badges, pages, seed_api
from builds.github import webhooks
from builds.insights import pages as insights
from builds.metrics import ops
from builds.registry import token_server as registry_token

urlpatterns = [
    path("b1/build", seed_api.build, name="b1-build"),
    path("b1/build/log/http/<str:job_id>", seed_api.build_log_line, name="b1-build-log-line"),
    path("webhooks/github/", webhooks.github_webhook, name="github-webhook"),
    path("v2/token", registry_token.token, name="registry-token"),
    path("healthz", ops.healthz, name="healthz"),
    path("readyz", ops.readyz, name="readyz"),
    path("metrics", ops.metrics, name="metrics"),
    path("builds/", pages.job_list, name="job-list"),
    path("builds/<str:job_id>/", pages.job_page, name="job-page"),
    path("pool/", pages.pool_page, name="pool-page"),
    path("pool/<str:name>/", pages.daemon_page, name="daemon-page"),
    path("insights/", insights.insights_page, name="insights-page"),
    path("badges/<str:owner>/<str:name>.svg", badges.repository_badge, name="repository-badge"),
    path("badges/image/<path:image>.svg", badges.image_badge, name="image-badge"),
]
