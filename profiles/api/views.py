"""Thin views: validate input, call the manager verb, render the result."""

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.idempotency import idempotent
from core.api.lookup import get_for_tenant, valid_id
from core.api.representation import represented, validated
from core.api.tenancy import TenantScopedMixin
from profiles import selectors
from profiles.api import serializers as s
from profiles.exceptions import AuditEntryNotFound, ProfileNotFound
from profiles.models import Profile, ProfileAuditLog


class ProfileListCreateView(TenantScopedMixin, GenericAPIView):
    """Profiles of this family tree (live by default); create one."""

    serializer_class = s.ProfileSerializer

    @extend_schema(parameters=[s.ProfileListQuerySerializer], responses=s.ProfileSerializer(many=True))
    def get(self, request, tenant):
        query = validated(s.ProfileListQuerySerializer, request.query_params)
        profiles = Profile.objects.for_tenant(self.tenant)
        if query["deleted"] == "false":
            profiles = profiles.live()
        elif query["deleted"] == "true":
            profiles = profiles.deleted()
        if query.get("search"):
            profiles = profiles.filter(first_name__icontains=query["search"]) | profiles.filter(
                last_name__icontains=query["search"]
            )
        page = self.paginate_queryset(profiles.order_by("id"))
        return self.get_paginated_response(s.ProfileSerializer(page, many=True).data)

    @extend_schema(request=s.ProfileCreateInputSerializer, responses={201: s.ProfileSerializer})
    @idempotent()
    def post(self, request, tenant):
        data = validated(s.ProfileCreateInputSerializer, request.data)
        profile = Profile.objects.create_profile(tenant=self.tenant, actor=request.user, **data)
        return Response(represented(s.ProfileSerializer, profile), status=status.HTTP_201_CREATED)


class ProfileDetailView(TenantScopedMixin, APIView):
    """One profile; PATCH with the version you read; DELETE (soft) with ?version=N."""

    @extend_schema(responses=s.ProfileSerializer)
    def get(self, request, tenant, pk):
        profile = get_for_tenant(Profile, self.tenant, ProfileNotFound, pk=pk)
        return Response(represented(s.ProfileSerializer, profile))

    @extend_schema(request=s.ProfileUpdateInputSerializer, responses=s.ProfileSerializer)
    def patch(self, request, tenant, pk):
        data = dict(validated(s.ProfileUpdateInputSerializer, request.data))
        version = data.pop("version")
        profile = Profile.objects.update_profile(
            valid_id(pk, ProfileNotFound), tenant=self.tenant, version=version, actor=request.user, **data
        )
        return Response(represented(s.ProfileSerializer, profile))

    @extend_schema(parameters=[s.ProfileDeleteQuerySerializer], responses={200: s.ProfileSerializer})
    def delete(self, request, tenant, pk):
        version = validated(s.ProfileDeleteQuerySerializer, request.query_params)["version"]
        profile = Profile.objects.soft_delete(
            valid_id(pk, ProfileNotFound), tenant=self.tenant, version=version, actor=request.user
        )
        return Response(represented(s.ProfileSerializer, profile))


class ProfileRestoreView(TenantScopedMixin, APIView):
    @extend_schema(request=s.ProfileRestoreInputSerializer, responses=s.ProfileSerializer)
    @idempotent()
    def post(self, request, tenant, pk):
        version = validated(s.ProfileRestoreInputSerializer, request.data).get("version")
        profile = Profile.objects.restore(
            valid_id(pk, ProfileNotFound), tenant=self.tenant, version=version, actor=request.user
        )
        return Response(represented(s.ProfileSerializer, profile))


class ProfileHistoryView(TenantScopedMixin, APIView):
    """Audit entries of one profile, oldest first."""

    @extend_schema(responses=s.AuditEntrySerializer(many=True))
    def get(self, request, tenant, pk):
        profile = get_for_tenant(Profile.objects.only("pk"), self.tenant, ProfileNotFound, pk=pk)
        entries = ProfileAuditLog.objects.filter(profile=profile).select_related("actor", "undone_by").order_by("id")
        return Response(s.AuditEntrySerializer(entries, many=True).data)


class _TreeView(TenantScopedMixin, APIView):
    up = True

    @extend_schema(parameters=[s.TreeQuerySerializer], responses=s.TreeNodeSerializer(many=True))
    def get(self, request, tenant, pk):
        max_depth = validated(s.TreeQuerySerializer, request.query_params)["max_depth"]
        walk = selectors.ancestors if self.up else selectors.descendants
        nodes = walk(valid_id(pk, ProfileNotFound), tenant=self.tenant, max_depth=max_depth)
        return Response(s.TreeNodeSerializer(nodes, many=True).data)


class ProfileAncestorsView(_TreeView):
    """Live ancestors, nearest first (depth 1 = parents)."""

    up = True


class ProfileDescendantsView(_TreeView):
    """Live descendants, nearest first (depth 1 = children)."""

    up = False


class AuditEntryDetailView(TenantScopedMixin, APIView):
    @extend_schema(responses=s.AuditEntrySerializer)
    def get(self, request, tenant, pk):
        entries = ProfileAuditLog.objects.select_related("actor", "undone_by")
        entry = get_for_tenant(entries, self.tenant, AuditEntryNotFound, pk=pk)
        return Response(represented(s.AuditEntrySerializer, entry))


class AuditEntryUndoView(TenantScopedMixin, APIView):
    """Undo one audit entry (update, delete or restore) exactly once."""

    @extend_schema(request=s.UndoInputSerializer, responses=s.UndoResultSerializer)
    @idempotent()
    def post(self, request, tenant, pk):
        reason = validated(s.UndoInputSerializer, request.data)["reason"]
        entry = ProfileAuditLog.objects.undo(
            valid_id(pk, AuditEntryNotFound), tenant=self.tenant, actor=request.user, reason=reason
        )
        result = {"undone": entry, "undo_entry": entry.undo_entry, "profile": entry.profile}
        return Response(represented(s.UndoResultSerializer, result))
