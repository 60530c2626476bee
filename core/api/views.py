from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.tenancy import TenantScopedMixin
from core.models import Membership


class TenantSerializer(serializers.Serializer):
    slug = serializers.SlugField()
    name = serializers.CharField()
    role = serializers.ChoiceField(choices=Membership.Role.choices)


class TenantDetailView(TenantScopedMixin, APIView):
    """The tenant this token works in, and the caller's role there."""

    @extend_schema(responses=TenantSerializer)
    def get(self, request, tenant):
        tenant = self.tenant
        return Response({"slug": tenant.slug, "name": tenant.name, "role": self.membership.role})
