import pgtrigger
from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _

from bookings.choices import BookingStatus, CheckoutRefundState, CheckoutState
from bookings.managers import ACTIVE_SQL, BookingManager, CheckoutManager, PackageManager, PaymentEventManager
from core import money
from core.db import LockNamespace
from core.history import tracked
from core.integrity import (
    BumpVersion,
    FrozenColumns,
    GuardedModel,
    NeverLater,
    SetOnce,
    StateMachine,
    VersionOnlyIncreases,
    refusal_sql,
    within,
)


class BookingOfItsPackage(pgtrigger.Trigger):
    """Refuse, in the database, a booking that is not its package's: made under another tenant (that shop
    would list, cancel and refund it), in another currency than the package charges, or with an
    ``exclusive`` flag that disagrees with the package's capacity (the flag is what makes the
    one-confirmed-per-exclusive-date index the last guard against a double booking of a capacity-1 date).

    Judged when the booking is made, and whenever its ``exclusive`` changes (``edit_package`` recomputes it
    after writing the capacity; ``confirm_payment`` sets it from the capacity it read). One primary-key
    probe of the package the hold has just read. Raises SQLSTATE 23514 named
    ``booking_of_its_package_transition`` (409 invalid_transition, ``package->booking``).
    """

    when = pgtrigger.Before
    operation = pgtrigger.Insert | pgtrigger.UpdateOf("exclusive")

    def get_func(self, model):
        packages = model._meta.get_field("package").related_model._meta.db_table
        message = 'format(\'%s: booking %s is not of its package %s\', TG_TABLE_NAME, NEW."id", NEW."package_id")'
        refuse = refusal_sql(self.name, "'package->booking'", message)
        return self.format_sql(
            f"""
            IF TG_OP = 'UPDATE' THEN
                IF OLD."exclusive" IS DISTINCT FROM NEW."exclusive" AND NOT EXISTS (
                    SELECT 1 FROM "{packages}"
                    WHERE "id" = NEW."package_id" AND ("daily_capacity" = 1) = NEW."exclusive"
                ) THEN {refuse} END IF;
                RETURN NEW;
            END IF;
            IF NOT EXISTS (
                SELECT 1 FROM "{packages}"
                WHERE "id" = NEW."package_id" AND "tenant_id" = NEW."tenant_id" AND "currency" = NEW."currency"
                  AND ("daily_capacity" = 1) = NEW."exclusive"
            ) THEN {refuse} END IF;
            RETURN NEW;
            """  # noqa: S608 - identifiers from model meta, no values
        )


