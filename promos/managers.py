"""Every guarded operation of the promos app (STYLE.md tier 1).

Time is always the database's. Django's ``Now()`` is ``STATEMENT_TIMESTAMP()``
on PostgreSQL: fixed when a statement starts, before it waits for any row lock.
The guarded checks use ``clock_timestamp()`` instead, so a statement that waited
for a lock judges expiry at the moment it actually acts (the WHERE is
re-evaluated on the row version it finally locks).
"""

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.apps import apps
from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import Count, ExpressionWrapper, F, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce, Lower, Now

from core.db import set_local_lock_timeout
from core.guards import ClockNow, database_refusals
from promos import exceptions as errors
from promos.money import compute_bonus, parse_amount

# Redeem waits this long for the code's row lock, then answers resource_locked.
# Measured against NOWAIT in docs/promos.md: waiting a little serialises a storm
# (every attempt gets a definite answer); NOWAIT refuses most of it.
REDEEM_LOCK_TIMEOUT_MS = getattr(settings, "PROMO_REDEEM_LOCK_TIMEOUT_MS", 1000)
DEFAULT_SESSION_TTL = timedelta(minutes=15)
MAX_SESSION_TTL = timedelta(days=7)


def _model(name):
    return apps.get_model("promos", name)


def hash_secret(secret):
    return hashlib.sha256(str(secret).encode()).hexdigest()


def _require_amount(amount):
    try:
        return parse_amount(amount)
    except ValueError:
        raise errors.InvalidAmount(maximum="1000000.00")


_CONSTRAINT_ERRORS = {
    "promo_code_unique_ci_per_tenant": errors.PromoCodeTaken,
    "promo_times_used_within_limit": errors.PromoLimitBelowUsage,
}


def _constraint_name(exc):
    return getattr(getattr(exc.__cause__, "diag", None), "constraint_name", None)


def _constraint_error(exc):
    """Map an IntegrityError of a promo code write to its domain error (400 for a CHECK, 409 for a clash)."""
    name = _constraint_name(exc)
    if name in _CONSTRAINT_ERRORS:
        return _CONSTRAINT_ERRORS[name]()
    if name and name.startswith("promo"):
        return errors.PromoInvalid()
    return None


def translates_lock_errors(func):  # TODO(guard contract): replace with core.guards.guarded
    from functools import wraps

    @wraps(func)
    def wrapper(*args, **kwargs):
        with database_refusals():
            return func(*args, **kwargs)

    return wrapper


# --- promo codes -------------------------------------------------------------


class PromoCodeQuerySet(models.QuerySet):
    def for_tenant(self, tenant):
        return self.filter(tenant=tenant)

    def by_code(self, code, *, tenant):
        """Case-insensitive lookup that can use the UNIQUE (lower(code), tenant) index."""
        return self.alias(code_lower=Lower("code")).filter(tenant=tenant, code_lower=Lower(Value(str(code).strip())))

    def locked(self, *, nowait=False, no_key=True):
        """Row lock for a re-validate-then-change: FOR NO KEY UPDATE (usages' FK checks still pass).

        ``OF self`` and primary-key order: the default ordering (tenant, code) joins core_tenant,
        and an unqualified lock would also lock the tenant row, serialising every code of the shop.
        """
        return self.select_for_update(no_key=no_key, nowait=nowait, of=("self",)).order_by("pk")

    def live(self):
        """Active, inside the window (database clock), not exhausted."""
        return self.filter(
            Q(is_active=True),
            Q(starts_at__isnull=True) | Q(starts_at__lte=Now()),
            Q(ends_at__isnull=True) | Q(ends_at__gt=Now()),
            Q(total_usage_limit__isnull=True) | Q(times_used__lt=F("total_usage_limit")),
        )

    def expired(self):
        return self.filter(ends_at__lte=Now())

    def not_started(self):
        return self.filter(starts_at__gt=Now())

    def exhausted(self):
        return self.filter(total_usage_limit__isnull=False, times_used__gte=F("total_usage_limit"))


