"""The currency migration keeps every code, usage and session as it was, in USD."""

from datetime import timedelta
from decimal import Decimal

import pgtrigger
import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

BEFORE = [("promos", "0002_field_labels")]
AFTER = [("promos", "0003_currency_and_minor_units")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.fixture
def back_to_the_latest_schema():
    """Every later test of this process runs on the newest migrations: a trigger a later one installs
    would otherwise stay missing (the usage counting itself on its code, 0010, did)."""
    yield
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("back_to_the_latest_schema")
def test_the_currency_migration_keeps_every_row_in_usd():
    try:
        old = migrate(BEFORE)
        Tenant = old.get_model("core", "Tenant")
        OldCode = old.get_model("promos", "PromoCode")
        OldUsage = old.get_model("promos", "PromoUsage")
        OldSession = old.get_model("promos", "RedemptionSession")
        tenant = Tenant.objects.create(name="Old", slug="old")
        code = OldCode.objects.create(
            tenant=tenant,
            code="OLD15",
            bonus_type="percentage",
            bonus_value=Decimal("15.00"),
            max_bonus=Decimal("12.50"),
            times_used=1,
        )
        usage = OldUsage.objects.create(
            tenant=tenant, promo=code, customer="a", base_amount=Decimal("33.33"), bonus_amount=Decimal("5.00")
        )
        session = OldSession.objects.create(
            tenant=tenant,
            customer="a",
            max_amount=Decimal("80.00"),
            secret_hash="0" * 64,
            expires_at=timezone.now() + timedelta(hours=1),
        )
    finally:
        migrate(AFTER)

    from promos.api.serializers import PromoCodeSerializer, PromoUsageSerializer, RedemptionSessionSerializer
    from promos.models import PromoCode, PromoUsage, RedemptionSession

    code = PromoCode.objects.get(pk=code.pk)
    assert (code.currency, code.bonus_value, code.max_bonus, code.times_used) == (
        "USD",
        Decimal("15"),
        Decimal("12.5"),
        1,
    )
    usage = PromoUsage.objects.get(pk=usage.pk)
    assert (usage.currency, usage.base_amount, usage.bonus_amount) == ("USD", Decimal("33.33"), Decimal("5"))
    session = RedemptionSession.objects.get(pk=session.pk)
    assert (session.currency, session.max_amount) == ("USD", Decimal("80"))
    # the API writes them as it always did
    assert (PromoCodeSerializer(code).data["bonus_value"], PromoCodeSerializer(code).data["max_bonus"]) == (
        "15.00",
        "12.50",
    )
    assert PromoUsageSerializer(usage).data["base_amount"] == "33.33"
    assert RedemptionSessionSerializer(session).data["max_amount"] == "80.00"


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("back_to_the_latest_schema")
def test_the_counter_migration_recounts_a_drifted_code_before_the_usages_count_themselves():
    """0010 installs the triggers that move times_used by one per usage: a counter that had drifted would
    stay off by as much for good (and no write could repair it), so the migration recounts it first."""
    try:
        old = migrate([("promos", "0009_session_expiry_never_later")])
        Tenant = old.get_model("core", "Tenant")
        Code, Usage = old.get_model("promos", "PromoCode"), old.get_model("promos", "PromoUsage")
        tenant = Tenant.objects.create(name="Old", slug="old")
        drifted = Code.objects.create(tenant=tenant, code="DRIFT", bonus_type="fixed", bonus_value=1, times_used=0)
        over = Code.objects.create(
            tenant=tenant, code="OVER", bonus_type="fixed", bonus_value=1, times_used=1, total_usage_limit=1
        )
        for code, customer in ((drifted, "a"), (drifted, "b"), (over, "a"), (over, "b")):
            Usage.objects.create(tenant=tenant, promo=code, customer=customer, base_amount=10, bonus_amount=1)
    finally:
        migrate([("promos", "0010_usages_count_themselves")])
    from promos.models import PromoCode, PromoUsage

    assert PromoCode.objects.get(pk=drifted.pk).times_used == 2  # recounted
    assert PromoCode.objects.get(pk=over.pk).times_used == 1  # over its limit: left for check_invariants
    with pgtrigger.ignore("promos.PromoUsage:promo_usage_counted"):  # the planted excess, gone uncounted
        PromoUsage.objects.filter(promo_id=over.pk, customer="b").delete()