class BookingWithinCapacity(pgtrigger.Trigger):
    """Refuse, in the database, a booking that takes a place on a date already full: the last guard against a
    double booking of a date with more than one place (one place has the exclusive index besides).

    Judged when a booking comes to take a place: inserted live (a live hold, a delayed payment, confirmed), or
    moved into ``payment_pending`` or ``confirmed`` from a state that took none (expired, a lapsed hold). A
    booking that already had its place (a live hold confirmed) is not counted again. It takes the place's
    locks as the managers do (``lock_place``: BOOKING_PACKAGE shared, then BOOKING_DATE; re-entrant, so free
    where the path already holds them), then counts the date's places on a snapshot taken after them (READ
    COMMITTED), so a writer that skipped the managers queues behind a hold in flight and sees it once it
    committed. Under REPEATABLE READ the count would read the transaction's first snapshot: no path here
    writes under it. Raises SQLSTATE 23514 named ``booking_within_capacity`` (409 ``date_unavailable``).
    """

    when = pgtrigger.Before
    operation = pgtrigger.Insert | pgtrigger.UpdateOf("status")
    declare = [("v_capacity", "integer"), ("v_taken", "bigint")]

    def get_func(self, model):
        packages = model._meta.get_field("package").related_model._meta.db_table
        day = "to_char(NEW.\"date\", 'YYYY-MM-DD')"  # date.isoformat(), whatever the session's DateStyle
        package_key = f"'{LockNamespace.BOOKING_PACKAGE.value}:' || NEW.\"package_id\""
        date_key = f"'{LockNamespace.BOOKING_DATE.value}:' || NEW.\"package_id\" || ':' || {day}"
        message = (
            "format('%s: package %s has %s places on %s, %s taken', TG_TABLE_NAME, NEW.\"package_id\", "
            'v_capacity, NEW."date", v_taken)'
        )
        return self.format_sql(
            f"""
            IF NEW."status" = 'held' AND NOT NEW."hold_expires_at" > clock_timestamp() THEN RETURN NEW; END IF;
            IF TG_OP = 'UPDATE' AND (OLD."status" IN ('confirmed', 'payment_pending')
                OR (OLD."status" = 'held' AND OLD."hold_expires_at" > clock_timestamp())) THEN
                RETURN NEW;
            END IF;
            PERFORM pg_advisory_xact_lock_shared(hashtextextended({package_key}, 0));
            PERFORM pg_advisory_xact_lock(hashtextextended({date_key}, 0));
            SELECT p."daily_capacity", (
                SELECT count(*) FROM "{model._meta.db_table}" b
                WHERE b."package_id" = NEW."package_id" AND b."date" = NEW."date" AND {ACTIVE_SQL}
            ) INTO v_capacity, v_taken
            FROM "{packages}" p WHERE p."id" = NEW."package_id";
            IF v_taken >= v_capacity THEN
                {refusal_sql(self.name, "'full'", message)}
            END IF;
            RETURN NEW;
            """  # noqa: S608 - identifiers from model meta, no values
        )


# What operators and API clients edit on a package (edit_package); a change by anyone bumps ``version``.
PACKAGE_EDITABLE = ("name", "price", "currency", "is_active", "daily_capacity")
# The contact fields operators edit (edit_contact), and the status they saw: a form read before a
# payment, a cancel or an expiry committed is stale (version_conflict), never written over it.
BOOKING_EDITABLE = ("customer_name", "customer_email")
BOOKING_VERSIONED = (*BOOKING_EDITABLE, "status")
# What a booking's record shows beside who and what was booked: its state, money and timestamps (read-only
# to operators and API clients alike).
BOOKING_RECORD = (
    "status", "hold_expires_at", "amount", "currency", "created_at", "confirmed_at", "cancelled_at", "refunded_at",
)  # fmt: skip

# The booking machine (docs/bookings.md); the database enforces it (booking_status_transition).
BOOKING_TRANSITIONS = [
    (None, BookingStatus.HELD),  # a place is held (hold)
    (BookingStatus.HELD, BookingStatus.CONFIRMED),  # paid in time (confirm_payment)
    (BookingStatus.HELD, BookingStatus.PAYMENT_PENDING),  # completed, payment delayed (await_payment)
    # completed late and delayed, the place still free (await_payment)
    (BookingStatus.EXPIRED, BookingStatus.PAYMENT_PENDING),
    (BookingStatus.PAYMENT_PENDING, BookingStatus.CONFIRMED),  # the delayed payment succeeded (confirm_payment)
    # it succeeded but may not be placed (confirm_payment)
    (BookingStatus.PAYMENT_PENDING, BookingStatus.REFUND_PENDING),
    # the delayed payment failed: place released (payment_failed)
    (BookingStatus.PAYMENT_PENDING, BookingStatus.EXPIRED),
    (BookingStatus.PAYMENT_PENDING, BookingStatus.CANCELLED),  # cancelled while the payment settles (cancel)
    (BookingStatus.EXPIRED, BookingStatus.CONFIRMED),  # paid late, the place still free (confirm_payment)
    (BookingStatus.HELD, BookingStatus.REFUND_PENDING),  # paid, the place gone (confirm_payment)
    (BookingStatus.EXPIRED, BookingStatus.REFUND_PENDING),  # paid late, the place gone (confirm_payment)
    (BookingStatus.CANCELLED, BookingStatus.REFUND_PENDING),  # paid after the customer cancelled (confirm_payment)
    (BookingStatus.HELD, BookingStatus.EXPIRED),  # released, or past its expiry (release, expire_holds)
    (BookingStatus.HELD, BookingStatus.CANCELLED),  # cancel before payment
    (BookingStatus.CONFIRMED, BookingStatus.REFUND_PENDING),  # cancel after payment
    (BookingStatus.REFUND_PENDING, BookingStatus.REFUNDED),  # the provider refunded (complete_refund)
    # the provider's refund failed after it had succeeded: the money is owed again (reopen_refund)
    (BookingStatus.REFUNDED, BookingStatus.REFUND_PENDING),
]

