import uuid

import pgtrigger
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Lower, Now, Round
from django.utils.translation import gettext_lazy as _

from core.history import tracked
from core.integrity import (
    BumpVersion,
    FrozenColumns,
    GuardedModel,
    NeverLater,
    Refusal,
    SetOnce,
    StateMachine,
    VersionOnlyIncreases,
    refusal_sql,
    within,
)
from promos.choices import OPEN_STATUSES, SESSION_TRANSITIONS, BonusType, SessionStatus
from promos.managers import PROMO_EDITABLE, PromoCodeManager, PromoUsageManager, RedemptionSessionManager
from promos.money import DEFAULT_CURRENCY, PERCENT_PLACES, STORED_PLACES

# Three places so KWD, BHD, JOD, OMR and TND fit, ten digits before the point as before (bookings'
# DecimalField(13, 3)); the currency's own places are judged by promos.money, so a USD amount never
# carries a third digit nor a JPY one a first.
MONEY = dict(max_digits=13, decimal_places=STORED_PLACES)
ISO_CODE = r"^[A-Z]{3}$"


def currency_field():
    """An ISO 4217 code; USD for rows and clients from before currencies (core.money judges the code)."""
    return models.CharField(_("currency"), max_length=3, default=DEFAULT_CURRENCY)


class UsageWriteOnce(pgtrigger.Trigger):
    """Refuse, in the database, every change to a usage but voiding it once.

    ``voided_at`` goes from NULL to a time exactly once and never back (un-voiding
    would count a use the code already gave back); the promo, customer, tenant and
    amounts never change (they are what the code's counter and the customer's limit
    counted). A usage is also born live: a voided insert would never have been counted, in its
    code's currency (which cannot change once a usage exists: ``PromoCurrencyFrozen``) and in its
    code's shop (another tenant would list and void it, giving a use back to a code not its own).
    Raises SQLSTATE 23514 named ``promo_usage_transition`` (409 invalid_transition).

    And a usage is born only of a code that may be used when it is written, by the database clock then: an
    active code (``promo_usage_of_an_active_code``, 409 promo_inactive), inside its window
    (``promo_usage_after_code_start``, 409 promo_not_started; ``promo_usage_before_code_end``, 409
    promo_expired). The redeem judges the same under the code's row lock, which every writer of those
    columns takes; this is the backstop for a writer past it, and takes that lock to judge (the lock the
    usage's count takes anyway, taken first: a deactivation in flight is waited for, and read as committed;
    a redeem holds it already). The total limit has its own (``promo_times_used_within_limit``); the
    per-customer one is the redeem's alone.
    """

    when = pgtrigger.Before
    operation = pgtrigger.Insert | pgtrigger.Update
    declare = [("code_active", "boolean"), ("code_starts", "timestamptz"), ("code_ends", "timestamptz")]

    def get_func(self, model):
        def refuse(old, new, why):
            return refusal_sql(
                self.name, f"'{old}->{new}'", f"format('%s: usage %s %s', TG_TABLE_NAME, NEW.\"id\", '{why}')"
            )

        def unusable(constraint, why):
            return refusal_sql(
                constraint,
                f"'{why}'",
                f"format('%s: a usage of promo %s, which is {why}', TG_TABLE_NAME, NEW.\"promo_id\")",
            )

        frozen = " OR ".join(
            f'OLD."{column}" IS DISTINCT FROM NEW."{column}"'
            for column in (
                "promo_id",
                "tenant_id",
                "customer",
                "base_amount",
                "bonus_amount",
                "currency",
                "created_at",
            )  # fmt: skip
        )
        codes = model._meta.get_field("promo").related_model._meta.db_table
        return self.format_sql(
            f"""
            IF TG_OP = 'INSERT' THEN
                IF NEW."voided_at" IS NOT NULL THEN {refuse("", "voided", "cannot start voided")} END IF;
                SELECT "is_active", "starts_at", "ends_at" INTO code_active, code_starts, code_ends FROM "{codes}"
                WHERE "id" = NEW."promo_id" AND "currency" = NEW."currency" AND "tenant_id" = NEW."tenant_id"
                FOR NO KEY UPDATE;
                IF NOT FOUND THEN {refuse("", "usage", "is not in the currency and shop of its code")} END IF;
                IF NOT code_active THEN {unusable("promo_usage_of_an_active_code", "inactive")} END IF;
                IF code_starts > clock_timestamp() THEN
                    {unusable("promo_usage_after_code_start", "not started")}
                END IF;
                IF code_ends <= clock_timestamp() THEN {unusable("promo_usage_before_code_end", "ended")} END IF;
                RETURN NEW;
            END IF;
            IF OLD."voided_at" IS NOT NULL AND NEW."voided_at" IS NULL THEN
                {refuse("voided", "live", "cannot be un-voided")}
            ELSIF OLD."voided_at" IS DISTINCT FROM NEW."voided_at" AND OLD."voided_at" IS NOT NULL THEN
                {refuse("voided", "voided", "was voided already")}
            ELSIF {frozen} THEN
                {refuse("usage", "altered usage", "cannot change what it counted")}
            END IF;
            RETURN NEW;
            """  # noqa: S608 - identifiers from model meta, no values
        )


