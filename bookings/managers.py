"""Guarded operations on packages, bookings, checkouts and the provider-event inbox.

Lock order, everywhere (docs/bookings.md):

    payment-event row (webhook only)
    -> advisory lock BOOKING_PACKAGE(package): shared for holds and payments, exclusive for
       package edits and deletes
    -> advisory lock BOOKING_DATE(package, date)
    -> booking row -> checkout row

A method that needs a later lock never takes an earlier one after it. Capacity,
``is_active``, price and currency are read in a statement issued after the package and
date locks are held, so a hold or a payment never counts against a capacity an edit
has changed meanwhile. Every expiry is judged with ``ClockNow()`` (``clock_timestamp()``),
the clock at the moment the statement acts, never the statement's start. No method
here talks to anything but the database.
"""

import datetime as dt
import json
from collections import namedtuple
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import IntegrityError, connections, models, transaction
from django.db.models import Case, F, Q, Value, When
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce, Now

from bookings import notifications
from bookings.choices import BookingStatus, CheckoutRefundState, CheckoutState
from bookings.exceptions import (
    BookingNotCancellable,
    BookingNotFound,
    BookingNotHeld,
    BookingNotRefundPending,
    CapacityBelowOccupancy,
    CheckoutNotFound,
    DateInPast,
    DateUnavailable,
    PackageInUse,
    PackageNotFound,
)
from bookings.payments.stripe import SESSION_OUTLIVES_HOLD
from core import money
from core.db import LockNamespace, advisory_xact_lock, advisory_xact_lock_shared, advisory_xact_locks_in_order
from core.decide import Decision
from core.exceptions import DomainError, LockContended, VersionConflict
from core.guards import (
    LOCAL_TODAY_SQL,
    ClockNow,
    LocalToday,
    SweepResult,
    constraint_name,
    guarded,
    sweep,
    tenant_today,
)
from core.jsonb import jsonb_safe
from core.managers import TenantScopedQuerySet
from core.prepared import Prepared, insert_statement, insert_with, saved, update_statement
from core.versioned_edit import edit_at_version, refuse_unknown_fields

# The partial unique index that backs "one confirmed booking per date of a capacity-1 package".
EXCLUSIVE_INDEX = "booking_one_confirmed_per_exclusive_date"
# The database's answers that a date is full: its index for one place, its own count for any (_placed_unless_full).
DATE_FULL = (EXCLUSIVE_INDEX, "booking_within_capacity")
# Statuses whose ``exclusive`` flag must follow the package's capacity (they can still be confirmed
# or are): edit_package recomputes them when the capacity crosses 1, check_invariants checks them.
LIVE_STATUSES = (BookingStatus.HELD, BookingStatus.PAYMENT_PENDING, BookingStatus.CONFIRMED)
# How many dates a capacity refusal names.
DATES_NAMED = 5


# Apps that create bookings may veto placing a paid one: ``veto(booking) -> bool`` runs in
# confirm_payment after the booking row is locked. Proposals registers one (proposals/apps.py):
# a booking its proposal no longer links was orphaned by a reopen, so its late payment is
# refunded, never confirmed beside the proposal's new booking.
_placement_vetoes = []


def register_placement_veto(veto):
    _placement_vetoes.append(veto)


def lock_package_shared(package_id, *, using):
    """BOOKING_PACKAGE(package) shared: holds and payments do not wait for each other, only for an edit."""
    advisory_xact_lock_shared(LockNamespace.BOOKING_PACKAGE, package_id, using=using)


def lock_package_exclusive(package_id, *, using):
    """BOOKING_PACKAGE(package) exclusive: waits for every running hold and payment of the package."""
    advisory_xact_lock(LockNamespace.BOOKING_PACKAGE, package_id, using=using)


def lock_place(package_id, date, *, tenant_id=None, then=None, using):
    """BOOKING_PACKAGE(package) shared, then BOOKING_DATE(package, date): a place's locks, in one round trip.

    ``tenant_id``: take them only where the package is that tenant's (a package never changes tenant:
    ``package_tenant_transition``), so a caller naming another shop's package (the public checkout
    takes any id) never queues for, nor holds, that shop's locks. ``then``: a statement to run once both
    are held (or were not taken), in the same round trip; its row is returned.
    """
    from bookings.models import Package

    only_if = None
    if tenant_id is not None:
        table = Package._meta.db_table
        gate = f'EXISTS (SELECT 1 FROM "{table}" WHERE "id" = %s AND "tenant_id" = %s)'  # noqa: S608
        only_if = (gate, [package_id, tenant_id])
    return advisory_xact_locks_in_order(
        (True, LockNamespace.BOOKING_PACKAGE, package_id),
        (False, LockNamespace.BOOKING_DATE, package_id, date.isoformat()),
        only_if=only_if,
        then=then,
        using=using,
    )


# Statuses that take a place on their date whatever the clock says (no hold expiry to judge).
PLACED_STATUSES = (BookingStatus.CONFIRMED, BookingStatus.PAYMENT_PENDING)


def active_q(prefix=""):
    """Bookings that take a place on their date: confirmed, waiting for a delayed payment (no expiry),
    or held with a live hold (the database clock now)."""
    held = Q(**{f"{prefix}status": BookingStatus.HELD, f"{prefix}hold_expires_at__gt": ClockNow()})
    return Q(**{f"{prefix}status__in": PLACED_STATUSES}) | held


# The same rule in SQL for _taken (kept beside active_q: change both together).
ACTIVE_SQL = (
    "(b.status IN ('confirmed', 'payment_pending') OR (b.status = 'held' AND b.hold_expires_at > clock_timestamp()))"
)


def _check_terms(price, code, *, new=True):
    """Refuse a currency that is not a payable ISO 4217 code (UnknownCurrency, 400 ``unknown_currency``; with
    ``new`` false, a kept currency, one whose minor unit is known: a package stored in a currency since
    withdrawn can still be edited, and taken off sale),
    a price with more decimals than it allows, or than the provider takes (TooManyDecimals, 400
    ``amount_precision``: both providers send Stripe's minor units, so a three-decimal price ends in 0),
    or above what the provider charges at once (AmountTooLarge, 400 ``amount_too_large``)."""
    (money.payable if new else money.currency)(code)
    money.to_minor_units(price, code)
    money.check_maximum(price, code)


# --- packages ----------------------------------------------------------------------


class PackageQuerySet(TenantScopedQuerySet):
    def active(self):
        return self.filter(is_active=True)