# The provider checkout's machine (checkout_state_transition).
CHECKOUT_TRANSITIONS = [
    (None, CheckoutState.CREATING),  # recorded before the provider is called (start_checkout)
    (CheckoutState.CREATING, CheckoutState.OPEN),  # the provider answered (open)
    (CheckoutState.CREATING, CheckoutState.FAILED),  # the provider refused (fail)
    (CheckoutState.CREATING, CheckoutState.EXPIRED),  # (mark_expired)
    (CheckoutState.OPEN, CheckoutState.EXPIRED),  # the session expired unpaid (mark_expired)
    # paid: from any unpaid state, so late and out-of-order events still settle (mark_completed)
    (CheckoutState.CREATING, CheckoutState.COMPLETED),
    (CheckoutState.OPEN, CheckoutState.COMPLETED),
    (CheckoutState.EXPIRED, CheckoutState.COMPLETED),
    (CheckoutState.FAILED, CheckoutState.COMPLETED),
    (CheckoutState.PROCESSING, CheckoutState.COMPLETED),  # the delayed payment succeeded
    (CheckoutState.PAYMENT_FAILED, CheckoutState.COMPLETED),  # a success after a failure: money moved, settle it
    # completed with a delayed payment method (mark_processing)
    (CheckoutState.CREATING, CheckoutState.PROCESSING),
    (CheckoutState.OPEN, CheckoutState.PROCESSING),
    (CheckoutState.EXPIRED, CheckoutState.PROCESSING),
    (CheckoutState.FAILED, CheckoutState.PROCESSING),
    # the delayed payment failed (mark_payment_failed), also before its "completed" arrived
    (CheckoutState.PROCESSING, CheckoutState.PAYMENT_FAILED),
    (CheckoutState.CREATING, CheckoutState.PAYMENT_FAILED),
    (CheckoutState.OPEN, CheckoutState.PAYMENT_FAILED),
]

# The refund's machine (checkout_refund_state_transition).
REFUND_TRANSITIONS = [
    (None, CheckoutRefundState.NONE),  # nothing owed yet
    (CheckoutRefundState.NONE, CheckoutRefundState.PENDING),  # a refund is owed and claimed (request_refund)
    (CheckoutRefundState.PENDING, CheckoutRefundState.SUCCEEDED),  # the provider refunded (record_refund)
    # the provider accepted it, to settle later (record_refund: its answer, or its event first)
    (CheckoutRefundState.PENDING, CheckoutRefundState.SUBMITTED),
    (CheckoutRefundState.SUBMITTED, CheckoutRefundState.SUCCEEDED),  # its event: succeeded (record_refund)
    # the provider's refund failed or was canceled (its answer or its event): an operator's, never retried blindly
    (CheckoutRefundState.SUBMITTED, CheckoutRefundState.EXHAUSTED),
    (CheckoutRefundState.SUCCEEDED, CheckoutRefundState.EXHAUSTED),  # failed after it succeeded (record_refund)
    # the provider refused, to retry after a backoff (refund_failed)
    (CheckoutRefundState.PENDING, CheckoutRefundState.FAILED),
    # refused REFUND_MAX_ATTEMPTS times (refund_failed), or the provider's failed (record_refund): an operator's
    (CheckoutRefundState.PENDING, CheckoutRefundState.EXHAUSTED),
    # a refund made after all (its answer was lost, its event or a look-up says so), or by an operator elsewhere
    (CheckoutRefundState.FAILED, CheckoutRefundState.SUCCEEDED),
    (CheckoutRefundState.FAILED, CheckoutRefundState.SUBMITTED),
    (CheckoutRefundState.FAILED, CheckoutRefundState.EXHAUSTED),
    (CheckoutRefundState.EXHAUSTED, CheckoutRefundState.SUCCEEDED),
    (CheckoutRefundState.EXHAUSTED, CheckoutRefundState.SUBMITTED),
    (CheckoutRefundState.FAILED, CheckoutRefundState.PENDING),  # claimed again by a retry (claim_refund_retry)
    # an operator's explicit retry (claim_refund_retry(operator=True))
    (CheckoutRefundState.EXHAUSTED, CheckoutRefundState.PENDING),
]


