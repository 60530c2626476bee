"""Each promos invariant detects the defect it names: planted past the guards, then reported."""

from datetime import timedelta
from decimal import Decimal

import pgtrigger
import pytest
from django.db.models import F, Value

from core.guards import ClockNow
from core.invariants import run_checks
from promos import invariants
from promos.models import PromoCode, PromoUsage, RedemptionSession
from tests.factories import TenantFactory
from tests.promos.factories import PromoCodeFactory, RedemptionSessionFactory
from tests.promos.helpers import bypassing

pytestmark = pytest.mark.django_db


def violations(check, tenant=None):
    return list(check(tenant))


def test_a_clean_shop_passes_every_promos_check(tenant):
    promo = PromoCodeFactory(tenant=tenant, total_usage_limit=3, per_customer_limit=1)
    usage = PromoCode.objects.redeem(promo.code, tenant=tenant, customer="a", amount="10")
    PromoCode.objects.redeem(promo.code, tenant=tenant, customer="b", amount="10")
    PromoUsage.objects.void(usage.pk, tenant=tenant)
    used = RedemptionSessionFactory(tenant=tenant, status="approved")
    RedemptionSession.objects.consume(used.session_id, tenant=tenant, amount="5")
    RedemptionSessionFactory(tenant=tenant)
    assert [r for r in run_checks(tenant) if r.app == "promos" and not r.ok] == []


def test_counter_drift_is_detected(tenant):
    promo = PromoCodeFactory(tenant=tenant, code="DRIFT")
    PromoCode.objects.redeem(promo.code, tenant=tenant, customer="a", amount="10")
    with pgtrigger.ignore("promos.PromoCode:promo_times_used_transition"):  # the database refuses it: planted
        PromoCode.objects.filter(pk=promo.pk).update(times_used=F("times_used") - 1)  # a lost increment
    assert violations(invariants.usage_counter_matches_usages) == [
        "code 'DRIFT': times_used=0, live usages=1, limit=None"
    ]


def test_a_voided_usage_still_counted_is_detected(tenant):
    promo = PromoCodeFactory(tenant=tenant, code="VOID")
    usage = PromoCode.objects.redeem(promo.code, tenant=tenant, customer="a", amount="10")
    with pgtrigger.ignore("promos.PromoUsage:promo_usage_counted"):  # the void counts itself back: planted
        PromoUsage.objects.filter(pk=usage.pk).update(voided_at=ClockNow())  # voided, the use never given back
    assert violations(invariants.usage_counter_matches_usages) == [
        "code 'VOID': times_used=1, live usages=0, limit=None"
    ]


def test_usages_over_the_total_limit_are_detected(tenant):
    promo = PromoCodeFactory(tenant=tenant, code="OVER", total_usage_limit=1)
    PromoCode.objects.redeem(promo.code, tenant=tenant, customer="a", amount="10")
    with bypassing(PromoCode, constraints=["promo_times_used_within_limit"]):
        PromoCode.objects.filter(pk=promo.pk).update(total_usage_limit=None)
        PromoCode.objects.redeem(promo.code, tenant=tenant, customer="b", amount="10")
        PromoCode.objects.filter(pk=promo.pk).update(total_usage_limit=1)
        assert violations(invariants.usage_counter_matches_usages) == [
            "code 'OVER': times_used=2, live usages=2, limit=1"
        ]


def test_a_customer_over_the_per_customer_limit_is_detected(tenant):
    promo = PromoCodeFactory(tenant=tenant, per_customer_limit=2)
    for _ in range(2):
        PromoCode.objects.redeem(promo.code, tenant=tenant, customer="alice", amount="10")
    PromoCode.objects.filter(pk=promo.pk).update(per_customer_limit=1)
    assert violations(invariants.per_customer_limit_respected) == [f"code {promo.pk} customer 'alice': 2 usages"]