class PackageManager(models.Manager.from_queryset(PackageQuerySet)):
    def _editable(self, fields):
        from bookings.models import PACKAGE_EDITABLE

        refuse_unknown_fields(fields, PACKAGE_EDITABLE, model="Package", edit="a package edit")

    @guarded
    def create_package(self, *, tenant, **fields):
        """Create a package of ``tenant`` from the editable fields (name, price, currency, is_active, daily_capacity).

        Locks: none (a new package row: no hold or payment can name it yet).

        Nothing can race it: no hold or payment can name a package before it exists.
        A value the database's CHECKs refuse raises PackageInvalid; a currency that is not
        a payable ISO 4217 code raises UnknownCurrency, a price finer than the currency's
        minor unit TooManyDecimals (both 400).
        """
        self._editable(fields)
        _check_terms(fields.get("price", 0), fields.get("currency", self.model._meta.get_field("currency").default))
        return self.create(tenant=tenant, **fields)

    def _locked_for_edit(self, package_id, *, tenant, version):
        """Take BOOKING_PACKAGE exclusive, then read the row; check ``version`` when the caller sent one.

        Another tenant's package is refused before its lock: an edit sent with its id never queues for it,
        holding up that tenant's checkouts, nor tells by a 409 that it exists (a package never changes tenant).
        """
        if tenant is not None and not self.filter(pk=package_id, tenant=tenant).exists():
            raise PackageNotFound()
        lock_package_exclusive(package_id, using=self.db)
        scope = self.filter(pk=package_id) if tenant is None else self.filter(pk=package_id, tenant=tenant)
        package = scope.first()
        if package is None:
            raise PackageNotFound()
        if version is not None and version != package.version:
            raise VersionConflict(current=package.version)
        return package

    @guarded
    def edit_package(self, package_id, *, tenant, version=None, **changes):
        """Write only ``changes`` to the package, under its lock taken exclusive; return the package.

        Locks: BOOKING_PACKAGE(package) exclusive -> the package row -> the live booking rows whose ``exclusive`` it
        recomputes (one UPDATE).

        Takes BOOKING_PACKAGE(package) exclusive: it waits for every hold and payment
        of the package running now (they hold it shared) and new ones wait for it, so
        the occupancy it checks cannot grow before it commits. Then:

        - ``version`` (required by the API and the admin form; optional to internal callers): refused with
          VersionConflict when the package changed since the caller read it;
        - a lower ``daily_capacity`` is refused with CapacityBelowOccupancy (naming the
          first dates) if any date from today on holds more confirmed bookings and live
          holds than the new capacity; nothing is written;
        - when the capacity crosses 1 (1 -> n or n -> 1), ``exclusive`` of the package's
          held and confirmed bookings from today on is recomputed in the same transaction,
          so the one-confirmed-per-exclusive-date index agrees with the capacity.

        ``tenant=None`` (the admin) edits any tenant's package. Raises PackageNotFound,
        VersionConflict, CapacityBelowOccupancy, PackageInvalid (a CHECK refused a value),
        UnknownCurrency, TooManyDecimals (the new price and currency, each new or kept, together).
        """
        self._editable(changes)
        package = self._locked_for_edit(package_id, tenant=tenant, version=version)
        if "price" in changes or "currency" in changes:  # judged against the row read under the lock
            price, code = changes.get("price", package.price), changes.get("currency", package.currency)
            _check_terms(price, code, new="currency" in changes)
        capacity = changes.get("daily_capacity", package.daily_capacity)
        today = tenant_today(package.tenant_id, using=self.db)  # the shop's, read once under the package lock
        if capacity < package.daily_capacity:
            self._refuse_below_occupancy(package.pk, capacity, today=today)
        if changes:
            self.filter(pk=package.pk).update(**changes)
        if (capacity == 1) != (package.daily_capacity == 1):
            from bookings.models import Booking

            Booking.objects.filter(package_id=package.pk, status__in=LIVE_STATUSES, date__gte=today).exclude(
                exclusive=capacity == 1
            ).update(exclusive=capacity == 1)
        return self.get(pk=package.pk)

    def _refuse_below_occupancy(self, package_id, capacity, *, today):
        from bookings.models import Booking

        crowded = list(
            Booking.objects.filter(active_q(), package_id=package_id, date__gte=today)
            .values("date")
            .annotate(taken=models.Count("pk"))
            .filter(taken__gt=capacity)
            .order_by("date")
            .values_list("date", "taken")
        )
        if crowded:
            named = ", ".join(f"{day.isoformat()} ({taken})" for day, taken in crowded[:DATES_NAMED])
            more = len(crowded) - DATES_NAMED
            raise CapacityBelowOccupancy(
                capacity=capacity, dates=named + (f" (+{more})" if more > 0 else ""), count=len(crowded)
            )

    @guarded
    def delete_package(self, package_id, *, tenant, version=None):
        """Delete a package nothing refers to, under its lock taken exclusive.

        Locks: BOOKING_PACKAGE(package) exclusive -> the package row (DELETE).

        BOOKING_PACKAGE(package) exclusive waits for every running hold and payment of
        the package; a hold that waited behind the delete then finds no package
        (PackageNotFound, 404). A package with bookings or proposals is refused with
        PackageInUse (409): deactivate it instead. Foreign keys are checked before this
        method returns (``SET CONSTRAINTS ALL IMMEDIATE``), never at a COMMIT outside
        it. Raises PackageNotFound, VersionConflict, PackageInUse.
        """
        package = self._locked_for_edit(package_id, tenant=tenant, version=version)
        if self.in_use(package.pk):
            raise PackageInUse()
        try:
            with transaction.atomic(using=self.db):
                self.filter(pk=package.pk)._raw_delete(self.db)
                self._check_references_now()
        except IntegrityError as exc:  # a row the package lock does not cover (a proposal) refers to it
            raise PackageInUse() from exc
        return package

    def in_use(self, package_id):
        """Whether any row that keeps a package from being deleted (a booking, a proposal: PROTECT) refers to it.

        Locks: none (a read; ``delete_package`` asks it under the package lock, the admin's delete page to
        tell what will happen)."""
        for relation in self.model._meta.related_objects:  # bookings and proposals, found generically
            if relation.on_delete is models.PROTECT:
                referring = relation.related_model._base_manager.using(self.db)
                if referring.filter(**{relation.field.name: package_id}).exists():
                    return True
        return False

    def _check_references_now(self):
        """Run the deferred foreign-key checks of the rows referring to packages now, not at COMMIT.

        Django's foreign keys are DEFERRABLE INITIALLY DEFERRED: a delete racing an insert
        that refers to the package would fail at COMMIT, outside this method's translation
        (the old HTTP 500). SET CONSTRAINTS ... IMMEDIATE fires the pending checks of
        exactly those constraints here; ... DEFERRED gives them back their initial mode.
        """
        with connections[self.db].cursor() as cursor:
            cursor.execute(
                "SELECT string_agg(format('%%I.%%I', n.nspname, c.conname), ', ') FROM pg_constraint c "
                "JOIN pg_namespace n ON n.oid = c.connamespace "
                "WHERE c.contype = 'f' AND c.condeferrable AND c.confrelid = %s::regclass",
                [self.model._meta.db_table],
            )
            (names,) = cursor.fetchone()
            if names:
                cursor.execute(f"SET CONSTRAINTS {names} IMMEDIATE")
                cursor.execute(f"SET CONSTRAINTS {names} DEFERRED")


def shop_today():
    """The date it is now in the shop of the bookings queried (their tenant's time zone): the day a capacity
    check, and the live bookings it counts, start from."""
    return LocalToday(F("tenant__time_zone"))


# --- bookings ----------------------------------------------------------------------

Place = namedtuple("Place", "tenant_id is_active capacity price currency taken today now name")


class BookingQuerySet(TenantScopedQuerySet):
    def active(self):
        """Confirmed bookings and unexpired holds; an expired hold never counts, swept or not."""
        return self.filter(active_q())

    def expired_holds(self):
        """Holds past their expiry by the database clock now (``clock_timestamp()``)."""
        return self.filter(status=self.model.Status.HELD, hold_expires_at__lte=ClockNow())