@tracked()
class Package(GuardedModel):
    """Something a customer books for one date; ``daily_capacity`` bookings fit on a date.

    Capacity, price, currency and ``is_active`` are what checkouts count and charge
    against: they change only through ``Package.objects.edit_package`` (the package
    lock exclusive, which every hold and payment takes shared).
    """

    guarded_fields = ("daily_capacity", "is_active", "currency", "price", "tenant")

    tenant = models.ForeignKey(
        "core.Tenant", on_delete=models.CASCADE, related_name="packages", verbose_name=_("tenant")
    )
    name = models.CharField(_("name"), max_length=200)
    # Three places so KWD, BHD, JOD, OMR and TND fit; the currency's own exponent is checked by the
    # manager (core.money.check_precision), so a USD price never carries a third digit.
    price = models.DecimalField(_("price"), max_digits=13, decimal_places=3)
    currency = models.CharField(_("currency"), max_length=3, default="USD")
    is_active = models.BooleanField(_("active"), default=True)
    daily_capacity = models.PositiveIntegerField(_("daily capacity"), default=1)
    version = models.PositiveIntegerField(_("version"), default=1, editable=False)
    created_at = models.DateTimeField(db_default=Now(), verbose_name=_("created at"))

    objects = PackageManager()

    class Meta:
        ordering = ["tenant", "name", "pk"]
        verbose_name = _("package")
        verbose_name_plural = _("packages")
        constraints = [
            models.CheckConstraint(condition=Q(price__gte=0), name="package_price_not_negative"),
            models.CheckConstraint(condition=Q(daily_capacity__gte=1), name="package_capacity_positive"),
            models.CheckConstraint(condition=Q(currency__regex=r"^[A-Z]{3}$"), name="package_currency_iso"),
        ]
        triggers = [
            BumpVersion(name="package_version", fields=PACKAGE_EDITABLE),
            VersionOnlyIncreases(name="package_version_transition"),
            # whose package it is: its bookings' tenant follows it (booking_of_its_package_transition)
            FrozenColumns(name="package_tenant_transition", fields=("tenant",)),
        ]

    def __str__(self):
        return self.name


