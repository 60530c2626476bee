"""Scenarios: customers at a code good for a few uses; consumes of one approved session."""

import hashlib
import uuid
from datetime import timedelta
from decimal import Decimal

from django.db.models import F
from django.db.models.functions import Coalesce, Now

from core.guards import ClockNow
from core.race_demo import Scenario, customer, scenario
from promos.exceptions import (
    PromoCustomerLimit,
    PromoExhausted,
    PromoInactive,
    PromoNotFound,
    SessionAlreadyUsed,
    SessionExpired,
    SessionNotApproved,
    SessionNotFound,
)
from promos.models import PromoCode, PromoUsage, RedemptionSession


@scenario
class PromoRedeem(Scenario):
    """``PromoCode.objects.redeem``: code ``B<t>``."""

    name = "promo redeem"
    attempts = 40
    expected_winners = 5
    # The usage counting itself on the code (and refusing any other count) would make the naive insert
    # meet the limit's CHECK: switched off, the naive body counts as it read, the lost update it shows.
    backstops = ("promos.PromoUsage:promo_usage_counted", "promos.PromoCode:promo_times_used_transition")
    AMOUNT = Decimal("100.00")

    @staticmethod
    def code(t):
        return f"B{t}"

    def create_target(self, *, total_usage_limit, per_customer_limit=None):
        """Code ``B0`` (target 0): a fixed bonus of 5.00."""
        return PromoCode.objects.create_code(
            tenant=self.tenant,
            code=self.code(0),
            bonus_type=PromoCode.BonusType.FIXED,
            bonus_value=Decimal("5.00"),
            total_usage_limit=total_usage_limit,
            per_customer_limit=per_customer_limit,
        )

    def prepare(self):
        self.create_target(total_usage_limit=5, per_customer_limit=1)

    def guarded(self, t, k):
        return PromoCode.objects.redeem(self.code(t), tenant=self.tenant, customer=customer(k), amount=self.AMOUNT)

    def check_then_act(self, t, k):
        promo = PromoCode.objects.by_code(self.code(t), tenant=self.tenant).first()
        if promo is None:
            raise PromoNotFound()
        if not promo.is_active:
            raise PromoInactive()
        if promo.total_usage_limit is not None and promo.times_used >= promo.total_usage_limit:
            raise PromoExhausted()
        if promo.per_customer_limit is not None:
            uses = PromoUsage.objects.live().filter(promo=promo, customer=customer(k)).count()
            if uses >= promo.per_customer_limit:
                raise PromoCustomerLimit()
        self.pause()
        usage = PromoUsage.objects.create(
            tenant=self.tenant,
            promo=promo,
            customer=customer(k),
            base_amount=self.AMOUNT,
            bonus_amount=promo.bonus_value,
        )
        # (a save(update_fields=["times_used"]) is refused outright: GuardedWriteError)
        PromoCode.objects.filter(pk=promo.pk).update(times_used=promo.times_used + 1, updated_at=Now())
        return usage


def session_uuid(t):
    return uuid.UUID(hashlib.md5(f"bench:{t}".encode()).hexdigest())  # noqa: S324 - an id, not a secret


@scenario
class SessionConsume(Scenario):
    """``RedemptionSession.objects.consume``: session md5('bench:<t>'), 10.00 of its 100.00."""

    name = "session consume"
    attempts = 30
    expected_winners = 1
    backstops = ("promos.RedemptionSession:redemption_session_used_stamps_transition",)
    AMOUNT = Decimal("10.00")

    def create_target(self, *, expires_in=timedelta(days=1)):
        """Session ``session_uuid(0)`` (target 0), pending: ``approve_all`` approves it."""
        return RedemptionSession.objects.create(
            session_id=session_uuid(0),
            tenant=self.tenant,
            customer="c",
            max_amount=Decimal("100.00"),
            secret_hash="0" * 64,
            expires_at=Now() + expires_in,
        )

    def approve_all(self):
        """Born pending (the state machine refuses any other start), then approved all at once."""
        RedemptionSession.objects.filter(tenant=self.tenant).update(
            status=RedemptionSession.Status.APPROVED, approved_at=Now()
        )

    def prepare(self):
        self.create_target()
        self.approve_all()

    def guarded(self, t, k):
        return RedemptionSession.objects.consume(session_uuid(t), tenant=self.tenant, amount=self.AMOUNT)

    def check_then_act(self, t, k):
        found = RedemptionSession.objects.annotate(db_now=ClockNow())
        session = found.filter(session_id=session_uuid(t), tenant=self.tenant).first()
        if session is None:
            raise SessionNotFound()
        if session.used_at is not None:
            raise SessionAlreadyUsed()
        if session.status != RedemptionSession.Status.APPROVED:
            raise SessionNotApproved()
        if session.expires_at <= session.db_now:
            raise SessionExpired()
        self.pause()
        # Accumulate, so a double consume (two callers handed the goods) shows in the row.
        RedemptionSession.objects.filter(pk=session.pk).update(
            status=RedemptionSession.Status.USED,
            used_at=ClockNow(),
            used_amount=Coalesce(F("used_amount"), Decimal("0")) + self.AMOUNT,
        )
        return session