class BookingManager(models.Manager.from_queryset(BookingQuerySet)):
    # A hold's INSERT, compiled once per process (``exclusive`` and a missing origin shape it).
    inserted = Prepared(
        insert_statement,
        tenant_id=int,
        package_id=int,
        date=dt.date,
        customer_name=str,
        customer_email=str,
        hold_expires_at=dt.datetime,
        amount=Decimal,
        currency=str,
        origin_proposal_id=int,
        created_at=dt.datetime,
    )

    def _checkout_intent(self, provider, booking_values):
        """The checkouts' manager and the values of a hold's checkout intent (its booking's amount and currency)."""
        checkouts = self.model.checkout.related.related_model._default_manager.db_manager(self.db)
        return checkouts, {
            "provider": provider,
            "amount": booking_values["amount"],
            "currency": booking_values["currency"],
        }

    def inserting_with_checkout(self, *, checkout_provider, then=None, **values):
        """The hold's INSERT of the booking and of its checkout intent (``creating``), as one statement
        (``core.prepared.insert_with``); with ``then``, the write that follows from the hold too (see ``hold``)."""
        checkouts, terms = self._checkout_intent(checkout_provider, values)
        follow = None if then is None else lambda booking_id: then(self.db, values, booking_id)
        return insert_with(self, values, checkouts, terms, link="booking", then=follow)

    # The same, with the checkout intent: every hold of a checkout (bookings.services).
    inserted_with_checkout = Prepared(inserting_with_checkout, **inserted.kinds)

    # Read for every notice, inside the transaction that changes the booking: compiled once.
    notice_facts = Prepared(notifications.facts_statement, booking=int)

    def _place_statement(self, package_id, date, exclude_pk=None):
        """The package's terms and the places taken on the date, in one statement: (SQL, parameters).

        Its row is a Place (tenant, is_active, capacity, price, currency, places taken, the date it is
        now in the package's shop (its tenant's time zone), the database clock, the package's name);
        none when the package does not exist.
        Issued only after BOOKING_PACKAGE (shared) and BOOKING_DATE are held, so under READ
        COMMITTED its snapshot includes every edit and every booking committed by their
        previous holders; a hold's expiry is judged by ``clock_timestamp()``, the clock now.
        """
        booking, package = self.model._meta.db_table, self.model._meta.get_field("package").related_model
        tenant = package._meta.get_field("tenant").related_model._meta.db_table
        return (
            f"SELECT p.tenant_id, p.is_active, p.daily_capacity, p.price, p.currency, "  # noqa: S608
            f"(SELECT count(*) FROM {booking} b WHERE b.package_id = p.id AND b.date = %s "
            f"AND {ACTIVE_SQL} "
            f"AND b.id IS DISTINCT FROM %s), "
            f"(SELECT {LOCAL_TODAY_SQL.format('t.time_zone')} FROM {tenant} t WHERE t.id = p.tenant_id) AS today, "
            f"clock_timestamp(), p.name FROM {package._meta.db_table} p WHERE p.id = %s",
            [date, exclude_pk, package_id],
        )

    def _taken(self, package_id, date, *, exclude_pk=None):
        """The Place (``_place_statement``) read now, under locks the caller already holds; None if no package."""
        with connections[self.db].cursor() as cursor:
            cursor.execute(*self._place_statement(package_id, date, exclude_pk))
            row = cursor.fetchone()
        return Place(*row) if row is not None else None

    @guarded(joins=True)
    def hold(
        self,
        package,
        date,
        *,
        customer_name,
        customer_email,
        origin_proposal_id=None,
        tenant=None,
        checkout_provider=None,
        then=None,
    ):
        """Hold one place on ``date`` for this customer, or refuse.

        Locks: BOOKING_PACKAGE(package) shared -> BOOKING_DATE(package, date), until commit (none when the
        package is not ``tenant``'s).

        ``package`` is a Package or its id. Joins the caller's transaction (the checkout
        record joins it too). Takes BOOKING_PACKAGE(package) shared, then
        BOOKING_DATE(package, date), both until commit; then, in one statement run after
        both are held (sent in the same round trip as the locks), reads the package's
        capacity, ``is_active``, price and currency and counts confirmed bookings and
        unexpired holds on the date. Raises PackageNotFound (unknown, inactive, deleted
        meanwhile, or not ``tenant``'s), DateInPast or DateUnavailable, always before it
        writes anything (a proposal's confirm goes on in the same transaction after a
        refusal); returns the new ``held`` booking, with ``package_name`` (its package's name
        as the hold read it) for the customer's notice. With ``checkout_provider``, the same
        statement records the intent to create that provider's checkout (``creating``, the
        booking's amount and currency): the booking's ``checkout``. With ``then`` too, a write that
        follows from the hold goes in that statement as well (a proposal's execution, linking this
        booking): ``then(db, values, booking_id)`` returns the (SQL, parameters) of a data-modifying
        statement with RETURNING, given the booking's values and ``booking_id``, the SQL of its new id;
        what it returned is the booking's ``followed`` (a tuple of NULLs when it changed nothing).
        """
        if then is not None and checkout_provider is None:
            raise TypeError("then is a write of the statement recording the checkout intent: give checkout_provider")
        package_id = getattr(package, "pk", package)
        # The locks, then the place read under them: one round trip.
        read = self._place_statement(package_id, date)
        place = lock_place(package_id, date, tenant_id=getattr(tenant, "pk", None), then=read, using=self.db)
        place = Place(*place) if place is not None else None
        if place is None or not place.is_active or (tenant is not None and place.tenant_id != tenant.pk):
            raise PackageNotFound()
        if date < place.today:
            raise DateInPast(date=date.isoformat())
        if place.taken >= place.capacity:
            raise DateUnavailable()
        # Terms a provider cannot charge (a price stored before the currency rules) are refused here,
        # inside the hold's transaction, never after it committed (the hold would block the date).
        _check_terms(place.price, place.currency)
        values = dict(
            tenant_id=place.tenant_id,
            package_id=package_id,
            date=date,
            customer_name=customer_name,
            customer_email=customer_email,
            status=self.model.Status.HELD,
            hold_expires_at=place.now + settings.BOOKING_HOLD_TTL,
            amount=place.price,
            currency=place.currency,
            exclusive=place.capacity == 1,
            origin_proposal_id=origin_proposal_id,
            created_at=place.now,  # the database clock the hold's expiry counts from, not the INSERT's
        )
        if checkout_provider is None:
            booking = self.inserted.create(self, **values)
        else:
            row = self.inserted_with_checkout.fetch_one(self, checkout_provider=checkout_provider, then=then, **values)
            checkouts, terms = self._checkout_intent(checkout_provider, values)
            width, checkout_width = (len(model._meta.db_returning_fields) for model in (self.model, checkouts.model))
            booking = saved(self, values, row[:width])
            booking.checkout = saved(checkouts, {"booking": booking, **terms}, row[width : width + checkout_width])
            if then is not None:
                booking.followed = row[width + checkout_width :]
        booking.package_name = place.name  # read under the package lock: what the customer's notice names
        return booking

    @guarded(joins=True)
    def confirm_payment(self, booking_id):
        """Settle a paid booking: ``confirmed`` if its place is still free, else ``refund_pending``.

        Locks: BOOKING_PACKAGE(package) shared -> BOOKING_DATE(package, date) -> the booking row FOR NO KEY UPDATE.

        Joins the caller's transaction (the webhook marks its event processed in it).
        Takes BOOKING_PACKAGE(package) shared, BOOKING_DATE(package, date), then the
        booking row FOR NO KEY UPDATE (a cancel or a release committing meanwhile is
        seen, never overwritten), then reads the capacity and re-counts the date without
        this booking. A live hold, or an expired or released hold whose date is still
        free, becomes confirmed (``exclusive`` following the capacity read now); a
        cancelled booking, a date taken meanwhile, a capacity lowered meanwhile or a
        registered placement veto (an orphaned proposal booking) makes it refund_pending,
        and so does the one-confirmed-per-exclusive-date index should it refuse (caught
        in a savepoint): a paid booking is never left unplaced and
        unrefunded, and a redelivery never meets a 500. A ``payment_pending`` booking
        (its delayed payment succeeded now) is placed the same way; it already holds
        its place, so it is confirmed. Already settled bookings are returned unchanged.
        Returns (booking, outcome), outcome one of confirmed,
        refund_pending, unchanged. Raises BookingNotFound.
        """
        booking = self._lock_for_settlement(booking_id)
        Status = self.model.Status
        if booking.status in (Status.CONFIRMED, Status.REFUND_PENDING, Status.REFUNDED):
            return booking, "unchanged"
        place = self._taken(booking.package_id, booking.date, exclude_pk=booking.pk)
        scope = self.filter(pk=booking.pk)
        outcome = Status.REFUND_PENDING
        vetoed = any(veto(booking) for veto in _placement_vetoes)
        if booking.status != Status.CANCELLED and place.taken < place.capacity and not vetoed:
            placed = dict(status=Status.CONFIRMED, confirmed_at=place.now, exclusive=place.capacity == 1)
            if self._placed_unless_full(scope, **placed):  # else the date is taken after all: refund
                outcome = Status.CONFIRMED
        if outcome == Status.REFUND_PENDING:
            scope.update(status=Status.REFUND_PENDING)
            if booking.status != Status.CANCELLED:  # a cancelled booking's customer was told; the refund follows
                notifications.owe_customer_notice(notifications.NOT_PLACED, booking.pk)
        else:
            booking.confirmed_at, booking.exclusive = place.now, place.capacity == 1
            notifications.owe_customer_notice(notifications.CONFIRMED, booking.pk)
        booking.status = outcome
        return booking, outcome

    def _placed_unless_full(self, scope, **changes):
        """Write ``changes`` (a move into a place) in a savepoint; False, nothing written, when the database
        counts the date full (``DATE_FULL``): should the managers' count ever disagree with it (a bug), a
        payment is refunded, never a refusal its provider would retry for days."""
        try:
            with transaction.atomic(using=self.db):
                scope.update(**changes)
        except IntegrityError as exc:
            if constraint_name(exc) not in DATE_FULL:
                raise
            return False
        return True

    def _lock_for_settlement(self, booking_id):
        """BOOKING_PACKAGE(package) shared -> BOOKING_DATE(package, date) -> the booking row FOR NO KEY
        UPDATE, the order every payment path takes; return the booking as locked. A booking's package
        and date never change (guarded columns no operation writes), so reading them first is safe."""
        key = self.filter(pk=booking_id).values("package_id", "date").first()
        if key is None:
            raise BookingNotFound()
        lock_place(key["package_id"], key["date"], using=self.db)
        return self.select_for_update(no_key=True).get(pk=booking_id)

    @guarded(joins=True)
    def lock_row(self, booking_id):
        """Lock the booking row FOR NO KEY UPDATE in the caller's transaction, before its checkout row.

        Locks: the booking row FOR NO KEY UPDATE.

        For a path that changes the checkout and then the booking (recording a refund): taking the
        booking row first keeps the order of every path (a payment settling the booking holds its
        row and waits for the checkout row; the reverse order deadlocked against it).
        """
        self.select_for_update(no_key=True).filter(pk=booking_id).values_list("pk", flat=True).first()

    @guarded(joins=True)
    def lock_settlement(self, booking_id, *, checkout_id):
        """Take every lock a payment event settles under and return the checkout row as locked.

        Locks: BOOKING_PACKAGE(package) shared -> BOOKING_DATE(package, date) -> the booking row FOR NO KEY UPDATE ->
        the checkout row FOR NO KEY UPDATE.

        Joins the caller's transaction (the webhook's). BOOKING_PACKAGE(package) shared,
        BOOKING_DATE(package, date), the booking row and then the checkout row, FOR NO
        KEY UPDATE: the order of every path, so the event is matched against a checkout
        no one can change before this transaction ends (a provider answer stored
        meanwhile is seen, not raced). The settling method called next takes the same
        locks again (re-entrant in one transaction). Raises BookingNotFound, CheckoutNotFound.
        """
        from bookings.models import Checkout

        self._lock_for_settlement(booking_id)
        checkout = (
            Checkout.objects.using(self.db).select_for_update(no_key=True).filter(pk=checkout_id, booking_id=booking_id)
        ).first()
        if checkout is None:
            raise CheckoutNotFound()
        return checkout

    @guarded(joins=True)
    def await_payment(self, booking_id, *, checkout_id, provider_checkout_id, payment_id=""):
        """A checkout completed with a delayed payment: keep the place until the payment settles.

        Locks: BOOKING_PACKAGE(package) shared -> BOOKING_DATE(package, date) -> the booking row FOR NO KEY UPDATE ->
        the checkout row FOR NO KEY UPDATE.

        Joins the caller's transaction. Locks as confirm_payment (BOOKING_PACKAGE shared,
        BOOKING_DATE, the booking row FOR NO KEY UPDATE), then the checkout row FOR NO KEY
        UPDATE (order booking -> checkout). Only a checkout still unpaid (creating, open,
        expired, failed) moves to ``processing``: one whose payment already succeeded or
        failed (an out-of-order delivery) is left alone, so a late "completed, unpaid"
        never re-reserves a released place. The booking, if ``held`` or ``expired`` with
        its place still free (re-counted without it, after the locks) and not vetoed,
        becomes ``payment_pending``: it takes its place without a hold expiry. A
        cancelled booking, or one whose place went to someone else, stays as it is (the
        payment, if it succeeds, is refunded by confirm_payment). Returns
        (booking, outcome), outcome one of payment_pending, processing (checkout only),
        unchanged. Raises BookingNotFound.
        """
        from bookings.models import Checkout

        booking = self._lock_for_settlement(booking_id)
        unpaid = [Checkout.State.CREATING, Checkout.State.OPEN, Checkout.State.EXPIRED, Checkout.State.FAILED]
        checkout = (
            Checkout.objects.using(self.db).select_for_update(no_key=True).filter(pk=checkout_id, booking_id=booking_id)
        )
        if checkout.values_list("state", flat=True).first() not in unpaid:
            return booking, "unchanged"
        checkout.update(
            state=Checkout.State.PROCESSING,
            provider_checkout_id=Coalesce(F("provider_checkout_id"), Value(provider_checkout_id)),
            provider_payment_id=_first_payment_id(payment_id),
            updated_at=Now(),
        )
        Status = self.model.Status
        if booking.status not in (Status.HELD, Status.EXPIRED):
            return booking, CheckoutState.PROCESSING
        place = self._taken(booking.package_id, booking.date, exclude_pk=booking.pk)
        if place.taken >= place.capacity or any(veto(booking) for veto in _placement_vetoes):
            return booking, CheckoutState.PROCESSING
        scope = self.filter(pk=booking.pk)
        if not self._placed_unless_full(scope, status=Status.PAYMENT_PENDING, exclusive=place.capacity == 1):
            return booking, CheckoutState.PROCESSING  # no place kept, as when the count sees the date full
        booking.status, booking.exclusive = Status.PAYMENT_PENDING, place.capacity == 1
        return booking, Status.PAYMENT_PENDING

    @guarded(joins=True)
    def payment_failed(self, booking_id):
        """The delayed payment failed: release the place (``payment_pending`` or ``held`` -> ``expired``).

        Locks: the booking row (a filtered UPDATE: the row lock it takes until commit).

        Joins the caller's transaction. One filtered UPDATE on the booking row (status in
        its WHERE, re-checked after waiting for a payment or a cancel holding the row): a
        confirmed, cancelled or refunded booking is left alone. Nothing is refunded:
        nothing was paid; the customer is told the date was released (once). Returns whether
        the place was released.
        """
        Status = self.model.Status
        released = self.filter(pk=booking_id, status__in=[Status.HELD, Status.PAYMENT_PENDING]).update(
            status=Status.EXPIRED
        )
        if released:
            notifications.owe_customer_notice(notifications.PAYMENT_FAILED, booking_id)
        return bool(released)

    def releasing(self, booking_id, *, tenant=None):
        """What releasing a hold locks, requires and writes: ``core.decide``'s arguments."""
        scope = self.filter(pk=booking_id) if tenant is None else self.filter(pk=booking_id, tenant=tenant)
        return {
            "queryset": scope,
            "when": Q(status=self.model.Status.HELD),
            "changes": {"status": self.model.Status.EXPIRED},
        }

    # Without a tenant (an operator's release) the call is not of this kind and compiles as decide does.
    released = Decision(releasing, booking_id=int, tenant=int)

    @guarded(statement=True)
    def release(self, booking_id, *, tenant=None):
        """Release a hold (``held`` -> ``expired``) so its place is free at once.

        Locks: the booking row (FOR NO KEY UPDATE in the deciding statement).

        One statement (core.decide) locks the row (waiting for a payment settling it),
        judges ``held`` on its newest version, changes it, and returns it either way, so
        the refusal is named from the row that refused: BookingNotFound or BookingNotHeld.
        """
        won, booking = self.released(self, booking_id=booking_id, tenant=tenant)
        if won:
            return True
        if booking is None:
            raise BookingNotFound()
        raise BookingNotHeld(status=self.model.Status(booking.status))

    @guarded
    def release_if_held(self, booking_id):
        """Release the hold if the booking is still held; return whether it was (no error otherwise).

        Locks: the booking row (a filtered UPDATE: the row lock it takes until commit).

        One filtered UPDATE on the booking row (``status = 'held'`` re-checked after any wait).
        """
        return bool(self.filter(pk=booking_id, status=self.model.Status.HELD).update(status=self.model.Status.EXPIRED))

    @guarded
    def cancel(self, booking_id, *, tenant=None, version=None):
        """Cancel a held, payment-pending or confirmed booking; a confirmed (paid) one goes to ``refund_pending``.

        Locks: the booking row (a filtered UPDATE: the row lock it takes until commit).

        A ``payment_pending`` booking is cancelled (nothing was paid yet); should its
        delayed payment still succeed, confirm_payment refunds it.

        One filtered UPDATE decides (a CASE picks the new status; it waits for the row
        lock of a payment settling the booking and re-checks the status on the row); on
        0 rows one read names the refusal: BookingNotFound or BookingNotCancellable.
        With ``version`` (what the caller showed an operator), only the booking at that
        version is cancelled: one paid, or otherwise moved, since then raises VersionConflict
        (a cancel shown as "nothing was paid" never refunds a payment made meanwhile).
        Returns the booking; its status tells the caller whether to refund.
        """
        Status = self.model.Status
        cancellable = [Status.HELD, Status.PAYMENT_PENDING, Status.CONFIRMED]
        scope = self.filter(pk=booking_id) if tenant is None else self.filter(pk=booking_id, tenant=tenant)
        deciding = (scope if version is None else scope.filter(version=version)).filter(status__in=cancellable)
        for _attempt in range(CANCEL_ATTEMPTS):
            won = deciding.update(
                status=Case(
                    When(status__in=[Status.HELD, Status.PAYMENT_PENDING], then=Value(Status.CANCELLED)),
                    default=Value(Status.REFUND_PENDING),
                ),
                cancelled_at=Now(),
            )
            if won:
                break
            found = scope.values_list("status", "version").first()
            if found is None:
                raise BookingNotFound()
            if found[0] not in cancellable:
                raise BookingNotCancellable(status=Status(found[0]))
            if version is not None and found[1] != version:
                raise VersionConflict(current=found[1])
            # Cancellable at the version asked for, yet the UPDATE missed it: a payment made it so in between
            # (a released hold paid late). Decide again on the row as it is now.
        else:
            raise LockContended()
        notifications.owe_customer_notice(notifications.CANCELLED, booking_id)
        return scope.select_related("package").get()

    @guarded
    def edit_contact(self, booking_id, *, version, tenant=None, **changes):
        """Write only the changed contact fields (customer_name, customer_email) of a booking.

        Locks: the booking row FOR NO KEY UPDATE.

        Locks the booking row FOR NO KEY UPDATE (no package or date lock: contact
        fields do not touch capacity; the row lock is the only one taken, so the order
        package -> date -> booking -> checkout holds), then refuses with VersionConflict
        when ``version`` is not the row's: a payment, a cancel, an expiry or another
        edit committed since the caller read it bumps the version. The version trigger
        bumps it again for this edit. Raises BookingNotFound, VersionConflict.
        """
        from bookings.models import BOOKING_EDITABLE

        refuse_unknown_fields(changes, BOOKING_EDITABLE, model="Booking", edit="a contact edit")
        scope = self.filter(pk=booking_id) if tenant is None else self.filter(pk=booking_id, tenant=tenant)
        return edit_at_version(scope, version=version, changes=changes, missing=BookingNotFound)

    @guarded
    def complete_refund(self, booking_id, *, refund_id):
        """Move ``refund_pending`` -> ``refunded`` (the provider confirmed its refund ``refund_id``).

        Locks: the booking row (a filtered UPDATE: the row lock it takes until commit).

        One filtered UPDATE (status in its WHERE); raises BookingNotFound or
        BookingNotRefundPending, so a refunded booking is never stamped twice.
        """
        scope = self.filter(pk=booking_id)
        if scope.filter(status=self.model.Status.REFUND_PENDING).update(
            status=self.model.Status.REFUNDED, refunded_at=Now()
        ):
            notifications.owe_customer_notice(notifications.REFUNDED, booking_id, refund=refund_id)
            return True
        raise self._refusal(scope, BookingNotRefundPending)

    @guarded(joins=True)
    def reopen_refund(self, booking_id, *, refund_id):
        """Move ``refunded`` -> ``refund_pending``: the provider's refund ``refund_id`` failed after it had succeeded.

        Locks: the booking row (a filtered UPDATE: the row lock it takes until commit).

        One filtered UPDATE; the customer's "refunded" e-mail is withdrawn if it has not gone out, else
        they are told it was not (take_back_refund_notice). Returns whether the booking was refunded
        (one that was not is left alone).
        """
        Status = self.model.Status
        if self.filter(pk=booking_id, status=Status.REFUNDED).update(status=Status.REFUND_PENDING, refunded_at=None):
            notifications.take_back_refund_notice(booking_id, refund=refund_id)
            return True
        return False

    @guarded
    def expire_hold(self, booking_id):
        """Mark one hold ``expired`` if it is still held and past its expiry now; return whether it was.

        Locks: the booking row (a filtered UPDATE: the row lock it takes until commit).

        One filtered UPDATE whose WHERE holds every condition on the row it changes
        (``held``, ``hold_expires_at <= clock_timestamp()``): a payment or a cancel holding
        the row is waited for, then the newest row version is judged with the clock at
        that moment. Locks: the booking row only. A row busy past lock_timeout raises
        LockContended.
        """
        return bool(self.expired_holds().filter(pk=booking_id).update(status=self.model.Status.EXPIRED))

    @sweep
    def expire_holds(self):
        """Sweep: mark every hold past its expiry ``expired``, one row per transaction; return a SweepResult.

        Locks: each booking row in its own transaction (expire_hold), never two at once.

        The candidates are read once (stale by design) and each is judged again by
        ``expire_hold`` on its own row, so the sweep never holds one booking's lock while
        waiting for another's (a multi-row UPDATE could deadlock against a capacity edit
        recomputing ``exclusive``). A row busy past lock_timeout is left for the next run
        (in ``skipped`` with its refusal). Purely cosmetic for capacity: an expired hold
        never counts, swept or not.
        """
        result = SweepResult()
        for booking_id in self.expired_holds().order_by("pk").values_list("pk", flat=True):
            try:
                if self.expire_hold(booking_id):
                    result.done += 1
            except DomainError as refusal:
                result.skipped.append((booking_id, refusal))
        return result

    def _refusal(self, scope, wrong_state):
        status = scope.values_list("status", flat=True).first()
        if status is None:
            return BookingNotFound()
        return wrong_state(status=self.model.Status(status))