class PromoCodeManager(models.Manager.from_queryset(PromoCodeQuerySet)):
    @staticmethod
    def _refusal(promo, *, now, customer_uses):
        """Return the error that refuses ``promo`` for this customer right now, or None."""
        if not promo.is_active:
            return errors.PromoInactive()
        if promo.starts_at is not None and now < promo.starts_at:
            return errors.PromoNotStarted()
        if promo.ends_at is not None and now >= promo.ends_at:
            return errors.PromoExpired()
        if promo.total_usage_limit is not None and promo.times_used >= promo.total_usage_limit:
            return errors.PromoExhausted()
        if promo.per_customer_limit is not None and customer_uses >= promo.per_customer_limit:
            return errors.PromoCustomerLimit()
        return None

    def _with_checks(self, queryset, customer):
        live_uses = (
            _model("PromoUsage")
            .objects.filter(promo=OuterRef("pk"), customer=customer, voided_at__isnull=True)
            .order_by()
            .values("promo")
            .annotate(n=Count("pk"))
            .values("n")
        )
        return queryset.annotate(checked_at=ClockNow(), customer_uses=Coalesce(Subquery(live_uses), Value(0)))

    def validate(self, code, *, tenant, customer, amount):
        """Preview a redeem: one plain read, no lock, no write.

        Returns ``(promo, bonus)``; raises exactly what ``redeem`` would raise at
        this instant (PromoNotFound, PromoInactive, PromoNotStarted, PromoExpired,
        PromoExhausted, PromoCustomerLimit, InvalidAmount). Nothing is reserved:
        a later redeem re-validates under the row lock.
        """
        amount = _require_amount(amount)
        promo = self._with_checks(self.by_code(code, tenant=tenant), customer).first()
        if promo is None:
            raise errors.PromoNotFound()
        refusal = self._refusal(promo, now=promo.checked_at, customer_uses=promo.customer_uses)
        if refusal is not None:
            raise refusal
        return promo, self._bonus(promo, amount)

    @staticmethod
    def _bonus(promo, amount):
        return compute_bonus(
            bonus_type=promo.bonus_type, bonus_value=promo.bonus_value, amount=amount, max_bonus=promo.max_bonus
        )

    @translates_lock_errors
    def redeem(self, code, *, tenant, customer, amount, reference=None, nowait=False):
        """Reserve one use of ``code`` for ``customer`` and return the new PromoUsage.

        One transaction: SET LOCAL lock_timeout (REDEEM_LOCK_TIMEOUT_MS), lock the
        code row ``FOR NO KEY UPDATE`` (``nowait=True`` refuses at once instead),
        then, in a statement issued after the lock is held, read the database
        clock and this customer's non-voided usages; re-validate active, window,
        total and per-customer limits; insert the usage; ``times_used + 1``.
        A deactivation that committed before the lock was granted is seen here.

        Raises PromoNotFound (also for another tenant's code), PromoInactive,
        PromoNotStarted, PromoExpired, PromoExhausted, PromoCustomerLimit,
        InvalidAmount, LockContended (resource_locked) when the row stays busy.
        """
        amount = _require_amount(amount)
        customer = str(customer)
        with transaction.atomic(using=self.db):
            if not nowait:
                set_local_lock_timeout(REDEEM_LOCK_TIMEOUT_MS, using=self.db)
            locked = self.by_code(code, tenant=tenant).locked(nowait=nowait).values_list("pk", flat=True).first()
            if locked is None:
                raise errors.PromoNotFound()
            # Re-read after the lock is held: this statement's snapshot sees every
            # usage and deactivation committed while we waited.
            promo = self._with_checks(self.filter(pk=locked), customer).get()
            refusal = self._refusal(promo, now=promo.checked_at, customer_uses=promo.customer_uses)
            if refusal is not None:
                raise refusal
            usage = (
                _model("PromoUsage")
                .objects.using(self.db)
                .create(
                    tenant_id=promo.tenant_id,
                    promo=promo,
                    customer=customer,
                    base_amount=amount,
                    bonus_amount=self._bonus(promo, amount),
                    reference=reference or "",
                )
            )
            self.filter(pk=promo.pk).update(times_used=F("times_used") + 1, updated_at=Now())
            return usage

    redeem.alters_data = True

    @translates_lock_errors
    def set_active(self, promo_id, *, tenant, active):
        """Activate or deactivate a code; return it.

        Takes the row lock (FOR NO KEY UPDATE, waiting at most the redeem lock
        timeout), so it commits after every reserve already holding the lock and
        before any reserve still waiting: every reserve not committed when the
        deactivation commits sees ``is_active = false`` and is refused
        PromoInactive. Raises PromoNotFound, LockContended.
        """
        with transaction.atomic(using=self.db):
            set_local_lock_timeout(REDEEM_LOCK_TIMEOUT_MS, using=self.db)
            promo = self.for_tenant(tenant).locked().filter(pk=promo_id).first()
            if promo is None:
                raise errors.PromoNotFound()
            if promo.is_active != active:
                self.filter(pk=promo.pk).update(is_active=active, updated_at=Now())
                promo.is_active = active
            return promo

    set_active.alters_data = True

    def deactivate(self, promo_id, *, tenant):
        """Deactivate a code (see ``set_active``)."""
        return self.set_active(promo_id, tenant=tenant, active=False)

    deactivate.alters_data = True

    def activate(self, promo_id, *, tenant):
        """Reactivate a code (see ``set_active``)."""
        return self.set_active(promo_id, tenant=tenant, active=True)

    activate.alters_data = True

    def create_code(self, *, tenant, **fields):
        """Create a code; PromoCodeTaken when the tenant has it in any letter case."""
        try:
            with transaction.atomic(using=self.db):
                return self.create(tenant=tenant, **fields)
        except IntegrityError as exc:
            raise _constraint_error(exc) or exc

    create_code.alters_data = True

    @translates_lock_errors
    def update_code(self, promo_id, *, tenant, **fields):
        """Change a code's definition under its row lock (never ``times_used``).

        Raises PromoNotFound, PromoCodeTaken, PromoLimitBelowUsage (a limit under
        the uses already made), PromoInvalid, LockContended.
        """
        fields.pop("times_used", None)
        try:
            with transaction.atomic(using=self.db):
                set_local_lock_timeout(REDEEM_LOCK_TIMEOUT_MS, using=self.db)
                promo = self.for_tenant(tenant).locked().filter(pk=promo_id).first()
                if promo is None:
                    raise errors.PromoNotFound()
                for name, value in fields.items():
                    setattr(promo, name, value)
                promo.updated_at = Now()
                promo.save(update_fields=[*fields, "updated_at"])
                promo.refresh_from_db()
                return promo
        except IntegrityError as exc:
            raise _constraint_error(exc) or exc

    update_code.alters_data = True

    @translates_lock_errors
    def delete_code(self, promo_id, *, tenant):
        """Delete a code that was never used; PromoInUse when usages exist (void keeps history).

        Locks the code row ``FOR UPDATE`` first (short lock timeout): a redeem
        must hold that row's lock to insert a usage, so once we hold it no usage
        can appear, and the usages check (a statement issued after the lock)
        sees every usage committed while we waited. Without the lock, a usage
        committed after the check failed the deferred foreign key at COMMIT (500).
        Raises PromoNotFound, PromoInUse, LockContended.
        """
        with transaction.atomic(using=self.db):
            set_local_lock_timeout(REDEEM_LOCK_TIMEOUT_MS, using=self.db)
            promo = self.for_tenant(tenant).locked(no_key=False).filter(pk=promo_id).first()
            if promo is None:
                raise errors.PromoNotFound()
            if promo.usages.exists():
                raise errors.PromoInUse()
            try:
                promo.delete()
            except models.ProtectedError:
                raise errors.PromoInUse()

    delete_code.alters_data = True