class PromoCurrencyFrozen(pgtrigger.Trigger):
    """Refuse, in the database, a change of a code's currency once it has been used.

    Its usages' amounts are in that currency: a new currency would re-denominate them (and the
    counter and limits that counted them). Refused when ``times_used > 0`` or any usage, voided
    or live, exists. The manager refuses first, under the row lock (``update_code``); this is the
    backstop for every other writer. Raises SQLSTATE 23514 named ``promo_currency_frozen``
    (409 promo_currency_frozen).
    """

    when = pgtrigger.Before
    operation = pgtrigger.Update
    condition = pgtrigger.Condition('OLD."currency" IS DISTINCT FROM NEW."currency"')

    def get_func(self, model):
        usages = model._meta.get_field("usages").related_model._meta.db_table
        refusal = refusal_sql(
            self.name,
            "'currency->currency'",
            'format(\'%s: promo %s has been used in %s\', TG_TABLE_NAME, OLD."id", OLD."currency")',
        )
        return self.format_sql(
            f"""
            IF OLD."times_used" > 0 OR EXISTS (SELECT 1 FROM "{usages}" WHERE "promo_id" = OLD."id") THEN
                {refusal}
            END IF;
            RETURN NEW;
            """  # noqa: S608 - identifiers from model meta, no values
        )


class UsagesCountThemselves(pgtrigger.Trigger):
    """Keep each code's ``times_used`` at the count of its live usages, in the database: +1 for a usage
    born (live, as ``UsageWriteOnce`` requires), -1 for one voided, or deleted while live.

    The counter is what the total limit is judged on (``promo_times_used_within_limit``, and the redeem
    under the code's row lock): a counter that anything but its usages could move would reopen a used-up
    code, or close an open one, without a trace in the usages. The usage's own statement moves it, in
    its transaction, taking the code's row lock after the usage's (the lock order of a void; a redeem
    already holds the code's). ``promo_times_used_transition`` refuses every other writer of the column.
    """

    when = pgtrigger.After
    operation = pgtrigger.Insert | pgtrigger.Update | pgtrigger.Delete
    declare = [("step", "integer"), ("counted_code", "bigint")]

    def get_func(self, model):
        codes = model._meta.get_field("promo").related_model._meta.db_table
        return self.format_sql(
            f"""
            IF TG_OP = 'INSERT' THEN
                step := CASE WHEN NEW."voided_at" IS NULL THEN 1 ELSE 0 END; counted_code := NEW."promo_id";
            ELSIF TG_OP = 'DELETE' THEN
                step := CASE WHEN OLD."voided_at" IS NULL THEN -1 ELSE 0 END; counted_code := OLD."promo_id";
            ELSE
                step := (NEW."voided_at" IS NULL)::integer - (OLD."voided_at" IS NULL)::integer;
                counted_code := NEW."promo_id";
            END IF;
            IF step <> 0 THEN
                UPDATE "{codes}" SET "times_used" = "times_used" + step, "updated_at" = statement_timestamp()
                WHERE "id" = counted_code;
            END IF;
            RETURN NULL;
            """  # noqa: S608 - identifiers from model meta, no values
        )


class CountedByUsagesOnly(Refusal):
    """Refuse, in the database, a change of a code's ``times_used`` by anything but its usages' own
    writes (``UsagesCountThemselves``, which runs one trigger level down: ``pg_trigger_depth()``
    is 1 when its UPDATE is judged, 0 for a statement a client sent). A raw ``times_used = 0``
    would reopen a used-up code; a stale full-row save would rewind it. 409 invalid_transition.
    """

    operation = pgtrigger.Update
    condition = pgtrigger.Condition('OLD."times_used" IS DISTINCT FROM NEW."times_used" AND pg_trigger_depth() = 0')
    detail_sql = "'counted->altered'"
    message_sql = (
        "format('%s: times_used of code %s is counted by its usages, not written (%s to %s)', "
        'TG_TABLE_NAME, OLD."id", OLD."times_used", NEW."times_used")'
    )