# A cancel decides again when the row became cancellable between its UPDATE and its read (a late
# payment); twice in a row would take two settlements of one booking in a few microseconds.
CANCEL_ATTEMPTS = 3


def _first_payment_id(payment_id):
    """The stored payment id, or ``payment_id`` when none is stored: a payment id is never overwritten."""
    return Case(When(provider_payment_id="", then=Value(payment_id)), default=F("provider_payment_id"))


def refund_retry_policy():
    """(base delay, cap, maximum attempts) of refund retries, from settings with defaults (docs/bookings.md)."""
    return (
        getattr(settings, "REFUND_RETRY_BASE", timedelta(minutes=1)),
        getattr(settings, "REFUND_RETRY_CAP", timedelta(hours=6)),
        getattr(settings, "REFUND_MAX_ATTEMPTS", 8),
    )


# A refund left ``pending`` this long was claimed by a caller that died before the
# provider answered (or before its answer was stored): ``retry_refunds`` may claim it
# again. Longer than any provider call; the provider's idempotency key
# (``lockstep-refund-<checkout>``) makes a repeated request harmless anyway.
REFUND_STALE_AFTER = timedelta(minutes=10)


def refund_check_every():
    """How long a ``submitted`` refund waits for its event before ``retry_refunds`` asks the provider, and again."""
    return getattr(settings, "REFUND_CHECK_EVERY", timedelta(hours=1))


