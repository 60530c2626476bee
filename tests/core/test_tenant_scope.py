"""Every model whose queryset derives from TenantScopedQuerySet: ``for_tenant`` returns that tenant's rows only.

The models are found through the app registry, so a new tenant-owned model is covered the
day its queryset derives from the base (its test fails until it has a builder below).
"""

import pytest
from django.apps import apps
from django.db import transaction

from bookings.models import Booking
from core.managers import TenantScopedQuerySet
from profiles.models import ProfileAuditLog
from promos.models import PromoUsage
from tests.bookings.factories import PackageFactory, future
from tests.factories import TenantFactory
from tests.profiles.factories import ProfileFactory
from tests.promos.factories import PromoCodeFactory, PromoUsageFactory, RedemptionSessionFactory
from tests.proposals.factories import make_proposal


def tenant_scoped_models():
    return sorted(
        (
            model
            for model in apps.get_models()
            if issubclass(type(model._default_manager.get_queryset()), TenantScopedQuerySet)
        ),
        key=lambda model: model._meta.label,
    )


def _booking(tenant):
    with transaction.atomic():
        return Booking.objects.hold(
            PackageFactory(tenant=tenant), future(), customer_name="Ann", customer_email="ann@example.com"
        )


def _audit_entry(tenant):
    return ProfileAuditLog.objects.get(profile=ProfileFactory(tenant=tenant))  # its ``create`` entry


# One row of the model for the tenant (and no other row of that model), made the way the app makes it.
BUILDERS = {
    "bookings.Package": lambda tenant: PackageFactory(tenant=tenant),
    "bookings.Booking": _booking,
    "proposals.Proposal": make_proposal,
    "promos.PromoCode": lambda tenant: PromoCodeFactory(tenant=tenant),
    "promos.PromoUsage": lambda tenant: PromoUsageFactory(promo=PromoCodeFactory(tenant=tenant)),
    "promos.RedemptionSession": lambda tenant: RedemptionSessionFactory(tenant=tenant),
    "profiles.Profile": lambda tenant: ProfileFactory(tenant=tenant),
    "profiles.ProfileAuditLog": _audit_entry,
}


def test_every_builder_names_a_model_found_through_the_registry():
    found = {model._meta.label for model in tenant_scoped_models()}
    assert set(BUILDERS) <= found, f"no longer tenant-scoped: {sorted(set(BUILDERS) - found)}"


@pytest.mark.django_db
@pytest.mark.parametrize("model", tenant_scoped_models(), ids=lambda model: model._meta.label)
def test_for_tenant_returns_only_that_tenants_rows(model):
    build = BUILDERS.get(model._meta.label)
    if build is None:
        pytest.fail(f"{model._meta.label} is tenant-scoped: add a builder for it to BUILDERS")
    ours, theirs, empty = TenantFactory(), TenantFactory(), TenantFactory()
    mine = {build(ours).pk, build(ours).pk}
    other = {build(theirs).pk}

    scoped = model._default_manager.get_queryset()
    assert set(scoped.for_tenant(ours).values_list("pk", flat=True)) == mine
    assert set(scoped.for_tenant(theirs).values_list("pk", flat=True)) == other
    assert not scoped.for_tenant(empty).exists()
    assert set(scoped.for_tenant(ours.pk).values_list("pk", flat=True)) == mine  # a tenant's id does too


@pytest.mark.django_db
def test_tenant_field_may_reach_the_tenant_through_a_relation():
    class ThroughPromo(TenantScopedQuerySet):
        tenant_field = "promo__tenant"

    ours, theirs = TenantFactory(), TenantFactory()
    usage = PromoUsageFactory(promo=PromoCodeFactory(tenant=ours))
    PromoUsageFactory(promo=PromoCodeFactory(tenant=theirs))

    scoped = ThroughPromo(model=PromoUsage).for_tenant(ours)
    assert '"promos_promocode"."tenant_id"' in str(scoped.query)  # joined through the promo
    assert list(scoped) == [usage]