class BornUnused(Refusal):
    """Refuse, in the database, a code created with uses: only its usages count them."""

    operation = pgtrigger.Insert
    condition = pgtrigger.Condition('NEW."times_used" <> 0')
    detail_sql = "'->counted'"
    message_sql = "format('%s: a code is created unused, not with %s uses', TG_TABLE_NAME, NEW.\"times_used\")"


@tracked()
class PromoCode(GuardedModel):
    """A shop's promo code. ``times_used`` always equals the count of its non-voided usages.

    Guarded columns change only through ``PromoCode.objects`` (``times_used`` moves with its usages,
    in the database: ``UsagesCountThemselves``; ``set_active``, ``update_code`` the rest, under the row lock); a plain
    ``save()`` of an existing row that would write one raises GuardedWriteError. ``version``
    moves whenever a definition field or ``is_active`` changes, whoever the writer (not on
    redeems: a redeem must not make an operator's open form stale).
    """

    guarded_fields = (
        *PROMO_EDITABLE,
        "times_used",
        "tenant",
        "tenant_id",
        "version",
    )

    BonusType = BonusType

    tenant = models.ForeignKey(
        "core.Tenant", on_delete=models.CASCADE, related_name="promo_codes", verbose_name=_("tenant")
    )
    code = models.CharField(_("code"), max_length=64)
    bonus_type = models.CharField(_("bonus type"), max_length=16, choices=BonusType.choices)
    currency = currency_field()
    # An amount in ``currency`` for a fixed bonus; a rate (at most 100, two places) for a percentage.
    bonus_value = models.DecimalField(_("bonus value"), **MONEY)
    max_bonus = models.DecimalField(_("maximum bonus"), null=True, blank=True, **MONEY)
    starts_at = models.DateTimeField(_("starts at"), null=True, blank=True)
    ends_at = models.DateTimeField(_("ends at"), null=True, blank=True)
    total_usage_limit = models.PositiveIntegerField(_("total usage limit"), null=True, blank=True)
    per_customer_limit = models.PositiveIntegerField(_("per-customer limit"), null=True, blank=True)
    times_used = models.PositiveIntegerField(_("times used"), default=0, editable=False)
    is_active = models.BooleanField(_("active"), default=True)
    version = models.PositiveIntegerField(_("version"), default=1, editable=False)
    created_at = models.DateTimeField(_("created at"), db_default=Now(), editable=False)
    updated_at = models.DateTimeField(_("updated at"), db_default=Now(), editable=False)

    objects = PromoCodeManager()

    class Meta:
        ordering = ["tenant", "code"]
        verbose_name = _("promo code")
        verbose_name_plural = _("promo codes")
        constraints = [
            models.UniqueConstraint(Lower("code"), "tenant", name="promo_code_unique_ci_per_tenant"),
            models.CheckConstraint(condition=Q(times_used__gte=0), name="promo_times_used_not_negative"),
            models.CheckConstraint(
                condition=Q(total_usage_limit__isnull=True) | Q(times_used__lte=F("total_usage_limit")),
                name="promo_times_used_within_limit",
            ),
            models.CheckConstraint(condition=Q(bonus_value__gt=0), name="promo_bonus_value_positive"),
            models.CheckConstraint(
                condition=Q(max_bonus__isnull=True) | Q(max_bonus__gt=0), name="promo_max_bonus_positive"
            ),
            models.CheckConstraint(
                condition=~Q(bonus_type="percentage") | Q(bonus_value__lte=100), name="promo_percentage_at_most_100"
            ),
            models.CheckConstraint(
                condition=~Q(bonus_type="percentage") | Q(bonus_value=Round("bonus_value", PERCENT_PLACES)),
                name="promo_percentage_places",
            ),
            models.CheckConstraint(condition=Q(bonus_type__in=["fixed", "percentage"]), name="promo_bonus_type_known"),
            models.CheckConstraint(condition=Q(currency__regex=ISO_CODE), name="promo_currency_iso"),
            models.CheckConstraint(
                condition=Q(starts_at__isnull=True) | Q(ends_at__isnull=True) | Q(ends_at__gt=F("starts_at")),
                name="promo_ends_after_start",
            ),
            models.CheckConstraint(
                condition=Q(total_usage_limit__isnull=True) | Q(total_usage_limit__gt=0),
                name="promo_total_limit_positive",
            ),
            models.CheckConstraint(
                condition=Q(per_customer_limit__isnull=True) | Q(per_customer_limit__gt=0),
                name="promo_customer_limit_positive",
            ),
            models.CheckConstraint(condition=~Q(code=""), name="promo_code_not_blank"),
        ]
        triggers = [
            BumpVersion(name="promo_code_version", fields=PROMO_EDITABLE),
            VersionOnlyIncreases(name="promo_code_version_transition"),
            PromoCurrencyFrozen(name="promo_currency_frozen"),
            # A code never moves to another shop: its usages, counter and limits were counted in this one.
            FrozenColumns(name="promo_code_tenant_transition", fields=("tenant",)),
            CountedByUsagesOnly(name="promo_times_used_transition"),
            BornUnused(name="promo_born_unused_transition"),
        ]

    def __str__(self):
        return self.code

    @property
    def usage_display(self):
        limit = "∞" if self.total_usage_limit is None else self.total_usage_limit
        return f"{self.times_used} / {limit}"