@tracked()
class Booking(GuardedModel):
    """One customer's claim on one date of one package.

    Status and everything a payment or the capacity depends on change only through
    the manager's guarded operations; the database refuses any status change outside
    the machine below (``booking_status_transition``), whoever the writer.
    """

    guarded_fields = (
        "status", "hold_expires_at", "confirmed_at", "cancelled_at", "refunded_at", "amount", "currency",
        "exclusive", "package", "date", "tenant", "origin_proposal_id",
    )  # fmt: skip

    Status = BookingStatus

    tenant = models.ForeignKey(
        "core.Tenant", on_delete=models.CASCADE, related_name="bookings", verbose_name=_("tenant")
    )
    package = models.ForeignKey(Package, on_delete=models.PROTECT, related_name="bookings", verbose_name=_("package"))
    date = models.DateField(_("date"))
    customer_name = models.CharField(_("customer name"), max_length=200)
    customer_email = models.EmailField(_("customer e-mail"))
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.HELD)
    hold_expires_at = models.DateTimeField(_("hold expires at"), null=True, blank=True)
    amount = models.DecimalField(_("amount"), max_digits=13, decimal_places=3)
    currency = models.CharField(_("currency"), max_length=3)
    # Copied from the package when the hold is taken: confirmed bookings of a
    # capacity-1 package are unique per date (the constraint below is the backstop).
    exclusive = models.BooleanField(default=False, editable=False, verbose_name=_("exclusive"))
    # The proposal this booking executes, if any (set once at the hold). A plain id, not a
    # foreign key: proposals depend on bookings. check_invariants matches it against
    # Proposal.booking, so a proposal unlinked from a live booking is detected.
    origin_proposal_id = models.BigIntegerField(
        null=True, blank=True, editable=False, db_index=True, verbose_name=_("origin proposal")
    )
    created_at = models.DateTimeField(_("created at"), db_default=Now())
    confirmed_at = models.DateTimeField(_("confirmed at"), null=True, blank=True)
    cancelled_at = models.DateTimeField(_("cancelled at"), null=True, blank=True)
    refunded_at = models.DateTimeField(_("refunded at"), null=True, blank=True)
    version = models.PositiveIntegerField(_("version"), default=1, editable=False)

    objects = BookingManager()

    class Meta:
        ordering = ["-date", "-pk"]
        verbose_name = _("booking")
        verbose_name_plural = _("bookings")
        indexes = [models.Index(fields=["package", "date", "status"], name="booking_package_date_status")]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gte=0), name="booking_amount_not_negative"),
            models.CheckConstraint(
                condition=~Q(status=BookingStatus.HELD) | Q(hold_expires_at__isnull=False),
                name="booking_held_has_expiry",
            ),
            models.CheckConstraint(
                condition=~Q(status=BookingStatus.CONFIRMED) | Q(confirmed_at__isnull=False),
                name="booking_confirmed_has_time",
            ),
            models.CheckConstraint(
                condition=~Q(status=BookingStatus.REFUNDED) | Q(refunded_at__isnull=False),
                name="booking_refunded_has_time",
            ),
            models.UniqueConstraint(
                fields=["package", "date"],
                condition=Q(status=BookingStatus.CONFIRMED, exclusive=True),
                name="booking_one_confirmed_per_exclusive_date",
            ),
            within("status", BookingStatus, name="booking_status_valid"),
        ]
        triggers = [
            StateMachine(name="booking_status_transition", field="status", transitions=BOOKING_TRANSITIONS),
            BumpVersion(name="booking_version", fields=BOOKING_VERSIONED),
            VersionOnlyIncreases(name="booking_version_transition"),
            # the place counted under the date's lock and the money charged: moving them skips both guards; the
            # proposal it was made for (a payment of a booking its proposal no longer links is refunded, never
            # placed: proposals.apps), which no write but the hold's INSERT names
            FrozenColumns(
                name="booking_terms_transition",
                fields=("tenant", "package", "date", "amount", "currency", "origin_proposal_id"),
            ),
            # a lapsed hold pushed later would take its place again, behind every path that judged it lapsed
            NeverLater(name="booking_hold_expiry_transition", field="hold_expires_at"),
            # when it was confirmed, when cancelled: written by that transition, never again (a second "confirm"
            # of a confirmed booking leaves its status as it is, which the machine does not see); named to
            # fire after the machine, so a status move is refused as what it is
            SetOnce(name="booking_times_set_once_transition", fields=("confirmed_at", "cancelled_at")),
            BookingOfItsPackage(name="booking_of_its_package_transition"),
            BookingWithinCapacity(
                name="booking_within_capacity",
                condition=pgtrigger.Q(
                    new__status__in=[BookingStatus.HELD, BookingStatus.PAYMENT_PENDING, BookingStatus.CONFIRMED]
                ),
            ),
        ]

    def __str__(self):
        return f"#{self.pk} {self.package} {self.date} ({self.status})"