# --- usages ------------------------------------------------------------------


class PromoUsageQuerySet(models.QuerySet):
    def for_tenant(self, tenant):
        return self.filter(tenant=tenant)

    def live(self):
        return self.filter(voided_at__isnull=True)

    def voided(self):
        return self.filter(voided_at__isnull=False)


class PromoUsageManager(models.Manager.from_queryset(PromoUsageQuerySet)):
    @translates_lock_errors
    def void(self, usage_id, *, tenant):
        """Void a usage and give its use back to the code, exactly once; return the usage.

        A filtered UPDATE on ``voided_at IS NULL`` decides between concurrent voids;
        the winner then runs ``times_used = times_used - 1`` on the code in the
        same transaction (lock order: usage row, then code row). On 0 rows one
        read names UsageNotFound (also another tenant's) or UsageAlreadyVoided.
        """
        with transaction.atomic(using=self.db):
            won = self.filter(pk=usage_id, tenant=tenant, voided_at__isnull=True).update(voided_at=ClockNow())
            if not won:
                if self.filter(pk=usage_id, tenant=tenant).exists():
                    raise errors.UsageAlreadyVoided()
                raise errors.UsageNotFound()
            _model("PromoCode").objects.using(self.db).filter(usages__pk=usage_id).update(
                times_used=F("times_used") - 1, updated_at=Now()
            )
            return self.select_related("promo").get(pk=usage_id)

    void.alters_data = True


