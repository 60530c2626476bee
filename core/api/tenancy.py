"""Tenant resolution for /api/t/<tenant>/... (members only) and /api/public/<tenant>/...

A non-member and an unknown tenant get the same 404: the API never says which
tenants exist.
"""

from functools import cached_property

from rest_framework.permissions import SAFE_METHODS, AllowAny, BasePermission, IsAuthenticated

from core.api.throttles import TenantApiThrottle
from core.exceptions import TenantNotFound
from core.models import Membership, Tenant


class ViewerReadsOnly(BasePermission):
    """A viewer reads only, through the API as in the admin (core/admin_scope.py): any other method is
    403 ``permission_denied`` before the view does anything. A non-member is still 404 (``membership``)."""

    def has_permission(self, request, view):
        return request.method in SAFE_METHODS or view.membership.role != Membership.Role.VIEWER


class TenantScopedMixin:
    """For views under /api/t/<tenant>/: the authenticated user must be a member (a viewer reads only)."""

    permission_classes = [IsAuthenticated, ViewerReadsOnly]
    throttle_classes = [TenantApiThrottle]  # per user, checked in initial() before any work
    tenant_url_kwarg = "tenant"

    def check_permissions(self, request):
        super().check_permissions(request)
        # Resolved now, so a non-member gets 404 before any work, and before the per-user throttle (next in
        # DRF's initial) counts a request that was never theirs to make.
        _ = self.tenant

    @cached_property
    def membership(self):
        """The caller's membership of the URL's tenant (tenant selected): 404 for a non-member."""
        slug = self.kwargs.get(self.tenant_url_kwarg)
        # Token authentication read it with the token (one query); a session login reads it here.
        membership = getattr(self.request, "lockstep_membership", None)
        if membership is None or membership.tenant.slug != slug or membership.user_id != self.request.user.pk:
            membership = (
                Membership.objects.select_related("tenant").filter(user=self.request.user, tenant__slug=slug).first()
                if self.request.user.is_authenticated
                else None
            )
        if membership is None:
            raise TenantNotFound()
        return membership

    @property
    def tenant(self):
        return self.membership.tenant


class PublicTenantMixin:
    """For views under /api/public/<tenant>/: no authentication, tenant by slug."""

    permission_classes = [AllowAny]
    authentication_classes = []
    tenant_url_kwarg = "tenant"

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        _ = self.tenant

    @cached_property
    def tenant(self):
        tenant = Tenant.objects.by_slug(self.kwargs.get(self.tenant_url_kwarg))
        if tenant is None:
            raise TenantNotFound()
        return tenant