@tracked(exclude=["looked_up_at"])  # reconcile's hourly stamp is not a change of the payment: no event
class Checkout(GuardedModel):
    """The payment side of a booking: intent recorded before the provider is called.

    Two machines, each enforced by a trigger: ``state`` (the provider checkout) and
    ``refund_state`` (the refund owed after a cancellation or a payment that could not
    be placed; a refund is ``pending`` from the moment one caller claimed it).
    """

    guarded_fields = (
        "state", "provider_checkout_id", "provider_payment_id", "url", "refund_state", "provider_refund_id",
        "refund_attempts", "refund_error", "amount", "currency", "booking", "next_retry_at", "refund_requested_at",
        "failed_refund_ids", "refund_key_round",
    )  # fmt: skip

    State = CheckoutState
    RefundState = CheckoutRefundState

    booking = models.OneToOneField(
        Booking, on_delete=models.CASCADE, related_name="checkout", verbose_name=_("booking")
    )
    provider = models.CharField(_("provider"), max_length=32)
    state = models.CharField(_("state"), max_length=16, choices=State.choices, default=State.CREATING)
    provider_checkout_id = models.CharField(
        max_length=255, null=True, blank=True, unique=True, verbose_name=_("provider checkout id")
    )
    url = models.URLField(max_length=1000, blank=True, verbose_name=_("pay URL"))
    provider_payment_id = models.CharField(max_length=255, blank=True, verbose_name=_("provider payment id"))
    amount = models.DecimalField(_("amount"), max_digits=13, decimal_places=3)
    currency = models.CharField(_("currency"), max_length=3)
    error = models.CharField(max_length=500, blank=True, verbose_name=_("error"))
    refund_state = models.CharField(
        max_length=16, choices=RefundState.choices, default=RefundState.NONE, blank=True, verbose_name=_("refund state")
    )
    provider_refund_id = models.CharField(max_length=255, blank=True, verbose_name=_("provider refund id"))
    # Every refund of this checkout the provider failed: its late events, and a late answer, are never taken
    # for the refund owed now (match_refund, record_refund), whatever order they arrive in.
    failed_refund_ids = ArrayField(
        models.CharField(max_length=255), default=list, blank=True, verbose_name=_("failed refund ids")
    )
    refund_attempts = models.PositiveIntegerField(default=0, verbose_name=_("refund attempts"))
    # Which idempotency key the next refund request goes under: raised each time the provider answered one
    # with an error, which Stripe keeps under that key and replays to any retry with it (refund_idempotency_key).
    refund_key_round = models.PositiveIntegerField(default=0, verbose_name=_("refund key round"))
    refund_error = models.CharField(max_length=500, blank=True, verbose_name=_("refund error"))
    # When the refund was first claimed: past the provider's idempotency window a retry first asks
    # the provider whether it already refunded (find_refund). When a failed refund is due again
    # (exponential backoff, services.refund_backoff).
    refund_requested_at = models.DateTimeField(null=True, blank=True, verbose_name=_("refund requested at"))
    next_retry_at = models.DateTimeField(null=True, blank=True, verbose_name=_("next retry at"))
    # When reconcile_checkouts last asked the provider how its session ended (None: never). The sweep asks
    # the least recently asked first, so checkouts it cannot settle never keep the others from their turn.
    looked_up_at = models.DateTimeField(null=True, blank=True, editable=False, verbose_name=_("looked up at"))
    created_at = models.DateTimeField(db_default=Now(), verbose_name=_("created at"))
    updated_at = models.DateTimeField(
        db_default=Now(), verbose_name=_("updated at")
    )  # .update() skips auto_now: every guarded write sets it

    objects = CheckoutManager()

    class Meta:
        verbose_name = _("checkout")
        verbose_name_plural = _("checkouts")
        constraints = [
            models.CheckConstraint(condition=Q(amount__gte=0), name="checkout_amount_not_negative"),
            models.CheckConstraint(
                condition=Q(state=CheckoutState.CREATING)
                | Q(state=CheckoutState.FAILED)
                | Q(provider_checkout_id__isnull=False),
                name="checkout_open_has_provider_id",
            ),
            within("state", CheckoutState, name="checkout_state_valid"),
            within("refund_state", CheckoutRefundState, name="checkout_refund_state_valid"),
        ]
        indexes = [
            # a refund's event names the refund, or (its answer not recorded yet) the payment refunded
            models.Index(fields=["provider_refund_id"], condition=~Q(provider_refund_id=""), name="checkout_refund_id"),
            models.Index(
                fields=["provider_payment_id"], condition=~Q(provider_payment_id=""), name="checkout_payment_id"
            ),
            # the refunds under way, few among all checkouts: the retry sweeps and the scrape's count read these
            models.Index(
                fields=["refund_state"],
                condition=Q(refund_state__in=["pending", "failed", "submitted", "exhausted"]),
                name="checkout_refund_under_way",
            ),
        ]
        triggers = [
            StateMachine(name="checkout_state_transition", field="state", transitions=CHECKOUT_TRANSITIONS),
            StateMachine(name="checkout_refund_state_transition", field="refund_state", transitions=REFUND_TRANSITIONS),
            # the money the provider charges and refunds, and whose it is: copied from the booking by the hold
            FrozenColumns(name="checkout_terms_transition", fields=("booking", "provider", "amount", "currency")),
            # the provider's session and payment, once recorded: a refund of another payment, a payment matched to
            # another session, otherwise. Named to fire after the state machines (name order).
            SetOnce(
                name="checkout_written_once_transition",
                fields=("provider_checkout_id", "provider_payment_id"),
                blank_unset=("provider_payment_id",),
            ),
        ]

    def __str__(self):
        return self.provider_checkout_id or f"checkout #{self.pk}"

    @property
    def display_amount(self):
        return money.in_currency(self.amount, self.currency)