def refund_stuck_after():
    """How long after it was first asked for a refund may stay ``submitted`` before the operators are told."""
    return getattr(settings, "REFUND_STUCK_AFTER", timedelta(days=3))


# The refund state a provider refund's outcome (bookings.payments.base.refund_outcome) is recorded as.
REFUND_RECORDED = {
    "succeeded": CheckoutRefundState.SUCCEEDED,
    "pending": CheckoutRefundState.SUBMITTED,
    "failed": CheckoutRefundState.EXHAUSTED,
}
# Refund states in which a refund is owed and the provider's refund for it is not recorded yet: a new
# refund of the payment is this one's (its answer, or, should the answer have been lost, its event).
REFUND_OWED = (CheckoutRefundState.PENDING, CheckoutRefundState.FAILED, CheckoutRefundState.EXHAUSTED)
# What a provider's refund may do to a refund state (Checkout.objects.record_refund): (was, becomes).
REFUND_RECORDS = {
    *((owed, recorded) for owed in REFUND_OWED for recorded in REFUND_RECORDED.values()),
    (CheckoutRefundState.SUBMITTED, CheckoutRefundState.SUCCEEDED),
    (CheckoutRefundState.SUBMITTED, CheckoutRefundState.EXHAUSTED),
    (CheckoutRefundState.SUCCEEDED, CheckoutRefundState.EXHAUSTED),
}


