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