@tracked()
class PromoUsage(GuardedModel):
    """One reserved use of a promo code; voiding it gives the use back (once).

    Written only by ``redeem`` (insert) and ``void`` (``voided_at``, once); the database
    refuses anything else (``UsageWriteOnce``).
    """

    guarded_fields = (
        "voided_at",
        "promo",
        "promo_id",
        "tenant",
        "tenant_id",
        "customer",
        "base_amount",
        "bonus_amount",
        "currency",
    )

    tenant = models.ForeignKey(
        "core.Tenant", on_delete=models.CASCADE, related_name="promo_usages", verbose_name=_("tenant")
    )
    promo = models.ForeignKey(PromoCode, on_delete=models.PROTECT, related_name="usages", verbose_name=_("promo code"))
    customer = models.CharField(_("customer"), max_length=255)
    base_amount = models.DecimalField(_("base amount"), **MONEY)
    bonus_amount = models.DecimalField(_("bonus amount"), **MONEY)
    currency = currency_field()  # its code's, copied by redeem; the database checks and freezes it
    reference = models.CharField(_("reference"), max_length=255, blank=True, default="")
    created_at = models.DateTimeField(_("created at"), db_default=Now(), editable=False)
    voided_at = models.DateTimeField(_("voided at"), null=True, blank=True, editable=False)

    objects = PromoUsageManager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("promo usage")
        verbose_name_plural = _("promo usages")
        indexes = [
            models.Index(
                fields=["promo", "customer"], condition=Q(voided_at__isnull=True), name="promo_usage_live_by_customer"
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(base_amount__gt=0), name="promo_usage_base_positive"),
            models.CheckConstraint(condition=Q(currency__regex=ISO_CODE), name="promo_usage_currency_iso"),
            models.CheckConstraint(
                condition=Q(bonus_amount__gte=0) & Q(bonus_amount__lte=F("base_amount")),
                name="promo_usage_bonus_within_amount",
            ),
        ]
        triggers = [UsageWriteOnce(name="promo_usage_transition"), UsagesCountThemselves(name="promo_usage_counted")]

    def __str__(self):
        return f"{self.promo_id}:{self.customer}#{self.pk}"


# What a usage's record shows beside its code: who, how much, for what and when (read-only everywhere).
USAGE_RECORD = ("customer", "base_amount", "bonus_amount", "currency", "reference", "created_at", "voided_at")

# What a session's record shows its shop: who, how much, where it stands and when (read-only to
# operators and API clients alike).
SESSION_RECORD = (
    "customer", "max_amount", "currency", "status", "created_at", "expires_at", "approved_at", "used_at", "used_amount",
)  # fmt: skip


# What a session was made for: never changed after creation, by any writer (FrozenColumns).
SESSION_TERMS = ("tenant", "session_id", "customer", "max_amount", "currency", "secret_hash", "created_at")
# A session's stamps: each written by the one transition that sets it, never changed after.
SESSION_STAMPS = ("used_at", "used_amount", "approved_at", "rejected_at", "cancelled_at")


