"""Every guarded operation of the promos app (STYLE.md tier 1).

The guard contract (core/guards.py): every method that writes is ``@guarded``: it
opens its own ``transaction.atomic(using=self.db)`` and database refusals (lock
timeout, NOWAIT, a registered constraint, a state-machine trigger) are translated
into domain errors outside it.

Time is always the database's. Django's ``Now()`` is ``STATEMENT_TIMESTAMP()``
on PostgreSQL: fixed when a statement starts, before it waits for any row lock.
The guarded checks use ``ClockNow()`` (``clock_timestamp()``) instead, so a
statement that waited for a lock judges expiry at the moment it actually acts
(the WHERE is re-evaluated on the row version it finally locks).
"""

import hashlib
import hmac
import secrets
import uuid
from datetime import timedelta
from decimal import Decimal

from django.apps import apps
from django.conf import settings
from django.db import connections, models
from django.db.models import Count, F, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce, Lower, Now

from core import money, rows
from core.db import after_local_lock_timeout, set_local_lock_timeout, update_skipping_locked
from core.decide import NOW, Decision, verdict_sql
from core.exceptions import VersionConflict
from core.guards import ClockNow, constraint_errors, guarded, sweep
from core.managers import TenantScopedQuerySet, effective_status
from core.prepared import Prepared
from promos import exceptions as errors
from promos.choices import OPEN_STATUSES
from promos.money import (
    DEFAULT_CURRENCY,
    compute_bonus,
    currencies_coarser_than,
    maximum,
    parse_amount,
    places_needed,
    require_places,
    written_maximum,
)

# Redeem waits this long for the code's row lock, then answers resource_locked.
# Measured against NOWAIT in docs/promos.md: waiting a little serialises a storm
# (every attempt gets a definite answer); NOWAIT refuses most of it.
REDEEM_LOCK_TIMEOUT_MS = getattr(settings, "PROMO_REDEEM_LOCK_TIMEOUT_MS", 1000)
DEFAULT_SESSION_TTL = timedelta(minutes=15)
MAX_SESSION_TTL = timedelta(days=7)

# A code's terms: what it gives, when and how often.
PROMO_TERMS = (
    "code",
    "currency",
    "bonus_type",
    "bonus_value",
    "max_bonus",
    "starts_at",
    "ends_at",
    "total_usage_limit",
    "per_customer_limit",
)
# The columns an operator or API client edits (``update_code``); a change of any bumps ``version``.
PROMO_EDITABLE = (*PROMO_TERMS, "is_active")


def _model(name):
    return apps.get_model("promos", name)


def hash_secret(secret):
    return hashlib.sha256(str(secret).encode()).hexdigest()


def _require_amount(amount, *, currency):
    """``amount`` parsed (promos.money.parse_amount); InvalidAmount, or TooManyDecimals for the currency's places.

    ``currency=None``: the currency is the row's, not known yet; judged again once it is.
    """
    try:
        return parse_amount(amount, currency=currency)
    except ValueError:
        raise errors.InvalidAmount(maximum=written_maximum(currency))


def _require_currency(code, *, new=False):
    """``code`` when it is a known ISO 4217 currency (or None: not given), a payable one for ``new`` terms (a
    session's); else UnknownCurrency."""
    if code is not None:
        (money.payable if new else money.currency)(code)
    return code


def _refuse_other_currency(given, actual):
    """CurrencyMismatch when the caller named a currency (``given``) other than the row's."""
    if given is not None and given != actual:
        raise errors.CurrencyMismatch(currency=given, expected=actual)


def _check_terms(terms, *, new=True):
    """Refuse a code's terms (new or kept, together) that its currency cannot express.

    UnknownCurrency for a code outside ISO 4217; TooManyDecimals for a fixed bonus or a
    ``max_bonus`` finer than the currency's minor unit; InvalidAmount for one above the largest
    amount a redeem in that currency may name (``promos.money.maximum``), where the API's input
    field, not knowing the currency yet, allows any currency's and the admin's form more. A
    percentage's own places (two) are the database's to judge (``promo_percentage_places``: PromoInvalid).
    """
    currency = terms.get("currency", DEFAULT_CURRENCY)
    (money.payable if new else money.currency)(currency)  # a kept currency may be one since withdrawn
    amounts = [terms.get("max_bonus"), terms.get("bonus_value") if terms.get("bonus_type") == "fixed" else None]
    for amount in [amount for amount in amounts if amount is not None]:
        if require_places(amount, currency) > maximum(currency):
            raise errors.InvalidAmount(maximum=written_maximum(currency))