class PaymentEvent(models.Model):
    """The inbox: each provider event stored once by its id, processed once."""

    provider = models.CharField(max_length=32, verbose_name=_("provider"))
    event_id = models.CharField(max_length=255, unique=True, verbose_name=_("event id"))
    type = models.CharField(max_length=100, verbose_name=_("type"))
    payload = models.JSONField(verbose_name=_("payload"))
    received_at = models.DateTimeField(verbose_name=_("received at"))
    processed_at = models.DateTimeField(null=True, blank=True, verbose_name=_("processed at"))
    result = models.CharField(max_length=100, blank=True, verbose_name=_("result"))
    booking = models.ForeignKey(
        Booking, null=True, blank=True, on_delete=models.SET_NULL, related_name="events", verbose_name=_("booking")
    )
    deliveries = models.PositiveIntegerField(default=1, verbose_name=_("deliveries"))
    # Set when a signed event does not belong to what it names (another session, another amount or
    # currency, an unknown checkout claiming money): nothing was changed, an operator looks at it.
    needs_review = models.BooleanField(_("needs review"), default=False, db_index=True)
    reviewed_at = models.DateTimeField(_("reviewed at"), null=True, blank=True)
    # who looked at money that was not ours to place: a user who reviewed one is deactivated, never deleted
    # (SET_NULL erased the name, and the event is not in the row history)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("reviewed by"),
    )

    objects = PaymentEventManager()

    class Meta:
        ordering = ["-received_at", "-pk"]
        verbose_name = _("payment event")
        verbose_name_plural = _("payment events")
        triggers = [
            # the inbox's key and what the provider said: an event rewritten would be settled as another
            FrozenColumns(
                name="payment_event_received_transition",
                fields=("provider", "event_id", "type", "payload", "received_at"),
            ),
            # processed once: a processed_at cleared would have the next redelivery settle it again; reviewed once,
            # by whom it was (money that was not ours to place)
            SetOnce(name="payment_event_stamps_set_once_transition", fields=("processed_at", "reviewed_at")),
        ]

    def __str__(self):
        return f"{self.event_id} {self.type}"