@tracked(exclude=["secret_hash"])
class RedemptionSession(GuardedModel):
    """A customer-approved allowance a shop may consume exactly once before ``expires_at``.

    Status, stamps, amounts, expiry and the secret change only through
    ``RedemptionSession.objects``; the database refuses any status change outside
    ``SESSION_TRANSITIONS``, any new session not ``pending`` and any change of ``SESSION_TERMS``
    (``redemption_session_terms_transition``: 409 invalid_transition).
    """

    guarded_fields = (
        "status",
        "used_at",
        "used_amount",
        "approved_at",
        "rejected_at",
        "cancelled_at",
        "expires_at",
        "max_amount",
        "currency",
        "secret_hash",
        "tenant",
        "tenant_id",
        "customer",
    )

    Status = SessionStatus

    session_id = models.UUIDField(_("session id"), default=uuid.uuid4, unique=True, editable=False)
    tenant = models.ForeignKey(
        "core.Tenant", on_delete=models.CASCADE, related_name="redemption_sessions", verbose_name=_("tenant")
    )
    customer = models.CharField(_("customer"), max_length=255)
    max_amount = models.DecimalField(_("maximum amount"), **MONEY)
    currency = currency_field()
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.PENDING)
    secret_hash = models.CharField(
        max_length=64, editable=False, verbose_name=_("secret hash")
    )  # sha256 hex of the approval secret
    created_at = models.DateTimeField(_("created at"), db_default=Now(), editable=False)
    expires_at = models.DateTimeField(_("expires at"))
    approved_at = models.DateTimeField(_("approved at"), null=True, blank=True)
    rejected_at = models.DateTimeField(_("rejected at"), null=True, blank=True)
    cancelled_at = models.DateTimeField(_("cancelled at"), null=True, blank=True)
    used_at = models.DateTimeField(_("used at"), null=True, blank=True)
    used_amount = models.DecimalField(_("used amount"), null=True, blank=True, **MONEY)

    objects = RedemptionSessionManager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("redemption session")
        verbose_name_plural = _("redemption sessions")
        indexes = [
            models.Index(fields=["expires_at"], condition=Q(status__in=OPEN_STATUSES), name="redemption_live_expiry"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(max_amount__gt=0), name="redemption_max_amount_positive"),
            models.CheckConstraint(condition=Q(currency__regex=ISO_CODE), name="redemption_currency_iso"),
            within("status", SessionStatus, name="redemption_status_known"),
            models.CheckConstraint(
                condition=(
                    # used_amount IS NOT NULL spelled out: with a NULL amount the comparisons are NULL,
                    # and a CHECK that evaluates to NULL passes (a used session with no amount).
                    Q(
                        status=SessionStatus.USED,
                        used_at__isnull=False,
                        used_amount__isnull=False,
                        used_amount__gt=0,
                        used_amount__lte=F("max_amount"),
                    )
                    | (~Q(status=SessionStatus.USED) & Q(used_at__isnull=True, used_amount__isnull=True))
                ),
                name="redemption_used_iff_used_at",
            ),
            models.CheckConstraint(
                condition=Q(used_at__isnull=True) | Q(used_at__lt=F("expires_at")),
                name="redemption_used_before_expiry",
            ),
            # the consent was given before the session lapsed (the answer judges expires_at above its lock and
            # stamps that clock): an approval written after expiry would read as a consent given in time
            models.CheckConstraint(
                condition=Q(approved_at__isnull=True) | Q(approved_at__lt=F("expires_at")),
                name="redemption_approved_before_expiry",
            ),
        ]
        triggers = [
            StateMachine(name="redemption_session_status_transition", field="status", transitions=SESSION_TRANSITIONS),
            # What the customer approved and who may use it: a raise of the limit, another currency,
            # tenant or customer, or a new secret after approval would use a consent never given.
            FrozenColumns(name="redemption_session_terms_transition", fields=SESSION_TERMS),
            # What happened, once: a used session's amount and time (a second consume would rewrite them with
            # the status left "used", which the state machine does not see), each decision's time. Named to
            # fire after the status machine (PostgreSQL runs a table's triggers in name order): a raw "un-use"
            # clears the stamps too, and is refused as the status move it is.
            SetOnce(name="redemption_session_used_stamps_transition", fields=SESSION_STAMPS),
            # a consent given until a time: pushed back, a lapsed one would be consumed (brought forward: expired)
            NeverLater(name="redemption_session_expiry_transition", field="expires_at"),
        ]

    def __str__(self):
        return str(self.session_id)
