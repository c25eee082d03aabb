from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", RedirectView.as_view(url="/builds/", permanent=False)),
    path("", include("builds.urls")),
    path("", include("generator_site.api_urls")),
]

# Error answers in each endpoint's own format, never Django's defaults (lib/http_errors.py).
handler400 = "lib.http_errors.bad_request"
handler403 = "lib.http_errors.permission_denied"
handler404 = "lib.http_errors.page_not_found"
handler500 = "lib.http_errors.server_error"