# What each named constraint means when the database refuses a write (core.guards.database_refusals).
constraint_errors(
    {
        "promo_code_unique_ci_per_tenant": errors.PromoCodeTaken,
        "promo_times_used_within_limit": errors.PromoLimitBelowUsage,
        # A void would take the counter below zero: it was already out of step with the usages.
        "promo_times_used_not_negative": errors.PromoCounterOutOfStep,
        # A usage written past the redeem's judgment of its code (UsageWriteOnce), by the clock of its insert.
        "promo_usage_of_an_active_code": errors.PromoInactive,
        "promo_usage_after_code_start": errors.PromoNotStarted,
        "promo_usage_before_code_end": errors.PromoExpired,
        # A definition the database refuses: 400, never 500.
        **dict.fromkeys(
            [
                "promo_bonus_value_positive",
                "promo_max_bonus_positive",
                "promo_percentage_at_most_100",
                "promo_bonus_type_known",
                "promo_ends_after_start",
                "promo_total_limit_positive",
                "promo_customer_limit_positive",
                "promo_code_not_blank",
                "promo_percentage_places",
                "promo_currency_iso",
            ],
            errors.PromoInvalid,
        ),
        # clock_timestamp() is read once for consume's WHERE and again for its SET: when expiry falls
        # between the two reads, the CHECK used_at < expires_at refuses the write. It was too late.
        "redemption_used_before_expiry": errors.SessionExpired,
        "redemption_approved_before_expiry": errors.SessionExpired,
        # A currency change of a code that has been used (update_code refuses it first).
        "promo_currency_frozen": errors.PromoCurrencyFrozen,
    }
)


# --- promo codes -------------------------------------------------------------


def usable_at(now):
    """A code may be used at ``now``: active, inside its window, not exhausted (``live()``, ``redeem``)."""
    return (
        Q(is_active=True)
        & (Q(starts_at__isnull=True) | Q(starts_at__lte=now))
        & (Q(ends_at__isnull=True) | Q(ends_at__gt=now))
        & (Q(total_usage_limit__isnull=True) | Q(times_used__lt=F("total_usage_limit")))
    )


class PromoCodeQuerySet(TenantScopedQuerySet):
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
        return self.filter(usable_at(ClockNow()))

    def inactive(self):
        return self.filter(is_active=False)

    def expired(self):
        return self.filter(ends_at__lte=ClockNow())

    def not_started(self):
        return self.filter(starts_at__gt=ClockNow())

    def exhausted(self):
        return self.filter(total_usage_limit__isnull=False, times_used__gte=F("total_usage_limit"))


