"""race_demo: forty customers at a code good for five; thirty consumes of one approved session."""

from decimal import Decimal

from django.db.models.functions import Now

from core.guards import database_clock
from core.race_demo import naive_pause, scenario
from promos.exceptions import PromoExhausted, SessionAlreadyUsed, SessionExpired, SessionNotApproved
from promos.models import PromoCode, PromoUsage, RedemptionSession

AMOUNT = Decimal("50.00")


@scenario
class PromoRedeem:
    name = "promo redeem"
    attempts = 40
    expected_winners = 5

    def __init__(self, tenant):
        self.tenant = tenant
        self.code = PromoCode.objects.create_code(
            tenant=tenant,
            code="RACE5",
            bonus_type=PromoCode.BonusType.FIXED,
            bonus_value=Decimal("5.00"),
            total_usage_limit=5,
            per_customer_limit=1,
        )

    def guarded(self, i):
        return PromoCode.objects.redeem("RACE5", tenant=self.tenant, customer=f"customer-{i}", amount=AMOUNT)

    def naive(self, i):
        code = PromoCode.objects.get(pk=self.code.pk)
        if code.times_used >= code.total_usage_limit:
            raise PromoExhausted()
        naive_pause()
        usage = PromoUsage.objects.create(
            tenant=self.tenant, promo=code, customer=f"customer-{i}", base_amount=AMOUNT, bonus_amount=code.bonus_value
        )
        PromoCode.objects.filter(pk=code.pk).update(times_used=code.times_used + 1)
        return usage


@scenario
class SessionConsume:
    name = "session consume"
    attempts = 30
    expected_winners = 1

    def __init__(self, tenant):
        self.tenant = tenant
        session, secret = RedemptionSession.objects.create_session(
            tenant=tenant, customer="race-demo-customer", max_amount=Decimal("100.00")
        )
        RedemptionSession.objects.approve(session.session_id, secret=secret)
        self.session_id = session.session_id

    def guarded(self, i):
        return RedemptionSession.objects.consume(self.session_id, tenant=self.tenant, amount=Decimal("25.00"))

    def naive(self, i):
        session = RedemptionSession.objects.get(session_id=self.session_id)
        if session.status == RedemptionSession.Status.USED:
            raise SessionAlreadyUsed()
        if session.status != RedemptionSession.Status.APPROVED:
            raise SessionNotApproved()
        if session.expires_at <= database_clock():
            raise SessionExpired()
        naive_pause()
        RedemptionSession.objects.filter(pk=session.pk).update(
            status=RedemptionSession.Status.USED, used_at=Now(), used_amount=Decimal("25.00")
        )
        return session
