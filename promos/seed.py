"""Demo data for this app, called by ``manage.py seed_demo`` inside its transaction. Must be idempotent."""

from datetime import timedelta
from decimal import Decimal

from promos.models import PromoCode, RedemptionSession

DEMO_CODES = [
    dict(code="WELCOME10", bonus_type="fixed", bonus_value=Decimal("10.00"), per_customer_limit=1),
    dict(
        code="SPRING15",
        bonus_type="percentage",
        bonus_value=Decimal("15.00"),
        max_bonus=Decimal("50.00"),
        total_usage_limit=100,
        per_customer_limit=2,
    ),
]


def seed_demo(tenant, *, admin, api_user):
    for fields in DEMO_CODES:
        code = fields["code"]
        if not PromoCode.objects.by_code(code, tenant=tenant).exists():
            PromoCode.objects.create_code(tenant=tenant, **fields)
    if not RedemptionSession.objects.for_tenant(tenant).filter(customer="demo-customer").open().exists():
        RedemptionSession.objects.create_session(
            tenant=tenant, customer="demo-customer", max_amount=Decimal("250.00"), expires_in=timedelta(days=1)
        )