# redeem's deciding statement (``PromoCodeManager.redemption``); names come from the models' meta.
REDEMPTION = """\
WITH promo AS ({promo}), \
used AS (INSERT INTO {usage} ({columns}) SELECT promo."tenant_id", promo."id", promo."currency", {values} \
FROM promo WHERE promo.lockstep_won RETURNING {returning}) \
SELECT {promo_columns}, promo.checked_at, promo.customer_uses, promo."times_used" + 1 AS counted_times_used, \
STATEMENT_TIMESTAMP() AS counted_updated_at, {used_columns} FROM promo LEFT JOIN used ON true"""


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

    def validate(self, code, *, tenant, customer, amount, currency=None):
        """Preview a redeem: one plain read, no lock, no write.

        Returns ``(promo, bonus)``; raises exactly what ``redeem`` would raise at
        this instant (PromoNotFound, PromoInactive, PromoNotStarted, PromoExpired,
        PromoExhausted, PromoCustomerLimit, InvalidAmount, UnknownCurrency,
        CurrencyMismatch, TooManyDecimals). Nothing is reserved: a later redeem
        re-validates under the row lock.
        """
        amount = _require_amount(amount, currency=_require_currency(currency))
        promo = self._with_checks(self.by_code(code, tenant=tenant), customer).first()
        if promo is None:
            raise errors.PromoNotFound()
        _refuse_other_currency(currency, promo.currency)
        amount = _require_amount(amount, currency=promo.currency)
        refusal = self._refusal(promo, now=promo.checked_at, customer_uses=promo.customer_uses)
        if refusal is not None:
            raise refusal
        return promo, self._bonus(promo, amount)

    @staticmethod
    def _bonus(promo, amount):
        return compute_bonus(
            bonus_type=promo.bonus_type,
            bonus_value=promo.bonus_value,
            amount=amount,
            currency=promo.currency,
            max_bonus=promo.max_bonus,
        )

    @guarded
    def redeem(self, code, *, tenant, customer, amount, reference=None, currency=None, nowait=False):
        """Reserve one use of ``code`` for ``customer`` and return the new PromoUsage.

        Locks: the code row FOR NO KEY UPDATE OF self (after SET LOCAL lock_timeout; NOWAIT
        with ``nowait=True``); the usage row is new.

        One transaction: SET LOCAL lock_timeout (REDEEM_LOCK_TIMEOUT_MS) and, in the same
        round trip, lock the code row ``FOR NO KEY UPDATE`` (``nowait=True`` refuses at once
        instead) and read it with the database clock once the lock is held (``lock_by_code``). A code
        inactive, outside its window or used up is refused there: the row cannot change while locked,
        so that refusal is final, and ROLLBACK follows. Otherwise ONE statement (``redemption``), issued
        after the lock is held so that its snapshot sees every usage committed while we waited, reads
        the database clock and this customer's live usage count, judges the code on them and,
        if it may be used, inserts the usage, which counts itself on the code (``times_used + 1``, a
        trigger: ``UsagesCountThemselves``). The row
        comes back either way and names a refusal. Two round trips (BEGIN goes with the first),
        then COMMIT; one, then ROLLBACK, for a code the locked row refuses.

        The usage is in the code's currency (copied from the locked row by the statement). A
        ``currency`` the caller names must be the code's, and the amount must have no more places
        than it: both judged on the row the lock read, before anything is written.

        Raises PromoNotFound, PromoInactive, PromoNotStarted, PromoExpired,
        PromoExhausted, PromoCustomerLimit, InvalidAmount, UnknownCurrency,
        CurrencyMismatch, TooManyDecimals, LockContended (resource_locked) when the
        row stays busy.
        """
        amount = _require_amount(amount, currency=_require_currency(currency))
        customer = str(customer)
        timeout = None if nowait else REDEEM_LOCK_TIMEOUT_MS  # NOWAIT needs none
        locked = self.locking.fetch_one(
            self, code=str(code).strip(), tenant=tenant, nowait=nowait, lock_timeout_ms=timeout
        )
        if locked is None:
            raise errors.PromoNotFound()
        connection, width = connections[self.db], len(self.model._meta.concrete_fields)
        promo = rows.load(self.model, locked[:width], connection, self.db)
        _refuse_other_currency(currency, promo.currency)
        amount = _require_amount(amount, currency=promo.currency)
        # Judged on the row as the lock read it, at the clock read once the lock was held: a refusal that no
        # usage of this customer's bears on (inactive, outside its window, used up) is final, since every
        # writer of those columns takes this lock; it needs no second statement, and the lock is let go sooner.
        refusal = self._refusal(promo, now=locked[width], customer_uses=0)
        if refusal is not None:
            raise refusal
        # The bonus terms cannot change while the row is locked (every writer takes the lock).
        # The statement is prepared: no query is built or compiled while the lock is held.
        bonus = self._bonus(promo, amount)
        row = self.redeeming.fetch_one(
            self, promo_id=promo.pk, customer=customer, amount=amount, bonus=bonus, reference=reference or ""
        )
        promo = rows.load(self.model, row[:width], connection, self.db)
        promo.checked_at, promo.customer_uses, *counted = row[width : width + 4]
        if row[width + 4] is None:  # no usage inserted: the returned row says why
            refusal = self._refusal(promo, now=promo.checked_at, customer_uses=promo.customer_uses)
            # None: the window closed between the statement's two clock reads.
            raise refusal or errors.PromoExpired()
        usage = rows.load(_model("PromoUsage"), row[width + 4 :], connection, self.db)
        promo.times_used, promo.updated_at = counted  # the code as the use left it, counted
        usage.promo = promo
        return usage

    def redemption(self, promo_id, *, customer, amount, bonus, reference):
        """The statement that judges the locked code and records the use if it may be used.

        ``WITH promo AS (<the code, clock_timestamp(), the customer's live uses, the verdict>),
        used AS (INSERT usage … SELECT …, promo.currency, … FROM promo WHERE verdict RETURNING …)
        SELECT promo.*, promo.times_used + 1, STATEMENT_TIMESTAMP(), used.* FROM promo LEFT JOIN used``:
        SQL and parameters (bench/ sends the same). ``promo`` is the code as judged, before the use is
        counted; the usage's insert counts it (its trigger, at the statement's end, on the row this
        transaction holds locked: the count is the judged one plus one, stamped at the statement's time).
        """
        connection = connections[self.db]
        quote = connection.ops.quote_name
        Usage = _model("PromoUsage")
        usage_field = Usage._meta.get_field
        promo_sql, promo_params = verdict_sql(
            self._with_checks(self.filter(pk=promo_id), customer),
            usable_at(F("checked_at"))
            & (Q(per_customer_limit__isnull=True) | Q(per_customer_limit__gt=F("customer_uses"))),
        )
        written = {"customer": customer, "base_amount": amount, "bonus_amount": bonus, "reference": reference}
        statement = REDEMPTION.format(
            promo=promo_sql,
            usage=quote(Usage._meta.db_table),
            columns=", ".join(quote(usage_field(name).column) for name in ["tenant", "promo", "currency", *written]),
            values=", ".join(["%s"] * len(written)),
            returning=rows.columns(Usage, quote(Usage._meta.db_table), quote),
            promo_columns=rows.columns(self.model, "promo", quote),
            used_columns=rows.columns(Usage, "used", quote),
        )
        values = [usage_field(name).get_db_prep_save(value, connection) for name, value in written.items()]
        return statement, [*promo_params, *values]

    redeeming = Prepared(redemption, promo_id=int, customer=str, amount=Decimal, bonus=Decimal, reference=str)

    def lock_by_code(self, *, code, tenant, nowait, lock_timeout_ms=None):
        """The code row's lock, by code, and the database clock once it is held: SQL and parameters (a
        locking query compiles only in a transaction).

        ``SELECT locked.<the code's columns>, clock_timestamp() FROM (<the locking SELECT>) locked``: the
        clock is read above the lock, so after any wait for it. With ``lock_timeout_ms``, preceded by that
        lock timeout in the same round trip.
        """
        quote = connections[self.db].ops.quote_name
        locking = self.by_code(code, tenant=tenant).locked(nowait=nowait)[:1]
        locking_sql, params = locking.query.get_compiler(self.db).as_sql()
        columns = rows.columns(self.model, "locked", quote)
        statement = f"SELECT {columns}, clock_timestamp() FROM ({locking_sql}) locked", params  # noqa: S608 - compiled SQL, column names
        return statement if lock_timeout_ms is None else after_local_lock_timeout(statement, lock_timeout_ms)

    locking = Prepared(lock_by_code, code=str, tenant=int)

    def _lock_for_edit(self, promo_id, *, tenant):
        """Lock the code row as a redeem does (FOR NO KEY UPDATE OF self, redeem's lock timeout); return it."""
        set_local_lock_timeout(REDEEM_LOCK_TIMEOUT_MS, using=self.db)
        promo = self.for_tenant(tenant).locked().filter(pk=promo_id).first()
        if promo is None:
            raise errors.PromoNotFound()
        return promo

    def _write(self, promo, changes):
        """Write only ``changes`` to the locked ``promo`` with one UPDATE; return the row as stored.

        ``.update()``, not ``save(update_fields=...)``: nothing read earlier is written back,
        and the database (CHECKs, the version trigger) sees exactly the columns edited.
        """
        if changes:
            self.filter(pk=promo.pk).update(**changes, updated_at=Now())
            promo = self.get(pk=promo.pk)
        return promo

    @guarded
    def set_active(self, promo_id, *, tenant, active, version=None, shown_active=None):
        """Activate or deactivate a code; return it.

        Locks: the code row FOR NO KEY UPDATE OF self (after SET LOCAL lock_timeout).

        Takes the row lock (FOR NO KEY UPDATE, waiting at most the redeem lock
        timeout), so it commits after every reserve already holding the lock and
        before any reserve still waiting: every reserve not committed when the
        deactivation commits sees ``is_active = false`` and is refused
        PromoInactive. What an admin confirmation page showed is checked on the locked
        row, VersionConflict if it changed: for an activation, the ``version`` (a code
        deactivated, or re-activated and taken off again, or whose terms changed since, is
        never put in customers' hands unseen); for a deactivation, only ``shown_active``
        (a leaked code is taken off however its dates were changed meanwhile). Raises
        PromoNotFound, VersionConflict, LockContended.
        """
        promo = self._lock_for_edit(promo_id, tenant=tenant)
        if (version is not None and version != promo.version) or (
            shown_active is not None and shown_active != promo.is_active
        ):
            raise VersionConflict(current=promo.version)
        return self._write(promo, {"is_active": active} if promo.is_active != active else {})

    @guarded
    def deactivate(self, promo_id, *, tenant):
        """Deactivate a code under its row lock (see ``set_active``).

        Locks: the code row FOR NO KEY UPDATE OF self (after SET LOCAL lock_timeout).
        """
        promo = self._lock_for_edit(promo_id, tenant=tenant)
        return self._write(promo, {"is_active": False} if promo.is_active else {})

    @guarded
    def activate(self, promo_id, *, tenant):
        """Reactivate a code under its row lock (see ``set_active``).

        Locks: the code row FOR NO KEY UPDATE OF self (after SET LOCAL lock_timeout).
        """
        promo = self._lock_for_edit(promo_id, tenant=tenant)
        return self._write(promo, {} if promo.is_active else {"is_active": True})

    @guarded
    def create_code(self, *, tenant, **fields):
        """Create a code (no lock: a new row); return it.

        Locks: none (an INSERT; the unique index on lower(code) decides a clash).

        Raises PromoCodeTaken when the tenant has it in any letter case (the unique
        index decides a race between two creates), PromoInvalid for a definition a
        CHECK refuses, UnknownCurrency, TooManyDecimals (a fixed bonus or ``max_bonus``
        finer than the currency's minor unit; USD when no currency is given).
        """
        unknown = set(fields) - set(PROMO_EDITABLE)
        if unknown:
            raise TypeError(f"create_code() got fields it does not set: {sorted(unknown)}")
        _check_terms(fields)
        return self.create(tenant=tenant, **fields)

    @guarded
    def update_code(self, promo_id, *, tenant, version=None, **fields):
        """Change the given definition fields of a code under its row lock; return it.

        Locks: the code row FOR NO KEY UPDATE OF self (after SET LOCAL lock_timeout), then the version is checked.

        Locks the code row FOR NO KEY UPDATE (the lock every redeem and
        (de)activation takes, with the redeem lock timeout), then, holding it,
        checks ``version`` (when given) against the row's and writes only
        ``fields`` with one UPDATE: a field not given is never written, so an edit
        can neither reset an omitted field nor write back a value read before a
        redeem, a deactivation or another edit committed. ``is_active`` here is
        exactly ``set_active``: same lock, same moment. ``times_used`` is not
        editable. The limits are checked by the database on the row as locked
        (``times_used <= total_usage_limit``).

        Raises PromoNotFound, VersionConflict (version_conflict, someone changed
        the code since ``version`` was read), PromoCodeTaken, PromoLimitBelowUsage
        (a limit under the uses already made), PromoCustomerLimitBelowUsage (a per-customer
        limit under some customer's live uses, counted after the lock: every redeem inserts
        its usage holding it), PromoInvalid, LockContended; PromoCurrencyFrozen for a new
        ``currency`` once the code has been used (``times_used > 0`` or any usage, voided too:
        their amounts are in the old one; judged under the lock, which every redeem holds to
        insert its usage), UnknownCurrency, TooManyDecimals (the terms, new or kept, in the
        currency, new or kept).
        """
        unknown = set(fields) - set(PROMO_EDITABLE)
        if unknown:
            raise TypeError(f"update_code() cannot write {sorted(unknown)}")
        promo = self._lock_for_edit(promo_id, tenant=tenant)
        # Checked on the row as locked: a version read before the lock could miss an edit
        # that committed while we waited, and this write would silently undo it.
        if version is not None and promo.version != version:
            raise VersionConflict(current=promo.version)
        if fields.get("currency", promo.currency) != promo.currency and (promo.times_used or promo.usages.exists()):
            raise errors.PromoCurrencyFrozen(currency=promo.currency)
        if {"currency", "bonus_type", "bonus_value", "max_bonus"} & set(fields):
            kept = ("currency", "bonus_type", "bonus_value", "max_bonus")
            _check_terms({**{name: getattr(promo, name) for name in kept}, **fields}, new="currency" in fields)
        limit = fields.get("per_customer_limit")
        if limit is not None and limit < (promo.per_customer_limit or limit + 1) and self._most_uses(promo) > limit:
            raise errors.PromoCustomerLimitBelowUsage()
        return self._write(promo, fields)

    def _most_uses(self, promo):
        """The most live (non-voided) uses any one customer has made of ``promo``: 0 when none."""
        uses = _model("PromoUsage").objects.filter(promo=promo, voided_at__isnull=True)
        most = uses.values("customer").annotate(n=Count("pk")).order_by("-n").values_list("n", flat=True).first()
        return most or 0

    @guarded
    def delete_code(self, promo_id, *, tenant, version=None):
        """Delete a code that was never used; PromoInUse when usages exist (void keeps history); with
        ``version`` (the one the caller read), VersionConflict when the code changed since.

        Locks: the code row FOR UPDATE (after SET LOCAL lock_timeout).

        Locks the code row ``FOR UPDATE`` first (short lock timeout): a redeem
        must hold that row's lock to insert a usage, so once we hold it no usage
        can appear, and the usages check (a statement issued after the lock)
        sees every usage committed while we waited. Without the lock, a usage
        committed after the check failed the deferred foreign key at COMMIT (500).
        Raises PromoNotFound, VersionConflict, PromoInUse, LockContended.
        """
        set_local_lock_timeout(REDEEM_LOCK_TIMEOUT_MS, using=self.db)
        promo = self.for_tenant(tenant).locked(no_key=False).filter(pk=promo_id).first()
        if promo is None:
            raise errors.PromoNotFound()
        if version is not None and version != promo.version:
            raise VersionConflict(current=promo.version)
        if promo.usages.exists():
            raise errors.PromoInUse()
        try:
            promo.delete()
        except models.ProtectedError:
            raise errors.PromoInUse()


