"""Guarded operations on packages, bookings, checkouts and the provider-event inbox.

Lock order, everywhere: payment-event row (webhook only) -> advisory lock
BOOKING_DATE(package, date) -> booking row -> checkout row. No method here talks
to anything but the database.
"""

import json
from datetime import timedelta

from django.conf import settings
from django.db import connections, models, transaction
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Coalesce, Now

from bookings.exceptions import (
    BookingNotCancellable,
    BookingNotFound,
    BookingNotHeld,
    BookingNotRefundPending,
    DateInPast,
    DateUnavailable,
)
from core.db import LockNamespace, advisory_xact_lock


def _require_atomic(using):
    if not connections[using].in_atomic_block:
        raise RuntimeError("This operation must run inside the caller's transaction.atomic().")


class PackageQuerySet(models.QuerySet):
    def for_tenant(self, tenant):
        return self.filter(tenant=tenant)

    def active(self):
        return self.filter(active=True)


def active_q(prefix=""):
    """Bookings that take a place on their date: confirmed, or held with a live hold (database clock)."""
    held = Q(**{f"{prefix}status": "held", f"{prefix}hold_expires_at__gt": Now()})
    return Q(**{f"{prefix}status": "confirmed"}) | held


class BookingQuerySet(models.QuerySet):
    def for_tenant(self, tenant):
        return self.filter(tenant=tenant)

    def active(self):
        """Confirmed bookings and unexpired holds; an expired hold never counts, swept or not."""
        return self.filter(active_q())

    def expired_holds(self):
        return self.filter(status=self.model.Status.HELD, hold_expires_at__lte=Now())