class ArrayAppend(models.Func):
    """``array_append(array, element)``: one more element at the end of an array column."""

    function = "array_append"
    output_field = ArrayField(models.CharField(max_length=255))


# A session ends SESSION_OUTLIVES_HOLD after its hold (stripe.checkout_expiry) and its event comes within
# minutes: an open checkout still unheard this long after its hold ended lost its event.
UNHEARD_AFTER = SESSION_OUTLIVES_HOLD + timedelta(minutes=30)


class CheckoutQuerySet(models.QuerySet):
    def unheard(self):
        """Checkouts whose outcome may have been lost on its way: still ``open`` UNHEARD_AFTER after their hold
        ended (the session has ended at the provider, paid or expired, and its event never got through), or
        ``processing`` (a delayed payment, whose own event says when it succeeded or failed, which may never
        come) for UNHEARD_AFTER. Never asked first, then the least recently asked (``looked_up_at``): one the
        provider cannot settle yet waits its turn again."""
        State = self.model.State
        lapsed = Q(state=State.OPEN, booking__hold_expires_at__lt=Now() - UNHEARD_AFTER)
        delayed = Q(state=State.PROCESSING, updated_at__lt=Now() - UNHEARD_AFTER)
        return self.filter(lapsed | delayed).order_by(F("looked_up_at").asc(nulls_first=True), "pk")

    def refunds_to_retry(self, *, operator=False):
        """Refunds owed but not in flight: failed and due (its backoff over), or pending and stale (the caller
        died mid-refund). ``operator=True`` (an explicit admin retry) also takes failed ones not yet due and
        exhausted ones."""
        State = self.model.RefundState
        stale = Q(refund_state=State.PENDING, updated_at__lte=ClockNow() - REFUND_STALE_AFTER)
        if operator:
            return self.filter(Q(refund_state__in=[State.FAILED, State.EXHAUSTED]) | stale)
        due = Q(next_retry_at__isnull=True) | Q(next_retry_at__lte=ClockNow())
        return self.filter((Q(refund_state=State.FAILED) & due) | stale)

    def refunds_to_check(self):
        """Submitted refunds whose event has not come by ``next_retry_at``: ``retry_refunds`` asks the provider."""
        return self.filter(refund_state=self.model.RefundState.SUBMITTED, next_retry_at__lte=ClockNow())

    def stuck_refunds(self):
        """Submitted refunds first asked for longer than REFUND_STUCK_AFTER ago: the customer still waits."""
        return self.filter(
            refund_state=self.model.RefundState.SUBMITTED, refund_requested_at__lte=ClockNow() - refund_stuck_after()
        )

    def refunds_for_an_operator(self):
        """Refunds whose retries are exhausted: nothing retries them until an operator does."""
        return self.filter(refund_state=self.model.RefundState.EXHAUSTED)


