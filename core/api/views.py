from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.tenancy import TenantScopedMixin
from core.models import Membership


class TenantSerializer(serializers.Serializer):
    slug = serializers.SlugField()
    name = serializers.CharField()
    time_zone = serializers.CharField(help_text="The shop's IANA time zone: its dates begin and end by it.")
    role = serializers.ChoiceField(choices=Membership.Role.choices)


class TenantDetailView(TenantScopedMixin, APIView):
    """The tenant this token works in, and the caller's role there."""

    @extend_schema(responses=TenantSerializer)
    def get(self, request, tenant):
        tenant = self.tenant
        return Response(
            {"slug": tenant.slug, "name": tenant.name, "time_zone": tenant.time_zone, "role": self.membership.role}
        )