class BookingManager(models.Manager.from_queryset(BookingQuerySet)):
    def _lock_date(self, package_id, date):
        advisory_xact_lock(LockNamespace.BOOKING_DATE, package_id, date.isoformat(), using=self.db)

    def _taken(self, package_id, date, *, exclude_pk=None):
        """Count the places taken on the date, plus the database's date and clock, in one statement.

        Issued only after the advisory lock is held, so under READ COMMITTED its
        snapshot includes every booking committed by the lock's previous holder.
        """
        table = self.model._meta.db_table
        with connections[self.db].cursor() as cursor:
            cursor.execute(
                f"SELECT count(*) FILTER (WHERE (status = 'confirmed' OR (status = 'held' "  # noqa: S608
                f"AND hold_expires_at > statement_timestamp())) AND id IS DISTINCT FROM %s), "
                f"current_date, statement_timestamp() FROM {table} WHERE package_id = %s AND date = %s",
                [exclude_pk, package_id, date],
            )
            return cursor.fetchone()

    def hold(self, package, date, *, customer_name, customer_email, origin_proposal_id=None):
        """Hold one place on ``date`` for this customer, or refuse.

        Must run inside the caller's transaction (the checkout record joins it).
        Takes the advisory lock BOOKING_DATE(package, date) until commit, then
        counts confirmed bookings and unexpired holds against the package's
        daily capacity in a statement issued after the lock is held.
        Raises DateInPast or DateUnavailable; returns the new ``held`` booking.
        """
        _require_atomic(self.db)
        self._lock_date(package.pk, date)
        taken, today, now = self._taken(package.pk, date)
        if date < today:
            raise DateInPast(date=date.isoformat())
        if taken >= package.daily_capacity:
            raise DateUnavailable()
        return self.create(
            tenant_id=package.tenant_id,
            package=package,
            date=date,
            customer_name=customer_name,
            customer_email=customer_email,
            status=self.model.Status.HELD,
            hold_expires_at=now + settings.BOOKING_HOLD_TTL,
            amount=package.price,
            currency=package.currency,
            exclusive=package.daily_capacity == 1,
            origin_proposal_id=origin_proposal_id,
            created_at=now,
        )

    hold.alters_data = True

    def confirm_payment(self, booking_id):
        """Settle a paid booking: ``confirmed`` if its place is still free, else ``refund_pending``.

        Must run inside the caller's transaction (the webhook marks its event
        processed in it). Takes BOOKING_DATE(package, date), then the booking row
        FOR NO KEY UPDATE, then re-counts the date without this booking. A live
        hold, or an expired or released hold whose date is still free, becomes
        confirmed; a cancelled booking or a date taken meanwhile becomes
        refund_pending. Already settled bookings are returned unchanged.
        Returns (booking, outcome) with outcome one of confirmed, refund_pending, unchanged.
        """
        _require_atomic(self.db)
        key = self.filter(pk=booking_id).values("package_id", "date").first()
        if key is None:
            raise BookingNotFound()
        self._lock_date(key["package_id"], key["date"])
        booking = self.select_related("package").select_for_update(no_key=True, of=("self",)).get(pk=booking_id)
        Status = self.model.Status
        if booking.status in (Status.CONFIRMED, Status.REFUND_PENDING, Status.REFUNDED):
            return booking, "unchanged"
        taken, _today, now = self._taken(booking.package_id, booking.date, exclude_pk=booking.pk)
        if booking.status != Status.CANCELLED and taken < booking.package.daily_capacity:
            booking.status, booking.confirmed_at = Status.CONFIRMED, now
        else:
            booking.status = Status.REFUND_PENDING
        self.filter(pk=booking.pk).update(status=booking.status, confirmed_at=booking.confirmed_at)
        return booking, booking.status

    confirm_payment.alters_data = True

    def release(self, booking_id, *, tenant=None):
        """Release a hold (``held`` -> ``expired``) so its place is free at once.

        One filtered UPDATE decides; raises BookingNotFound or BookingNotHeld.
        """
        with transaction.atomic(using=self.db):
            scope = self.filter(pk=booking_id) if tenant is None else self.filter(pk=booking_id, tenant=tenant)
            if scope.filter(status=self.model.Status.HELD).update(status=self.model.Status.EXPIRED):
                return True
            raise self._refusal(scope, BookingNotHeld)

    release.alters_data = True

    def release_if_held(self, booking_id):
        """Release the hold if the booking is still held; return whether it was (no error otherwise)."""
        with transaction.atomic(using=self.db):
            return bool(
                self.filter(pk=booking_id, status=self.model.Status.HELD).update(status=self.model.Status.EXPIRED)
            )

    release_if_held.alters_data = True

    def cancel(self, booking_id, *, tenant=None):
        """Cancel a held or confirmed booking; a confirmed (paid) one goes to ``refund_pending``.

        One filtered UPDATE decides (a CASE picks the new status); on 0 rows one
        read names the refusal: BookingNotFound or BookingNotCancellable.
        Returns the booking; its status tells the caller whether to refund.
        """
        Status = self.model.Status
        with transaction.atomic(using=self.db):
            scope = self.filter(pk=booking_id) if tenant is None else self.filter(pk=booking_id, tenant=tenant)
            won = scope.filter(status__in=[Status.HELD, Status.CONFIRMED]).update(
                status=Case(
                    When(status=Status.HELD, then=Value(Status.CANCELLED)),
                    default=Value(Status.REFUND_PENDING),
                ),
                cancelled_at=Now(),
            )
            if not won:
                raise self._refusal(scope, BookingNotCancellable)
            return scope.select_related("package").get()

    cancel.alters_data = True

    def complete_refund(self, booking_id):
        """Move ``refund_pending`` -> ``refunded`` (the provider confirmed the refund)."""
        with transaction.atomic(using=self.db):
            scope = self.filter(pk=booking_id)
            if scope.filter(status=self.model.Status.REFUND_PENDING).update(
                status=self.model.Status.REFUNDED, refunded_at=Now()
            ):
                return True
            raise self._refusal(scope, BookingNotRefundPending)

    complete_refund.alters_data = True

    def expire_holds(self):
        """Sweep: mark every hold past its expiry ``expired``; return how many. Purely cosmetic for capacity."""
        with transaction.atomic(using=self.db):
            return self.expired_holds().update(status=self.model.Status.EXPIRED)

    expire_holds.alters_data = True

    def _refusal(self, scope, wrong_state):
        status = scope.values_list("status", flat=True).first()
        if status is None:
            return BookingNotFound()
        return wrong_state(status=self.model.Status(status).label)


# A refund left ``pending`` this long was claimed by a caller that died before the
# provider answered (or before its answer was stored): ``retry_refunds`` may claim it
# again. Longer than any provider call; the provider's idempotency key
# (``lockstep-refund-<checkout>``) makes a repeated request harmless anyway.
REFUND_STALE_AFTER = timedelta(minutes=10)


class CheckoutQuerySet(models.QuerySet):
    def refunds_to_retry(self):
        """Refunds owed but not in flight: failed, or pending and stale (the caller died mid-refund)."""
        State = self.model.RefundState
        return self.filter(
            Q(refund_state=State.FAILED) | Q(refund_state=State.PENDING, updated_at__lte=Now() - REFUND_STALE_AFTER)
        )


