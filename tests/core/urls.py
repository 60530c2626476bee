"""The real URL map plus a test-only endpoint to exercise Idempotency-Key handling."""

import time

from django.db.models import F, Value
from django.db.models.functions import Concat
from django.urls import path
from rest_framework import status
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from config.urls import handler400, handler404, handler500  # noqa: F401 - the test map keeps the JSON handlers
from config.urls import urlpatterns as real_urlpatterns
from core.api.idempotency import idempotent
from core.api.tenancy import PublicTenantMixin, TenantScopedMixin
from core.exceptions import Conflict, LockContended
from core.models import Tenant


class CounterBumpView(TenantScopedMixin, APIView):
    """Work that is visible: renames the tenant with a counter suffix. Body may ask to fail."""

    @idempotent()
    def post(self, request, tenant):
        time.sleep(float(request.data.get("sleep", 0)))
        if request.data.get("fail") == "conflict":
            raise Conflict()
        if request.data.get("fail") == "locked":
            raise LockContended()
        if request.data.get("fail") == "duplicate":  # a constraint no guard names
            Token.objects.create(user=request.user, key="x" * 40)  # one token per user: it has one
        if request.data.get("fail") == "bad-value":  # the ORM raises Django's ValidationError
            Tenant.objects.filter(created_at="not-a-date").exists()
        Tenant.objects.filter(pk=self.tenant.pk).update(name=Concat(F("name"), Value("+")))
        return Response({"name": Tenant.objects.get(pk=self.tenant.pk).name}, status=status.HTTP_201_CREATED)


LOCKED_ONCE = []


class TwoPhaseBumpView(TenantScopedMixin, APIView):
    @idempotent(two_phase=True)
    def post(self, request, tenant):
        if "echo" in request.data:  # a validation message quoting the input back, as a choice error does
            raise ValidationError({"echo": [f"{request.data['echo']!s} is not a valid choice."]})
        Tenant.objects.filter(pk=self.tenant.pk).update(name=Concat(F("name"), Value("+")))
        time.sleep(float(request.data.get("sleep", 0)))
        if LOCKED_ONCE:  # a test lets the next attempt that gets here meet lock contention (and only it)
            LOCKED_ONCE.pop()
            raise LockContended()
        return Response({"name": Tenant.objects.get(pk=self.tenant.pk).name}, status=status.HTTP_201_CREATED)


class PublicBumpView(PublicTenantMixin, APIView):
    """The same work on a public (anonymous) path."""

    @idempotent()
    def post(self, request, tenant):
        Tenant.objects.filter(pk=self.tenant.pk).update(name=Concat(F("name"), Value("+")))
        return Response({"name": Tenant.objects.get(pk=self.tenant.pk).name}, status=status.HTTP_201_CREATED)


class LockNowaitView(TenantScopedMixin, APIView):
    """Takes the tenant row FOR UPDATE NOWAIT and lets a conflict reach the exception handler raw."""

    def post(self, request, tenant):
        from django.db import transaction

        with transaction.atomic():
            Tenant.objects.select_for_update(nowait=True).get(pk=self.tenant.pk)
        return Response({})


urlpatterns = [
    path("api/t/<slug:tenant>/test-lock-nowait", LockNowaitView.as_view()),
    path("api/t/<slug:tenant>/test-bump", CounterBumpView.as_view()),
    path("api/t/<slug:tenant>/test-bump-two-phase", TwoPhaseBumpView.as_view()),
    path("api/public/<slug:tenant>/test-bump", PublicBumpView.as_view()),
    *real_urlpatterns,
]
