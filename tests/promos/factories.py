from datetime import timedelta
from decimal import Decimal

import factory
from django.db.models import F, Value
from django.db.models.functions import Least

from core.guards import ClockNow
from promos.managers import hash_secret
from promos.models import PromoCode, PromoUsage, RedemptionSession
from tests.factories import TenantFactory


class PromoCodeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = PromoCode

    tenant = factory.SubFactory(TenantFactory)
    code = factory.Sequence(lambda n: f"CODE{n}")
    bonus_type = PromoCode.BonusType.FIXED
    bonus_value = Decimal("10.00")


class PromoUsageFactory(factory.django.DjangoModelFactory):
    """A usage made through the manager, so ``times_used`` stays in step."""

    class Meta:
        model = PromoUsage

    @classmethod
    def _create(cls, model_class, *, promo, customer="alice", amount=Decimal("100.00"), reference=""):
        return PromoCode.objects.redeem(
            promo.code, tenant=promo.tenant, customer=customer, amount=amount, reference=reference
        )


SECRET = "the-customer-secret"


class RedemptionSessionFactory(factory.django.DjangoModelFactory):
    """A session whose approval secret is ``SECRET``; ``expires_in`` counts from the database clock."""

    class Meta:
        model = RedemptionSession

    tenant = factory.SubFactory(TenantFactory)
    customer = "alice"
    max_amount = Decimal("100.00")
    status = RedemptionSession.Status.PENDING
    secret_hash = hash_secret(SECRET)

    @classmethod
    def _create(cls, model_class, *args, expires_in=timedelta(minutes=15), **kwargs):
        kwargs.setdefault("expires_at", ClockNow() + Value(expires_in))
        # Every session is born pending (the state machine refuses any other insert); an
        # approved one is then approved the way the customer would (pending -> approved).
        status = kwargs.pop("status", RedemptionSession.Status.PENDING)
        # approved now, or, for a session made already lapsed, just before it lapsed (the consent came in time:
        # redemption_approved_before_expiry)
        approved_at = kwargs.pop("approved_at", Least(ClockNow(), F("expires_at") - Value(timedelta(microseconds=1))))
        session = super()._create(model_class, *args, **kwargs)
        if status == RedemptionSession.Status.APPROVED:
            model_class.objects.filter(pk=session.pk).update(status=status, approved_at=approved_at)
        elif status != RedemptionSession.Status.PENDING:
            raise ValueError(f"RedemptionSessionFactory makes pending or approved sessions, not {status!r}")
        session.refresh_from_db()
        return session