class CheckoutManager(models.Manager.from_queryset(CheckoutQuerySet)):
    def record(self, booking, *, provider):
        """Record the intent to create a provider checkout (state ``creating``) in the caller's transaction."""
        _require_atomic(self.db)
        return self.create(
            booking=booking,
            provider=provider,
            amount=booking.amount,
            currency=booking.currency,
            created_at=Now(),
            updated_at=Now(),
        )

    record.alters_data = True

    def open(self, checkout_id, *, provider_checkout_id, url, payment_id=""):
        """Store the provider's checkout id and URL: ``creating`` -> ``open``.

        One filtered UPDATE, atomic on its own (no BEGIN/COMMIT round trips needed).
        """
        return bool(
            self.filter(pk=checkout_id, state=self.model.State.CREATING).update(
                state=self.model.State.OPEN,
                provider_checkout_id=provider_checkout_id,
                url=url,
                provider_payment_id=payment_id,
                updated_at=Now(),
            )
        )

    open.alters_data = True

    def fail(self, checkout_id, *, error):
        """The provider refused or was unreachable: ``creating`` -> ``failed``."""
        with transaction.atomic(using=self.db):
            return bool(
                self.filter(pk=checkout_id, state=self.model.State.CREATING).update(
                    state=self.model.State.FAILED, error=error[:500], updated_at=Now()
                )
            )

    fail.alters_data = True

    def mark_completed(self, checkout_id, *, provider_checkout_id, payment_id=""):
        """The customer paid (any earlier state, so late or out-of-order events still settle).

        A checkout whose provider answer was lost learns its provider id here.
        """
        _require_atomic(self.db)
        changes = dict(
            state=self.model.State.COMPLETED,
            provider_checkout_id=Coalesce(F("provider_checkout_id"), Value(provider_checkout_id)),
            updated_at=Now(),
        )
        if payment_id:
            changes["provider_payment_id"] = payment_id
        return bool(self.filter(pk=checkout_id).exclude(state=self.model.State.COMPLETED).update(**changes))

    mark_completed.alters_data = True

    def mark_expired(self, checkout_id, *, provider_checkout_id):
        """The provider session expired: only an unpaid checkout becomes ``expired``."""
        _require_atomic(self.db)
        return bool(
            self.filter(pk=checkout_id, state__in=[self.model.State.CREATING, self.model.State.OPEN]).update(
                state=self.model.State.EXPIRED,
                provider_checkout_id=Coalesce(F("provider_checkout_id"), Value(provider_checkout_id)),
                updated_at=Now(),
            )
        )

    mark_expired.alters_data = True

    def request_refund(self, checkout_id):
        """Record that a refund is owed (before calling the provider, after this commits)."""
        _require_atomic(self.db)
        return bool(
            self.filter(pk=checkout_id, refund_state=self.model.RefundState.NONE).update(
                refund_state=self.model.RefundState.PENDING, updated_at=Now()
            )
        )

    request_refund.alters_data = True

    def claim_refund_retry(self, checkout_id):
        """Claim a refund for one retry: ``failed`` or stale ``pending`` -> ``pending`` (fresh).

        The filtered UPDATE picks one retrier; a refund in flight (pending, recent) is
        left alone, a stale one (its caller died) is claimed again.
        """
        with transaction.atomic(using=self.db):
            return bool(
                self.refunds_to_retry().filter(pk=checkout_id).update(
                    refund_state=self.model.RefundState.PENDING, updated_at=Now()
                )
            )

    claim_refund_retry.alters_data = True

    def refund_succeeded(self, checkout_id, *, refund_id):
        _require_atomic(self.db)
        return bool(
            self.filter(pk=checkout_id, refund_state=self.model.RefundState.PENDING).update(
                refund_state=self.model.RefundState.SUCCEEDED,
                provider_refund_id=refund_id,
                refund_attempts=F("refund_attempts") + 1,
                refund_error="",
                updated_at=Now(),
            )
        )

    refund_succeeded.alters_data = True

    def refund_failed(self, checkout_id, *, error):
        with transaction.atomic(using=self.db):
            return bool(
                self.filter(pk=checkout_id, refund_state=self.model.RefundState.PENDING).update(
                    refund_state=self.model.RefundState.FAILED,
                    refund_attempts=F("refund_attempts") + 1,
                    refund_error=error[:500],
                    updated_at=Now(),
                )
            )

    refund_failed.alters_data = True


class PaymentEventManager(models.Manager):
    def receive(self, *, provider, event_id, type, payload):
        """Store the event once and lock its row; return (event_pk, already_processed).

        One INSERT ... ON CONFLICT DO UPDATE: a new id inserts; a repeated id waits
        for the first delivery's transaction, then locks the stored row and
        counts the delivery. Must run inside the transaction that processes it.
        """
        _require_atomic(self.db)
        table = self.model._meta.db_table
        with connections[self.db].cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (provider, event_id, type, payload, received_at, result, deliveries) "  # noqa: S608
                f"VALUES (%s, %s, %s, %s::jsonb, statement_timestamp(), '', 1) "
                f"ON CONFLICT (event_id) DO UPDATE SET deliveries = {table}.deliveries + 1 "
                f"RETURNING id, processed_at IS NOT NULL",
                [provider, event_id, type[:100], json.dumps(payload)],
            )
            return cursor.fetchone()

    receive.alters_data = True

    def mark_processed(self, event_pk, *, result, booking_id=None):
        _require_atomic(self.db)
        self.filter(pk=event_pk, processed_at__isnull=True).update(
            processed_at=Now(), result=result, booking_id=booking_id
        )

    mark_processed.alters_data = True