# --- usages ------------------------------------------------------------------


class PromoUsageQuerySet(TenantScopedQuerySet):
    def live(self):
        return self.filter(voided_at__isnull=True)

    def voided(self):
        return self.filter(voided_at__isnull=False)


class PromoUsageManager(models.Manager.from_queryset(PromoUsageQuerySet)):
    @guarded
    def void(self, usage_id, *, tenant):
        """Void a usage and give its use back to the code, exactly once; return the usage.

        Locks: the usage row (FOR NO KEY UPDATE in the deciding statement) -> the code row (``times_used - 1``).

        One statement (core.decide) locks the usage, judges ``voided_at IS NULL`` on its
        newest version and stamps it, returning the row either way; the stamp gives the use
        back in the same statement (the usage's trigger, ``UsagesCountThemselves``, runs
        ``times_used - 1`` on the code: lock order usage row, then code row). The code is then
        read as the void left it. A refusal is named from the returned row: UsageNotFound
        (also another tenant's) or UsageAlreadyVoided.
        PromoCounterOutOfStep when the counter would go below zero (it had drifted
        from the usages: nothing is written), LockContended.
        """
        won, usage = self.voided_once(self, usage_id=usage_id, tenant=tenant)
        if usage is None:
            raise errors.UsageNotFound()
        if not won:
            raise errors.UsageAlreadyVoided()
        usage.promo = _model("PromoCode").objects.using(self.db).get(pk=usage.promo_id)  # counted down by the void
        return usage

    def voiding(self, usage_id, *, tenant):
        """What voiding a usage locks, requires and writes: ``core.decide``'s arguments."""
        return {
            "queryset": self.filter(pk=usage_id, tenant=tenant),
            "when": Q(voided_at__isnull=True),
            "changes": {"voided_at": NOW},
        }

    voided_once = Decision(voiding, usage_id=int, tenant=int)