class CheckoutManager(models.Manager.from_queryset(CheckoutQuerySet)):
    def opening(self, checkout_id, provider_checkout_id, url, payment_id):
        """The filtered UPDATE that opens a checkout still ``creating`` of a booking still held (a live hold),
        returning its id."""
        booking = self.model._meta.get_field("booking").related_model._meta.db_table
        # FOR SHARE, not a plain read: a cancel, release or expiry of the booking in flight when this
        # statement starts is waited for and its committed status judged (a plain EXISTS would judge the
        # snapshot's "held" and open a cancelled booking's checkout). The booking row is locked before the
        # checkout row, in this statement: the global order (booking -> checkout), so no deadlock with a
        # cancel or a payment; and FOR SHARE never blocks another share lock (reopen_if_stranded's).
        still_held = RawSQL(
            f"EXISTS (SELECT 1 FROM {booking} b WHERE b.id = {self.model._meta.db_table}.booking_id "  # noqa: S608
            f"AND b.status = %s AND b.hold_expires_at > clock_timestamp() FOR SHARE)",
            [BookingStatus.HELD.value],
            output_field=models.BooleanField(),
        )
        sql, params = update_statement(
            self.filter(still_held, pk=checkout_id, state=self.model.State.CREATING),
            state=self.model.State.OPEN,
            provider_checkout_id=provider_checkout_id,
            url=url,
            provider_payment_id=payment_id,
            updated_at=Now(),
        )
        pk = connections[self.db].ops.quote_name(self.model._meta.pk.column)
        return f"{sql} RETURNING {pk}", params

    # Every checkout opens once, on the hot path of a hold and a proposal confirm: compiled once.
    opened = Prepared(opening, checkout_id=int, provider_checkout_id=str, url=str, payment_id=str)

    @guarded(statement=True)
    def open(self, checkout_id, *, provider_checkout_id, url, payment_id="", booking):
        """Store the provider's checkout id and URL: ``creating`` -> ``open``; return whether it did.

        Locks: the checkout row (a filtered UPDATE: the row lock it takes, until its statement or
        the caller's transaction ends).

        One statement, its own transaction: the filtered UPDATE, so only a checkout still
        ``creating`` opens (a payment, an expiry or the provider failure path that settled it
        first is never undone), and, only if it opened, the customer's e-mail with the pay link
        and the hold's expiry owed with its job (``Notification.objects.owe_if``). ``booking``:
        the hold this checkout pays for, as ``Booking.objects.hold`` returned it (the e-mail
        tells what the customer held, ``bookings.notifications.held_notice``).
        """
        from core.models import Notification

        opening = self.opened.statement(
            self, checkout_id=checkout_id, provider_checkout_id=provider_checkout_id, url=url, payment_id=payment_id
        )
        opened, _notification = Notification.objects.owe_if(opening, **notifications.held_notice(booking, pay_url=url))
        return opened > 0

    @guarded
    def fail(self, checkout_id, *, error):
        """The provider refused or was unreachable: ``creating`` -> ``failed`` (one filtered UPDATE).

        Locks: the checkout row (a filtered UPDATE: the row lock it takes until commit).
        """
        return bool(
            self.filter(pk=checkout_id, state=self.model.State.CREATING).update(
                state=self.model.State.FAILED, error=error[:500], updated_at=Now()
            )
        )

    @guarded(joins=True)
    def mark_completed(self, checkout_id, *, provider_checkout_id, payment_id=""):
        """The customer paid (any earlier state, so late or out-of-order events still settle).

        Locks: the checkout row (a filtered UPDATE: the row lock it takes until commit).

        A checkout whose provider answer was lost learns its provider id here. Joins the
        caller's transaction, after the booking row (lock order booking -> checkout).
        """
        changes = dict(
            state=self.model.State.COMPLETED,
            provider_checkout_id=Coalesce(F("provider_checkout_id"), Value(provider_checkout_id)),
            updated_at=Now(),
        )
        if payment_id:
            changes["provider_payment_id"] = _first_payment_id(payment_id)
        return bool(self.filter(pk=checkout_id).exclude(state=self.model.State.COMPLETED).update(**changes))

    @guarded(joins=True)
    def mark_payment_failed(self, checkout_id, *, provider_checkout_id):
        """The delayed payment failed: an unsettled checkout (creating, open, processing) -> ``payment_failed``.

        Locks: the checkout row (a filtered UPDATE: the row lock it takes until commit).

        One filtered UPDATE; a completed (paid) checkout is never marked failed. Joins the
        caller's transaction, after the booking row (lock order booking -> checkout).
        """
        State = self.model.State
        return bool(
            self.filter(pk=checkout_id, state__in=[State.CREATING, State.OPEN, State.PROCESSING]).update(
                state=State.PAYMENT_FAILED,
                provider_checkout_id=Coalesce(F("provider_checkout_id"), Value(provider_checkout_id)),
                updated_at=Now(),
            )
        )

    @guarded(joins=True)
    def mark_expired(self, checkout_id, *, provider_checkout_id):
        """The provider session expired: only an unpaid checkout (``creating``/``open``) becomes ``expired``.

        Locks: the checkout row (a filtered UPDATE: the row lock it takes until commit).
        """
        return self._expire(checkout_id, provider_checkout_id, [self.model.State.CREATING, self.model.State.OPEN])

    @guarded(joins=True)
    def abandon(self, checkout_id, *, provider_checkout_id):
        """The session a provider made for a hold that moved on before the checkout opened: ``creating`` ->
        ``expired`` with that session's id, never an ``open`` checkout (another call for the same hold opened
        it, with the same session under the same idempotency key, and e-mailed its link).

        Locks: the checkout row (a filtered UPDATE: the row lock it takes until commit).
        """
        return self._expire(checkout_id, provider_checkout_id, [self.model.State.CREATING])

    def _expire(self, checkout_id, provider_checkout_id, states):
        return bool(
            self.filter(pk=checkout_id, state__in=states).update(
                state=self.model.State.EXPIRED,
                provider_checkout_id=Coalesce(F("provider_checkout_id"), Value(provider_checkout_id)),
                updated_at=Now(),
            )
        )

    @guarded(joins=True)
    def request_refund(self, checkout_id):
        """Claim the refund owed (``''`` -> ``pending``); return whether this caller claimed it.

        Locks: the checkout row (a filtered UPDATE: the row lock it takes until commit).

        One filtered UPDATE: only a checkout with no refund yet is claimed, so of two
        paths owing the same refund exactly one gets True and calls the provider (after
        its transaction commits); a refund in flight, failed or done is left alone.
        """
        return bool(
            self.filter(pk=checkout_id, refund_state=self.model.RefundState.NONE).update(
                refund_state=self.model.RefundState.PENDING, refund_requested_at=Now(), updated_at=Now()
            )
        )

    @guarded
    def claim_refund_retry(self, checkout_id, *, operator=False):
        """Claim a refund for one retry: ``failed`` and due, or stale ``pending`` -> ``pending`` (fresh).

        Locks: the checkout row (a filtered UPDATE: the row lock it takes until commit).

        The filtered UPDATE picks one retrier; a refund in flight (pending, recent by the
        database clock now) is left alone, a stale one (its caller died) is claimed again,
        a failed one only once its backoff (``next_retry_at``) is over. ``operator=True``
        (an explicit admin retry) also claims a failed one early and an ``exhausted`` one.
        """
        return bool(
            self.refunds_to_retry(operator=operator)
            .filter(pk=checkout_id)
            .update(refund_state=self.model.RefundState.PENDING, next_retry_at=None, updated_at=Now())
        )

    @guarded
    def claim_refund_check(self, checkout_id):
        """Claim a submitted refund's look-up (``next_retry_at`` pushed on by REFUND_CHECK_EVERY); True for one caller.

        Locks: the checkout row (a filtered UPDATE: the row lock it takes until commit).

        One filtered UPDATE (``submitted`` and due in its WHERE), so of two sweeps one asks the provider.
        """
        return bool(
            self.refunds_to_check()
            .filter(pk=checkout_id)
            .update(next_retry_at=ClockNow() + refund_check_every(), updated_at=Now())
        )

    @guarded(joins=True)
    def record_refund(self, checkout_id, refund, *, was):
        """Record how far the provider's refund went, from the refund state ``was``; return whether it did.

        Locks: the checkout row (a filtered UPDATE: the row lock it takes until commit).

        ``refund`` (a ProviderRefund) is the provider's answer to this caller's claim (``was``
        ``pending``), what its event says or what a look-up found (``was`` as the caller read it
        under the row lock). A refund owed (REFUND_OWED: ``pending``, ``failed``, ``exhausted``)
        takes a refund other than the one recorded (that one failed); a ``submitted`` or
        ``succeeded`` one only news of the refund recorded. Its outcome moves the refund:

        - ``succeeded``: owed or ``submitted`` -> ``succeeded`` (the caller then completes the booking's refund);
        - ``pending``: owed -> ``submitted``, settled later by its event or a look-up;
        - ``failed``: owed, ``submitted`` or ``succeeded`` -> ``exhausted``, for an operator: a refund the
          provider failed (a closed card) would fail again, and its idempotency key would replay the failure.

        Any other pair (a repeated or out-of-order event) changes nothing. One filtered UPDATE
        (``was`` in its WHERE); an attempt's own answer counts in ``refund_attempts``.
        """
        State = self.model.RefundState
        target = REFUND_RECORDED[refund.status]
        if (was, target) not in REFUND_RECORDS:
            return False
        scope = self.filter(pk=checkout_id, refund_state=was)
        if was in REFUND_OWED:  # never a refund the provider already failed, however late its news comes
            scope = scope.exclude(failed_refund_ids__contains=[refund.id])
        else:
            scope = scope.filter(provider_refund_id=refund.id)
        failed = target == State.EXHAUSTED
        # a submitted refund is looked up if its event has not come by then (refunds_to_check)
        check_at = ClockNow() + refund_check_every() if target == State.SUBMITTED else None
        changed = scope.update(
            refund_state=target,
            provider_refund_id=refund.id,
            refund_attempts=F("refund_attempts") + (1 if was == State.PENDING else 0),
            refund_error=f"refund {refund.id} failed: {refund.failure_reason or 'no reason given'}"[:500]
            if failed
            else "",
            next_retry_at=check_at,
            **({"failed_refund_ids": ArrayAppend("failed_refund_ids", Value(refund.id))} if failed else {}),
            updated_at=Now(),
        )
        if changed and failed:
            booking_id = self.filter(pk=checkout_id).values_list("booking_id", flat=True).get()
            notifications.owe_operator_alert(booking_id, failed_refund=refund.id)
        return bool(changed)

    @guarded
    def refund_failed(self, checkout_id, *, error, answered=False):
        """Record the provider's refusal: ``pending`` -> ``failed``, due again after a backoff, or ``exhausted``.

        ``answered``: the provider answered the request with its error (ProviderError.answered). The next
        attempt then goes under a new idempotency key (``refund_key_round`` + 1): Stripe replays an answered
        error to every retry under the old one, so retries under it would never ask again.

        Locks: the checkout row (a filtered UPDATE: the row lock it takes until commit).

        One filtered UPDATE (``pending`` in its WHERE). Attempt n (counted in the row) is
        due again ``min(cap, base * 2**(n-1))`` later by the database clock; the attempt
        that reaches REFUND_MAX_ATTEMPTS leaves the refund ``exhausted`` for an operator
        (refund_retry_policy). Returns the new refund state, or None when it was not pending.
        """
        State = self.model.RefundState
        base, cap, max_attempts = refund_retry_policy()
        last = Q(refund_attempts__gte=max_attempts - 1)
        scope = self.filter(pk=checkout_id, refund_state=State.PENDING)
        changed = scope.update(
            refund_state=Case(When(last, then=Value(State.EXHAUSTED)), default=Value(State.FAILED)),
            # SET reads the row's old attempts: attempt n = old + 1 waits base * 2**(n-1), capped
            next_retry_at=Case(
                When(last, then=Value(None, output_field=models.DateTimeField())),
                default=RawSQL("clock_timestamp() + LEAST(%s, %s * power(2, refund_attempts))", [cap, base]),
                output_field=models.DateTimeField(),
            ),
            refund_attempts=F("refund_attempts") + 1,
            refund_key_round=F("refund_key_round") + int(answered),
            refund_error=error[:500],
            updated_at=Now(),
        )
        if not changed:
            return None
        checkout = self.filter(pk=checkout_id).values("refund_state", "booking_id").get()
        if checkout["refund_state"] == State.EXHAUSTED:
            notifications.owe_operator_alert(checkout["booking_id"])
        return checkout["refund_state"]


