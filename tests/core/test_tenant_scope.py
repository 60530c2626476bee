"""Every model whose queryset derives from TenantScopedQuerySet: ``for_tenant`` returns that tenant's rows only.

The models are found through the app registry, so a new tenant-owned model is covered the
day its queryset derives from the base (its test fails until it has a builder below).
"""

import pytest
from django.apps import apps
from django.db import transaction

from bookings.models import Booking
from core.api.tenancy import ViewerReadsOnly
from core.managers import TenantScopedQuerySet
from core.models import Membership
from profiles.models import ProfileAuditLog
from promos.models import PromoCode, PromoUsage
from tests.bookings.factories import PackageFactory, future
from tests.conftest import token_client
from tests.factories import MembershipFactory, TenantFactory, UserFactory
from tests.profiles.factories import ProfileFactory
from tests.promos.factories import PromoCodeFactory, PromoUsageFactory, RedemptionSessionFactory
from tests.proposals.factories import make_proposal
from tests.refusals import assert_error


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


# --- a viewer reads only, through the API as in the admin ---------------------------------------


@pytest.fixture
def viewer_client(tenant):
    viewer = MembershipFactory(tenant=tenant, user=UserFactory(username="viewer"), role=Membership.Role.VIEWER)
    return token_client(viewer.user)


def test_a_viewer_reads_but_every_write_is_403_and_changes_nothing(viewer_client, tenant):
    promo = PromoCodeFactory(tenant=tenant, code="VIEW")
    max_bonus = promo.max_bonus
    profile = ProfileFactory(tenant=tenant)
    base = f"/api/t/{tenant.slug}"
    assert viewer_client.get(f"{base}/promo-codes/{promo.pk}").status_code == 200
    assert viewer_client.get(f"{base}/").json()["role"] == Membership.Role.VIEWER
    writes = [
        viewer_client.post(f"{base}/promo-codes/{promo.pk}/deactivate"),
        viewer_client.patch(f"{base}/promo-codes/{promo.pk}", {"max_bonus": "1", "version": 1}, format="json"),
        viewer_client.delete(f"{base}/promo-codes/{promo.pk}"),
        viewer_client.post(f"{base}/promo-codes", {"code": "NEW", "bonus_type": "fixed", "bonus_value": "1"}),
        viewer_client.patch(f"{base}/profiles/{profile.pk}", {"first_name": "X", "version": 1}, format="json"),
    ]
    for response in writes:
        assert_error(response, 403, "permission_denied")
    promo.refresh_from_db()
    assert (promo.is_active, promo.max_bonus, promo.version) == (True, max_bonus, 1)
    assert PromoCode.objects.filter(tenant=tenant).count() == 1
    profile.refresh_from_db()
    assert profile.version == 1


def test_every_write_route_under_a_tenant_is_kept_from_viewers():
    """Every view under /api/t/<tenant>/ takes TenantScopedMixin's permissions, the viewer's rule among them."""
    from config.urls import urlpatterns

    tenant_routes = urlpatterns[0]
    views = [pattern.callback.view_class for pattern in _patterns(tenant_routes.url_patterns)]
    assert views and all(ViewerReadsOnly in view.permission_classes for view in views), [
        view.__name__ for view in views if ViewerReadsOnly not in view.permission_classes
    ]


def _patterns(patterns):
    for pattern in patterns:
        if hasattr(pattern, "url_patterns"):
            yield from _patterns(pattern.url_patterns)
        else:
            yield pattern