# --- redemption sessions -------------------------------------------------------


class RedemptionSessionQuerySet(models.QuerySet):
    def for_tenant(self, tenant):
        return self.filter(tenant=tenant)

    def open(self):
        """Pending or approved, and not past expiry by the database clock."""
        return self.filter(status__in=["pending", "approved"], expires_at__gt=Now())

    def with_clock_expiry(self):
        return self.annotate(
            clock_expired=ExpressionWrapper(Q(expires_at__lte=ClockNow()), output_field=models.BooleanField())
        )


class RedemptionSessionManager(models.Manager.from_queryset(RedemptionSessionQuerySet)):
    def create_session(self, *, tenant, customer, max_amount, expires_in=None):
        """Create a pending session; return ``(session, approval_secret)``.

        The secret is shown only here: the row keeps its sha256. ``expires_in``
        (a timedelta, default 15 minutes, at most 7 days) counts from the
        database clock.
        """
        max_amount = _require_amount(max_amount)
        ttl = expires_in if expires_in is not None else DEFAULT_SESSION_TTL
        if not timedelta(seconds=1) <= ttl <= MAX_SESSION_TTL:
            raise errors.InvalidInput()
        secret = secrets.token_urlsafe(32)
        with transaction.atomic(using=self.db):
            session = self.create(
                tenant=tenant,
                customer=str(customer),
                max_amount=max_amount,
                secret_hash=hash_secret(secret),
                expires_at=ClockNow() + Value(ttl),
            )
            session.refresh_from_db(fields=["expires_at", "created_at"])
        return session, secret

    create_session.alters_data = True

    @translates_lock_errors
    def _answer(self, session_id, *, secret, to_status, stamp):
        """Move a pending, unexpired session whose secret matches to ``to_status`` (one filtered UPDATE)."""
        with transaction.atomic(using=self.db):
            won = self.filter(
                session_id=session_id,
                secret_hash=hash_secret(secret),
                status="pending",
                expires_at__gt=ClockNow(),
            ).update(status=to_status, **{stamp: ClockNow()})
            if won:
                return self.get(session_id=session_id)
            session = self.with_clock_expiry().filter(session_id=session_id).first()
            if session is None or not hmac.compare_digest(session.secret_hash, hash_secret(secret)):
                raise errors.SessionNotFound()
            if session.status == "expired" or (session.status == "pending" and session.clock_expired):
                raise errors.SessionExpired()
            raise errors.SessionNotPending(status=self.model.Status(session.status).label)

    def approve(self, session_id, *, secret):
        """Customer approves with the secret: pending → approved, only before expiry.

        Raises SessionNotFound (unknown id or wrong secret), SessionExpired,
        SessionNotPending.
        """
        return self._answer(session_id, secret=secret, to_status="approved", stamp="approved_at")

    approve.alters_data = True

    def reject(self, session_id, *, secret):
        """Customer rejects with the secret: pending → rejected (same refusals as approve)."""
        return self._answer(session_id, secret=secret, to_status="rejected", stamp="rejected_at")

    reject.alters_data = True

    @translates_lock_errors
    def consume(self, session_id, *, tenant, amount):
        """Use an approved session once for ``amount``; return ``amount``.

        ONE UPDATE whose WHERE holds every condition: tenant, ``approved``,
        ``expires_at > clock_timestamp()``, ``used_at IS NULL``,
        ``max_amount >= amount``. On 0 rows one read names the refusal:
        SessionNotFound (also another tenant's), SessionAlreadyUsed,
        SessionExpired, SessionNotApproved, AmountExceedsLimit.
        LockContended if the row stays locked past the lock timeout.
        """
        amount = _require_amount(amount)
        try:
            with transaction.atomic(using=self.db):
                won = self.filter(
                    session_id=session_id,
                    tenant=tenant,
                    status="approved",
                    expires_at__gt=ClockNow(),
                    used_at__isnull=True,
                    max_amount__gte=amount,
                ).update(status="used", used_at=ClockNow(), used_amount=amount)
                if won:
                    return amount
                raise self._consume_refusal(session_id, tenant=tenant, amount=amount)
        except IntegrityError as exc:
            # clock_timestamp() is read once for the WHERE and again for the SET: when expiry falls
            # between the two reads, the CHECK used_at < expires_at refuses the write. It was too late.
            if _constraint_name(exc) == "redemption_used_before_expiry":
                raise errors.SessionExpired() from exc
            raise

    consume.alters_data = True

    def _consume_refusal(self, session_id, *, tenant, amount):
        session = self.with_clock_expiry().filter(session_id=session_id, tenant=tenant).first()
        if session is None:
            return errors.SessionNotFound()
        if session.status == "used" or session.used_at is not None:
            return errors.SessionAlreadyUsed()
        if session.status == "expired" or (session.status in ("pending", "approved") and session.clock_expired):
            return errors.SessionExpired()
        if session.status != "approved":
            return errors.SessionNotApproved()
        if session.max_amount < amount:
            return errors.AmountExceedsLimit()
        # Approved between our UPDATE and this read: it was not approved when we tried.
        return errors.SessionNotApproved()

    @translates_lock_errors
    def cancel(self, session_id, *, tenant):
        """Shop cancels a pending or approved, unexpired session (one filtered UPDATE).

        Raises SessionNotFound, SessionAlreadyUsed, SessionExpired,
        SessionNotCancellable (rejected or already cancelled), LockContended.
        """
        with transaction.atomic(using=self.db):
            won = self.filter(
                session_id=session_id,
                tenant=tenant,
                status__in=["pending", "approved"],
                expires_at__gt=ClockNow(),
            ).update(status="cancelled", cancelled_at=ClockNow())
            if won:
                return self.get(session_id=session_id)
            session = self.with_clock_expiry().filter(session_id=session_id, tenant=tenant).first()
            if session is None:
                raise errors.SessionNotFound()
            if session.status == "used":
                raise errors.SessionAlreadyUsed()
            if session.status == "expired" or session.clock_expired:
                raise errors.SessionExpired()
            raise errors.SessionNotCancellable(status=self.model.Status(session.status).label)

    cancel.alters_data = True

    @translates_lock_errors
    def expire_due(self, *, tenant=None):
        """Mark every pending/approved session past ``expires_at`` as expired; return how many.

        One UPDATE; a consume racing it re-checks its WHERE on the row the sweep
        wrote (status expired) and matches nothing, and vice versa. LockContended
        when a row stays locked past the lock timeout (run the sweep again).
        """
        queryset = self.all() if tenant is None else self.for_tenant(tenant)
        with transaction.atomic(using=self.db):
            return queryset.filter(status__in=["pending", "approved"], expires_at__lte=ClockNow()).update(
                status="expired"
            )

    expire_due.alters_data = True
