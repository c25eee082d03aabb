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

# Error answers in each endpoint's own format, never Django's defaults (generator_site/errors.py).
handler400 = "generator_site.errors.bad_request"
handler403 = "generator_site.errors.permission_denied"
handler404 = "generator_site.errors.page_not_found"
handler500 = "generator_site.errors.server_error"