def test_a_usage_in_another_shop_than_its_code_is_detected(tenant):
    promo = PromoCodeFactory(tenant=tenant)
    usage = PromoCode.objects.redeem(promo.code, tenant=tenant, customer="a", amount="10")
    elsewhere = TenantFactory()
    with bypassing(PromoUsage, triggers=["promo_usage_transition"]):
        PromoUsage.objects.filter(pk=usage.pk).update(tenant=elsewhere)
    assert violations(invariants.usage_in_its_codes_tenant) == [
        f"usage {usage.pk}: tenant {elsewhere.pk}, code's tenant {tenant.pk}"
    ]


def test_a_usage_in_another_currency_or_a_fraction_of_a_yen_is_detected(tenant):
    promo = PromoCode.objects.create_code(tenant=tenant, code="YEN", currency="JPY", bonus_type="fixed", bonus_value=5)
    usage = PromoCode.objects.redeem("YEN", tenant=tenant, customer="a", amount="100")
    session = RedemptionSessionFactory(tenant=tenant, currency="JPY", max_amount=Decimal("100"))
    assert violations(invariants.amounts_in_their_currency) == []
    with bypassing(PromoUsage, triggers=["promo_usage_transition"]):
        PromoUsage.objects.filter(pk=usage.pk).update(currency="USD")
    assert violations(invariants.amounts_in_their_currency) == [f"usage {usage.pk}: USD, code's JPY"]
    with bypassing(PromoUsage, triggers=["promo_usage_transition"]):
        PromoUsage.objects.filter(pk=usage.pk).update(currency="JPY", base_amount=Decimal("100.5"))
    with bypassing(RedemptionSession, triggers=["redemption_session_terms_transition"]):  # never changes: planted
        RedemptionSession.objects.filter(pk=session.pk).update(max_amount=Decimal("99.5"))
    assert violations(invariants.amounts_in_their_currency) == [
        f"usage {usage.pk}: a fraction of JPY",
        f"session {session.session_id}: a fraction of JPY",
    ]
    assert promo.currency == "JPY"


def test_a_session_status_outside_the_machine_is_detected(tenant):
    session = RedemptionSessionFactory(tenant=tenant)
    assert violations(invariants.session_status_in_machine) == []
    with bypassing(
        RedemptionSession,
        triggers=["redemption_session_status_transition"],
        constraints=["redemption_status_known"],
    ):
        RedemptionSession.objects.filter(pk=session.pk).update(status="paused")
    assert violations(invariants.session_status_in_machine) == [f"session {session.session_id}: status 'paused'"]


@pytest.mark.parametrize(
    "status,plant",
    [
        ("approved", dict(status="used")),  # used, no used_at / used_amount
        ("approved", dict(status="used", used_at=ClockNow())),  # used, no amount
        ("approved", dict(used_at=ClockNow(), used_amount=Decimal("5"))),  # stamped, not used
        ("pending", dict(used_amount=Decimal("5"))),  # an amount on an unused session
    ],
)
def test_a_session_used_without_its_stamps_or_stamped_unused_is_detected(tenant, status, plant):
    session = RedemptionSessionFactory(tenant=tenant, status=status)
    with bypassing(RedemptionSession, constraints=["redemption_used_iff_used_at"]):
        RedemptionSession.objects.filter(pk=session.pk).update(**plant)
    assert violations(invariants.session_used_iff_stamped) == [
        f"session {session.session_id}: status {plant.get('status', status)!r}"
    ]


def test_a_session_used_after_expiry_or_over_its_amount_is_detected(tenant):
    late, over = (RedemptionSessionFactory(tenant=tenant, status="approved") for _ in range(2))
    for session in (late, over):
        RedemptionSession.objects.consume(session.session_id, tenant=tenant, amount="5")
    with bypassing(
        RedemptionSession,
        triggers=["redemption_session_used_stamps_transition"],  # a used session's stamps never change: planted
        constraints=["redemption_used_before_expiry", "redemption_used_iff_used_at"],
    ):
        RedemptionSession.objects.filter(pk=late.pk).update(used_at=F("expires_at") + Value(timedelta(seconds=1)))
        RedemptionSession.objects.filter(pk=over.pk).update(used_amount=F("max_amount") + 1)
    assert sorted(violations(invariants.sessions_consumed_within_terms)) == sorted(
        [f"session {late.session_id}", f"session {over.session_id}"]
    )
