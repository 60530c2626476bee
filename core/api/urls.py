from django.urls import path

from core.api.views import TenantDetailView

tenant_urlpatterns = [path("", TenantDetailView.as_view(), name="tenant-detail")]
