"""URL map. Each domain app's api/urls.py offers up to three lists (an absent one is empty), mounted here:

- ``tenant_urlpatterns`` under /api/t/<tenant>/ (token auth, members only);
- ``public_urlpatterns`` under /api/public/<tenant>/ (no auth);
- ``urlpatterns`` at the root (webhooks, public pages not tied to a tenant slug).
"""

from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core import health, metrics
from core.admin_history import recent_activity_view
from core.api.errors import api_route_not_found
from core.discovery import project_modules

admin.site.site_header = "Lockstep"
admin.site.site_title = "Lockstep admin"
# The lists need the width (the columns an operator acts on must fit 1366 px); the home page lists the models.
admin.site.enable_nav_sidebar = False


class SchemaView(SpectacularAPIView):
    """``/api/schema/``: the OpenAPI schema. The API has one version, so a ``?version=`` is ignored:
    drf-spectacular would put it, unchecked, in the answer's Content-Disposition, where a newline is a 500."""

    def _get_version_parameter(self, request):
        return None


urlpatterns = [
    path("admin/activity/", admin.site.admin_view(recent_activity_view), name="admin-activity"),
    path("i18n/", include("django.conf.urls.i18n")),  # the admin's language switch (set_language)
    path("admin/", admin.site.urls),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("health", health.health, name="health"),
    path("ready", health.ready, name="ready"),
    path("metrics", metrics.metrics, name="metrics"),
]

tenant_routes, public_routes, root_routes = [], [], []
for app, routes in project_modules("api.urls"):
    tenant_routes.append(path("", include((getattr(routes, "tenant_urlpatterns", []), app), f"{app}-tenant")))
    public_routes.append(path("", include((getattr(routes, "public_urlpatterns", []), app), f"{app}-public")))
    root_routes.append(path("", include((getattr(routes, "urlpatterns", []), app), namespace=app)))
# The API first, each prefix matched once for every app's routes: resolving an API path is half the work it was.
urlpatterns = [
    path("api/t/<slug:tenant>/", include(tenant_routes)),
    path("api/public/<slug:tenant>/", include(public_routes)),
    *urlpatterns,
    *root_routes,
]

# Last: an /api/ path no route matches ("/api/t/acme/bookings/abc") is the JSON 404 even with
# DEBUG on, where Django would answer its HTML debug page instead of handler404.
urlpatterns.append(re_path(r"^api/", api_route_not_found))

handler400 = "core.api.errors.json_400"
handler404 = "core.api.errors.json_404"
handler500 = "core.api.errors.json_500"