class PaymentEventManager(models.Manager):
    @guarded(joins=True)
    def receive(self, *, provider, event_id, type, payload):
        """Store the event once and lock its row; return (event_pk, already_processed).

        Locks: the payment-event row (INSERT ... ON CONFLICT DO UPDATE), until commit.

        One INSERT ... ON CONFLICT DO UPDATE: a new id inserts; a repeated id waits
        for the first delivery's transaction, then locks the stored row and
        counts the delivery. Must run inside the transaction that processes it.
        """
        table = self.model._meta.db_table
        with connections[self.db].cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} "  # noqa: S608
                f"(provider, event_id, type, payload, received_at, result, deliveries, needs_review) "
                f"VALUES (%s, %s, %s, %s::jsonb, statement_timestamp(), '', 1, false) "
                f"ON CONFLICT (event_id) DO UPDATE SET deliveries = {table}.deliveries + 1 "
                f"RETURNING id, processed_at IS NOT NULL",
                [provider, event_id, jsonb_safe(type)[:100], json.dumps(jsonb_safe(payload))],
            )
            return cursor.fetchone()

    @guarded
    def mark_reviewed(self, event_pk, *, operator):
        """An operator has looked at a flagged event: clear ``needs_review``, record who and when, once.

        Locks: the payment-event row (one filtered UPDATE; a redelivery holding it is waited for).

        Returns whether this call cleared the flag (False: not flagged, or reviewed already).
        Nothing else changes: the event stays stored with its result for the record.
        """
        return bool(
            self.filter(pk=event_pk, needs_review=True).update(
                needs_review=False, reviewed_at=ClockNow(), reviewed_by=operator
            )
        )

    @guarded(joins=True)
    def mark_processed(self, event_pk, *, result, booking_id=None, needs_review=False):
        """Mark the event (locked by ``receive`` in this transaction) processed with its result, once.

        Locks: the payment-event row (already held since receive).
        """
        self.filter(pk=event_pk, processed_at__isnull=True).update(
            processed_at=Now(), result=result, booking_id=booking_id, needs_review=needs_review
        )