# --- redemption sessions -------------------------------------------------------


class RedemptionSessionQuerySet(TenantScopedQuerySet):
    def open(self):
        """Pending or approved, and not past expiry by the database clock."""
        return self.filter(status__in=OPEN_STATUSES, expires_at__gt=ClockNow())

    def overdue(self):
        """Pending or approved but past expiry by the database clock: the sweep has not reached them yet."""
        return self.filter(status__in=OPEN_STATUSES, expires_at__lte=ClockNow())

    def with_effective_status(self):
        """Annotate ``effective_status``: a pending or approved session past expiry reads as expired (lazy
        expiry: the sweep writes it later; a consume or an answer already refuses it)."""
        return self.annotate(effective_status=effective_status(OPEN_STATUSES, self.model.Status.EXPIRED))


class RedemptionSessionManager(models.Manager.from_queryset(RedemptionSessionQuerySet)):
    @guarded
    def create_session(self, *, tenant, customer, max_amount, currency=DEFAULT_CURRENCY, expires_in=None):
        """Create a pending session; return ``(session, approval_secret)``.

        Locks: none (an INSERT).

        The secret is shown only here: the row keeps its sha256. ``expires_in``
        (a timedelta, default 15 minutes, at most 7 days) counts from the
        database clock. No lock: a new row (the state machine refuses any other
        initial status). ``max_amount`` is in ``currency`` (USD when not given):
        UnknownCurrency, TooManyDecimals, InvalidAmount.
        """
        currency = _require_currency(currency, new=True) or DEFAULT_CURRENCY  # its places and ceiling judge
        max_amount = _require_amount(max_amount, currency=currency)
        ttl = expires_in if expires_in is not None else DEFAULT_SESSION_TTL
        if not timedelta(seconds=1) <= ttl <= MAX_SESSION_TTL:
            raise errors.SessionLifetimeOutOfRange(minimum=1, maximum=int(MAX_SESSION_TTL.total_seconds()))
        secret = secrets.token_urlsafe(32)
        session = self.create(
            tenant=tenant,
            customer=str(customer),
            max_amount=max_amount,
            currency=currency,
            secret_hash=hash_secret(secret),
            expires_at=ClockNow() + Value(ttl),
        )
        session.refresh_from_db(fields=["expires_at", "created_at"])
        return session, secret

    def answer(self, session_id, *, secret_hash, to_status, stamp):
        """What answering a session locks, requires and writes: ``core.decide``'s arguments."""
        return {
            # The secret in the locking query's WHERE: a caller without it never locks the row (a storm of wrong
            # secrets would hold up the customer's answer and the shop's consume, and read 409 resource_locked).
            "queryset": self.filter(session_id=session_id, secret_hash=secret_hash),
            "when": Q(status=self.model.Status.PENDING, expires_at__gt=ClockNow()),
            "changes": {"status": to_status, stamp: NOW},
        }

    answered = Decision(answer, session_id=uuid.UUID, secret_hash=str)

    def _answer(self, session_id, *, secret, to_status, stamp):
        """Move a pending, unexpired session whose secret matches to ``to_status``, in one statement.

        The row comes back either way (core.decide): a refusal is named from it, and a wrong
        secret is told apart from an unknown id only by SessionNotFound for both.
        """
        Status = self.model.Status
        won, session = self.answered(
            self, session_id=session_id, secret_hash=hash_secret(secret), to_status=to_status, stamp=stamp
        )
        if session is None or not hmac.compare_digest(session.secret_hash, hash_secret(secret)):
            raise errors.SessionNotFound()
        if won:
            return session
        if session.status == Status.EXPIRED or _lapsed(session):
            raise errors.SessionExpired()
        raise errors.SessionNotPending(status=Status(session.status))

    @guarded(statement=True)
    def approve(self, session_id, *, secret):
        """Customer approves with the secret: pending → approved, only before expiry.

        Locks: the session row (FOR NO KEY UPDATE in the deciding statement).

        One statement (status, secret and ``expires_at > clock_timestamp()`` judged on the
        row's newest version). Raises SessionNotFound (unknown id or wrong secret),
        SessionExpired, SessionNotPending, LockContended.
        """
        return self._answer(session_id, secret=secret, to_status=self.model.Status.APPROVED, stamp="approved_at")

    @guarded(statement=True)
    def reject(self, session_id, *, secret):
        """Customer rejects with the secret: pending → rejected (same statement and refusals as approve).

        Locks: the session row (FOR NO KEY UPDATE in the deciding statement).
        """
        return self._answer(session_id, secret=secret, to_status=self.model.Status.REJECTED, stamp="rejected_at")

    def consumption(self, session_id, *, tenant, amount, currency=None, places=0):
        """What using a session locks, requires and writes: ``core.decide``'s arguments (bench/ sends the same).

        The session's currency is judged in the same statement: the one the caller named
        (``currency``), or, when none, one whose minor unit can express ``amount``, which
        needs ``places`` decimals (nothing to judge for a whole amount: every currency has it).
        """
        Status = self.model.Status
        decision = {
            "queryset": self.filter(session_id=session_id, tenant=tenant),
            "when": Q(status=Status.APPROVED, expires_at__gt=ClockNow(), used_at__isnull=True, max_amount__gte=amount),
            "changes": {"status": Status.USED, "used_at": NOW, "used_amount": amount},
        }
        if currency is not None:
            decision["when"] &= Q(currency=currency)
        elif too_coarse := currencies_coarser_than(places):
            fine = sorted(set(money.known_currencies()) - set(too_coarse))
            # The shorter list: 17 codes without cents for 12.50, 9 with thousandths for 1.255.
            decision["when"] &= ~Q(currency__in=too_coarse) if len(too_coarse) <= len(fine) else Q(currency__in=fine)
        return decision

    consumed = Decision(consumption, session_id=uuid.UUID, tenant=int, amount=Decimal, currency=str)

    @guarded(statement=True)
    def consume(self, session_id, *, tenant, amount, currency=None):
        """Use an approved session once for ``amount``; return the session as used.

        Locks: the session row (FOR NO KEY UPDATE in the deciding statement).

        ONE statement (core.decide) locks the row, judges every condition on its newest
        version (tenant, ``approved``, ``expires_at > clock_timestamp()``, ``used_at IS
        NULL``, ``max_amount >= amount``, the currency: the caller's ``currency`` when
        named, else one with the amount's places), uses it, and returns the row either
        way, so the refusal is named from the row that refused it: SessionNotFound (also
        another tenant's), CurrencyMismatch, TooManyDecimals (finer than the session's
        currency), SessionAlreadyUsed, SessionExpired (also when expiry fell between the
        judgement and the stamp: redemption_used_before_expiry), SessionNotApproved,
        AmountExceedsLimit. LockContended if the row stays locked past the lock timeout.
        UnknownCurrency and InvalidAmount before any statement.
        """
        currency = _require_currency(currency)
        amount = _require_amount(amount, currency=currency)
        # A named currency's places were judged above; the session's are judged in the statement.
        needed = 0 if currency is not None else places_needed(amount)
        won, session = self.consumed(
            self, session_id=session_id, tenant=tenant, amount=amount, currency=currency, places=needed
        )
        if won:
            return session
        raise self._consume_refusal(session, amount=amount, currency=currency)

    def _consume_refusal(self, session, *, amount, currency=None):
        Status = self.model.Status
        if session is None:
            return errors.SessionNotFound()
        _refuse_other_currency(currency, session.currency)
        require_places(amount, session.currency)
        if session.status == Status.USED or session.used_at is not None:
            return errors.SessionAlreadyUsed()
        if session.status == Status.EXPIRED or (
            session.status in (Status.PENDING, Status.APPROVED) and _lapsed(session)
        ):
            return errors.SessionExpired()
        if session.status != Status.APPROVED:
            return errors.SessionNotApproved()
        if session.max_amount < amount:
            return errors.AmountExceedsLimit()
        # Approved, unused, in limit: the guard's own clock read found it expired a moment
        # before the row's clock was read.
        return errors.SessionExpired()

    def cancellation(self, session_id, *, tenant):
        """What cancelling a session locks, requires and writes: ``core.decide``'s arguments."""
        Status = self.model.Status
        return {
            "queryset": self.filter(session_id=session_id, tenant=tenant),
            "when": Q(status__in=[Status.PENDING, Status.APPROVED], expires_at__gt=ClockNow()),
            "changes": {"status": Status.CANCELLED, "cancelled_at": NOW},
        }

    cancelled = Decision(cancellation, session_id=uuid.UUID, tenant=int)

    @guarded(statement=True)
    def cancel(self, session_id, *, tenant):
        """Shop cancels a pending or approved, unexpired session; return it.

        Locks: the session row (FOR NO KEY UPDATE in the deciding statement).

        One statement (core.decide). Raises SessionNotFound, SessionAlreadyUsed,
        SessionExpired, SessionNotCancellable (rejected or already cancelled), LockContended.
        """
        Status = self.model.Status
        won, session = self.cancelled(self, session_id=session_id, tenant=tenant)
        if won:
            return session
        if session is None:
            raise errors.SessionNotFound()
        if session.status == Status.USED:
            raise errors.SessionAlreadyUsed()
        if session.status == Status.EXPIRED or _lapsed(session):
            raise errors.SessionExpired()
        raise errors.SessionNotCancellable(status=Status(session.status))

    @sweep
    def expire_due(self, *, tenant=None):
        """Mark every pending/approved session past ``expires_at`` as expired; return how many.

        Locks: each due session row, a batch at a time (``core.db.update_skipping_locked``; a session
        writer holds only its own row, so no order to keep; a row another transaction holds is skipped,
        never waited for: the next run's).

        Each batch's WHERE (status, ``expires_at <= clock_timestamp()``) is evaluated on each row it
        changes: a consume, cancel or approve racing it re-checks its own WHERE on the row the sweep
        wrote (status expired) and matches nothing; a row one of them holds is skipped, and judged
        again by the next run. Every reader already takes a lapsed session for expired meanwhile.
        """
        queryset = self.all() if tenant is None else self.for_tenant(tenant)
        return update_skipping_locked(queryset.overdue(), status=self.model.Status.EXPIRED)


def _lapsed(session):
    """Past its expiry by the database clock read when ``core.decide`` judged it."""
    return session.expires_at <= session.judged_at
