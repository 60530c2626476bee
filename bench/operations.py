"""The five guarded operations, each in the shapes the benchmark compares.

Every operation has targets 0..rows-1 (exactly one winner allowed per target)
and offers:

- ``setup(rows)``: empty its tables, create the targets (one template row through
  the ORM, the rest cloned by one INSERT ... SELECT generate_series);
- ``lockstep(t, k)``: Lockstep's own manager or service call;
- ``check_then_act(t, k)``: the naive read, check in Python, write (the same body
  runs under READ COMMITTED as the naive control and under SERIALIZABLE, retried,
  as the textbook alternative);
- ``PGBENCH``: the same statements and locks as Lockstep's guard, as a pgbench
  script (variables: k from a sequence, t from k, and the ones in ``variables``);
- ``http(t, k)``: the API request (path, JSON body, authenticated?);
- ``wins()`` and ``anomalies()``: counted from the rows afterwards.

Attempt k acts for customer ``c<k>``.
"""

import hashlib
import uuid
from datetime import date, timedelta
from decimal import Decimal

import pgtrigger
from django.db import DatabaseError, connection, transaction
from django.db.models import F
from django.db.models.functions import Coalesce, Now

from bench.runner import WON

BASE_ID = 1_000_000  # target t has id BASE_ID + t where the API addresses rows by id
EPOCH = date(2000, 1, 1)
RETRYABLE = {"40001", "40P01"}  # serialization failure, deadlock
MAX_RETRIES = 100

# The common head of every pgbench script: the attempt number k from a sequence
# (so HOT/SPREAD pick targets exactly as the Python clients do), the target t,
# and a deliberate error that ends the client once the targets are used up.
PGBENCH_HEAD = """\
SELECT nextval('bench_k') - 1 AS k \\gset
\\set t {target}
\\if :t >= :rows
SELECT 1/0 AS targets_exhausted;
\\endif
"""


def sqlstate(exc):
    while exc is not None:
        state = getattr(exc, "sqlstate", None)
        if state:
            return state
        exc = exc.__cause__
    return None


def scalar(sql, params=()):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


def clone(model, template_pk, rows, overrides):
    """Copy the template row ``rows - 1`` times; ``overrides`` maps columns to SQL over ``g`` (1..rows-1)."""
    table = model._meta.db_table
    columns = [f.column for f in model._meta.concrete_fields if not f.primary_key]
    values = [overrides.get(c, f'src."{c}"') for c in columns]
    if "id" in overrides:
        columns, values = ["id", *columns], [overrides["id"], *values]
    column_list = ", ".join(f'"{c}"' for c in columns)
    with connection.cursor() as cursor:
        cursor.execute(
            f'INSERT INTO "{table}" ({column_list}) SELECT {", ".join(values)} '  # noqa: S608
            f'FROM "{table}" src, generate_series(1, %s) AS g WHERE src.id = %s',
            [rows - 1, template_pk],
        )


def truncate(*models):
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(m._meta.db_table for m in models)} RESTART IDENTITY CASCADE")


def analyze(*models):
    with connection.cursor() as cursor:
        for model in models:
            cursor.execute(f"ANALYZE {model._meta.db_table}")


class Operation:
    name = ""
    PGBENCH = ""
    # The database's own state-machine triggers would refuse the naive control's second
    # execution; switched off for it, so the control still shows what check-then-act does.
    NAIVE_IGNORES = ()

    def __init__(self, ctx):
        self.ctx = ctx

    def variables(self):
        return {"tenant": self.ctx.tenant.pk}

    # --- the naive body, shared by the control and SERIALIZABLE ------------------
    def check_then_act(self, t, k):
        """Return (code, payload): a refusal code, or WON and what ``after_commit`` needs."""
        raise NotImplementedError

    def after_commit(self, payload):
        """Work the service does after its transaction commits (the provider call)."""

    def naive(self, t, k):
        with pgtrigger.ignore(*self.NAIVE_IGNORES), transaction.atomic():
            code, payload = self.check_then_act(t, k)
        if code == WON:
            self.after_commit(payload)
        return code

    def serializable(self, t, k):
        retries = 0
        while True:
            try:
                with transaction.atomic():
                    with connection.cursor() as cursor:
                        cursor.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                    code, payload = self.check_then_act(t, k)
                break
            except DatabaseError as exc:
                if sqlstate(exc) not in RETRYABLE or retries >= MAX_RETRIES:
                    raise
                retries += 1
        if code == WON:
            self.after_commit(payload)
        return code, retries

    def pgbench_script(self, case):
        target = ":k / :clients" if case == "hot" else ":k"
        return PGBENCH_HEAD.format(target=target) + self.PGBENCH


# --- promo redeem ------------------------------------------------------------------


class PromoRedeem(Operation):
    """``PromoCode.objects.redeem``: code ``B<t>`` has ``total_usage_limit = 1``."""

    name = "promo_redeem"
    PGBENCH = """\
BEGIN;
SELECT set_config('lock_timeout', '1000ms', true);
SELECT id AS pid FROM promos_promocode WHERE tenant_id = :tenant AND UPPER(code::text) = UPPER('B' || :t)
 LIMIT 1 FOR NO KEY UPDATE \\gset
SELECT (p.is_active AND (p.starts_at IS NULL OR p.starts_at <= clock_timestamp())
        AND (p.ends_at IS NULL OR p.ends_at > clock_timestamp())
        AND (p.total_usage_limit IS NULL OR p.times_used < p.total_usage_limit))::int AS ok,
       p.bonus_value AS bonus,
       COALESCE((SELECT count(*) FROM promos_promousage u WHERE u.promo_id = p.id
                 AND u.customer = 'c' || :k AND u.voided_at IS NULL), 0) AS uses
  FROM promos_promocode p WHERE p.id = :pid \\gset
\\if :ok
INSERT INTO promos_promousage (tenant_id, promo_id, customer, base_amount, bonus_amount, reference, created_at)
 VALUES (:tenant, :pid, 'c' || :k, 100.00, :bonus, '', now());
UPDATE promos_promocode SET times_used = times_used + 1, updated_at = now() WHERE id = :pid;
\\endif
COMMIT;
"""

    def setup(self, rows):
        from promos.models import PromoCode, PromoUsage

        truncate(PromoUsage, PromoCode)
        template = PromoCode.objects.create(
            tenant=self.ctx.tenant, code="B0", bonus_type="fixed", bonus_value=Decimal("5.00"), total_usage_limit=1
        )
        clone(PromoCode, template.pk, rows, {"code": "'B' || g"})
        analyze(PromoCode, PromoUsage)

    def lockstep(self, t, k):
        from promos.models import PromoCode

        PromoCode.objects.redeem(f"B{t}", tenant=self.ctx.tenant, customer=f"c{k}", amount=Decimal("100.00"))

    def check_then_act(self, t, k):
        from promos.models import PromoCode, PromoUsage

        promo = PromoCode.objects.by_code(f"B{t}", tenant=self.ctx.tenant).first()
        if promo is None:
            return "promo_not_found", None
        if not promo.is_active:
            return "promo_inactive", None
        if promo.total_usage_limit is not None and promo.times_used >= promo.total_usage_limit:
            return "promo_exhausted", None
        PromoUsage.objects.create(
            tenant=self.ctx.tenant,
            promo=promo,
            customer=f"c{k}",
            base_amount=Decimal("100.00"),
            bonus_amount=promo.bonus_value,
        )
        PromoCode.objects.filter(pk=promo.pk).update(times_used=promo.times_used + 1, updated_at=Now())
        return WON, None

    def http(self, t, k):
        body = {"code": f"B{t}", "customer": f"c{k}", "amount": "100.00"}
        return f"/api/t/{self.ctx.slug}/promo-codes/redeem", body, True

    def wins(self):
        return scalar("SELECT count(*) FROM promos_promousage WHERE voided_at IS NULL")

    def anomalies(self):
        return scalar(
            "SELECT count(*) FROM promos_promocode p WHERE p.total_usage_limit < "
            "(SELECT count(*) FROM promos_promousage u WHERE u.promo_id = p.id AND u.voided_at IS NULL)"
        )


# --- session consume ---------------------------------------------------------------


def session_uuid(t):
    return uuid.UUID(hashlib.md5(f"bench:{t}".encode()).hexdigest())  # noqa: S324 - an id, not a secret


class SessionConsume(Operation):
    """``RedemptionSession.objects.consume``: approved session md5('bench:<t>'), 10.00 of 100.00."""

    name = "session_consume"
    AMOUNT = Decimal("10.00")
    PGBENCH = """\
BEGIN;
WITH u AS (UPDATE promos_redemptionsession SET status = 'used', used_at = clock_timestamp(), used_amount = 10.00
  WHERE session_id = md5('bench:' || :t)::uuid AND tenant_id = :tenant AND status = 'approved'
    AND expires_at > clock_timestamp() AND used_at IS NULL AND max_amount >= 10.00 RETURNING 1)
SELECT count(*) AS won FROM u \\gset
\\if :won = 0
SELECT *, expires_at <= clock_timestamp() AS clock_expired FROM promos_redemptionsession
 WHERE session_id = md5('bench:' || :t)::uuid AND tenant_id = :tenant;
\\endif
COMMIT;
"""

    def setup(self, rows):
        from promos.models import RedemptionSession

        truncate(RedemptionSession)
        template = RedemptionSession.objects.create(
            session_id=session_uuid(0),
            tenant=self.ctx.tenant,
            customer="c",
            max_amount=Decimal("100.00"),
            status="approved",
            secret_hash="0" * 64,
            expires_at=Now() + timedelta(days=1),
            approved_at=Now(),
        )
        clone(RedemptionSession, template.pk, rows, {"session_id": "md5('bench:' || g)::uuid"})
        analyze(RedemptionSession)

    def lockstep(self, t, k):
        from promos.models import RedemptionSession

        RedemptionSession.objects.consume(session_uuid(t), tenant=self.ctx.tenant, amount=self.AMOUNT)

    def check_then_act(self, t, k):
        from promos.models import RedemptionSession

        session = RedemptionSession.objects.filter(session_id=session_uuid(t), tenant=self.ctx.tenant).first()
        if session is None:
            return "session_not_found", None
        if session.used_at is not None:
            return "session_already_used", None
        if session.status != "approved":
            return "session_not_approved", None
        # Accumulate, so a double consume (two callers handed the goods) shows in the row.
        RedemptionSession.objects.filter(pk=session.pk).update(
            status="used", used_at=Now(), used_amount=Coalesce(F("used_amount"), Decimal("0")) + self.AMOUNT
        )
        return WON, None

    def http(self, t, k):
        return f"/api/t/{self.ctx.slug}/redemption-sessions/{session_uuid(t)}/consume", {"amount": "10.00"}, True

    def wins(self):
        return scalar("SELECT count(*) FROM promos_redemptionsession WHERE status = 'used'")

    def anomalies(self):
        return scalar("SELECT count(*) FROM promos_redemptionsession WHERE used_amount > 10.00")


# --- date checkout hold --------------------------------------------------------------

BOOKING_ACTIVE = "(status = 'confirmed' OR (status = 'held' AND hold_expires_at > statement_timestamp()))"

# Booking.objects.hold + Checkout.objects.record (one transaction), then Checkout.objects.open.
HOLD_SQL = f"""\
SELECT id AS package, price, quote_literal(currency) AS currency, daily_capacity AS capacity FROM bookings_package
 WHERE tenant_id = :tenant AND active AND id = :package_id \\gset
SELECT pg_advisory_xact_lock(
  hashtextextended('bookings.date:' || :package || ':' || (DATE '2000-01-01' + :day)::text, 0));
SELECT count(*) FILTER (WHERE {BOOKING_ACTIVE}) AS taken, current_date AS today, statement_timestamp() AS now
  FROM bookings_booking WHERE package_id = :package AND date = DATE '2000-01-01' + :day \\gset
\\if :taken < :capacity
INSERT INTO bookings_booking (tenant_id, package_id, date, customer_name, customer_email, status, hold_expires_at,
  amount, currency, exclusive, created_at)
 VALUES (:tenant, :package, DATE '2000-01-01' + :day, 'c' || :k, 'c' || :k || '@example.com', 'held',
  statement_timestamp() + interval '15 minutes', :price, :currency, :capacity = 1, statement_timestamp())
 RETURNING id AS booking \\gset
INSERT INTO bookings_checkout (booking_id, provider, state, url, provider_payment_id, amount, currency, error,
  refund_state, provider_refund_id, refund_attempts, refund_error, created_at, updated_at)
 VALUES (:booking, 'sandbox', 'creating', '', '', :price, :currency, '', '', '', 0, '', now(), now())
 RETURNING id AS checkout \\gset
"""
OPEN_SQL = """\
UPDATE bookings_checkout SET state = 'open', provider_checkout_id = 'cs_sandbox_' || md5(random()::text),
  url = 'http://127.0.0.1:8000/sandbox/checkout/x', provider_payment_id = '', updated_at = now()
 WHERE id = :checkout AND state = 'creating';
"""


def date_anomalies():
    return scalar(
        "SELECT count(*) FROM (SELECT 1 FROM bookings_booking b JOIN bookings_package p ON p.id = b.package_id "
        "WHERE b.status = 'confirmed' OR (b.status = 'held' AND b.hold_expires_at > statement_timestamp()) "
        "GROUP BY b.package_id, b.date, p.daily_capacity HAVING count(*) > p.daily_capacity) AS over"
    )


class DateHold(Operation):
    """``bookings.services.start_checkout``: package with capacity 1, date = first day + t."""

    name = "date_hold"
    PGBENCH = "\\set day :base_day + :t\nBEGIN;\n" + HOLD_SQL + "COMMIT;\n" + OPEN_SQL + "\\else\nCOMMIT;\n\\endif\n"

    def variables(self):
        return {**super().variables(), "package_id": self.ctx.package.pk, "base_day": self.ctx.base_day}

    def day(self, t):
        return EPOCH + timedelta(days=self.ctx.base_day + t)

    def setup(self, rows):
        from bookings.models import Booking, Checkout

        truncate(Checkout, Booking)
        analyze(Checkout, Booking)

    def lockstep(self, t, k):
        from bookings.services import start_checkout

        start_checkout(
            tenant=self.ctx.tenant,
            package_id=self.ctx.package.pk,
            date=self.day(t),
            customer_name=f"c{k}",
            customer_email=f"c{k}@example.com",
        )

    def naive_hold(self, package, day, k):
        """Count the date's places, check in Python, insert: the unguarded hold."""
        from bookings.models import Booking, Checkout

        if Booking.objects.filter(package=package, date=day).active().count() >= package.daily_capacity:
            return None
        booking = Booking.objects.create(
            tenant=self.ctx.tenant,
            package=package,
            date=day,
            customer_name=f"c{k}",
            customer_email=f"c{k}@example.com",
            status="held",
            hold_expires_at=Now() + timedelta(minutes=15),
            amount=package.price,
            currency=package.currency,
            exclusive=package.daily_capacity == 1,
            created_at=Now(),
        )
        booking.checkout = Checkout.objects.record(booking, provider="sandbox")
        return booking

    def check_then_act(self, t, k):
        from bookings.models import Package

        package = Package.objects.for_tenant(self.ctx.tenant).active().filter(pk=self.ctx.package.pk).first()
        booking = self.naive_hold(package, self.day(t), k)
        return ("date_unavailable", None) if booking is None else (WON, booking)

    def after_commit(self, booking):
        from bookings.services import create_provider_checkout

        create_provider_checkout(booking)

    def http(self, t, k):
        body = {
            "package": self.ctx.package.pk,
            "date": self.day(t).isoformat(),
            "customer": {"name": f"c{k}", "email": f"c{k}@example.com"},
        }
        return f"/api/public/{self.ctx.slug}/checkouts", body, False

    def wins(self):
        return scalar(f"SELECT count(*) FROM bookings_booking WHERE {BOOKING_ACTIVE}")

    def anomalies(self):
        return date_anomalies()


# --- proposal confirm --------------------------------------------------------------


class ProposalConfirm(DateHold):
    """``proposals.services.confirm_proposal``: proposal BASE_ID + t, pending, for its own date."""

    name = "proposal_confirm"
    NAIVE_IGNORES = (
        "proposals.Proposal:proposal_status_transition",
        "proposals.Proposal:proposal_booking_unlink_transition",
    )
    SESSION = "chat-bench"
    PGBENCH = (
        "\\set pid :base_id + :t\n\\set day :base_day + :t\nBEGIN;\n"
        "WITH u AS (UPDATE proposals_proposal SET status = 'confirmed', confirmed_at = now()\n"
        "  WHERE id = :pid AND tenant_id = :tenant AND session_id = 'chat-bench' AND status = 'pending'\n"
        "    AND expires_at > now() RETURNING 1)\nSELECT count(*) AS won FROM u \\gset\n"
        "\\if :won\n"
        "SELECT p.*, pk.* FROM proposals_proposal p JOIN bookings_package pk ON pk.id = p.package_id"
        " WHERE p.id = :pid;\n"
        "SAVEPOINT hold;\n" + HOLD_SQL + "RELEASE SAVEPOINT hold;\n"
        "UPDATE proposals_proposal SET status = 'executed', booking_id = :booking, executed_at = now()\n"
        " WHERE id = :pid AND status = 'confirmed';\nCOMMIT;\n" + OPEN_SQL + "\\else\n"
        "ROLLBACK TO SAVEPOINT hold;\n"
        "UPDATE proposals_proposal SET status = 'failed', failure_code = 'date_unavailable'"
        " WHERE id = :pid AND status = 'confirmed';\nCOMMIT;\n\\endif\n"
        "\\else\n"
        "SELECT status, expires_at <= now() AS lapsed FROM proposals_proposal"
        " WHERE id = :pid AND tenant_id = :tenant AND session_id = 'chat-bench';\nCOMMIT;\n\\endif\n"
    )

    def variables(self):
        return {**super().variables(), "base_id": BASE_ID}

    def setup(self, rows):
        from bookings.models import Booking, Checkout
        from proposals.models import Proposal

        truncate(Proposal, Checkout, Booking)
        template = Proposal.objects.create(
            id=BASE_ID,
            tenant=self.ctx.tenant,
            session_id=self.SESSION,
            package=self.ctx.package,
            date=self.day(0),
            customer_name="c",
            customer_email="c@example.com",
            status="pending",
            expires_at=Now() + timedelta(days=1),
            created_at=Now(),
        )
        clone(Proposal, template.pk, rows, {"id": f"{BASE_ID} + g", "date": "src.date + g"})
        analyze(Proposal, Checkout, Booking)

    def lockstep(self, t, k):
        from proposals.services import confirm_proposal

        confirm_proposal(BASE_ID + t, tenant=self.ctx.tenant, session_id=self.SESSION)

    def check_then_act(self, t, k):
        from bookings.models import Package
        from proposals.models import Proposal

        proposal = (
            Proposal.objects.live().filter(pk=BASE_ID + t, tenant=self.ctx.tenant, session_id=self.SESSION).first()
        )
        if proposal is None:
            return "proposal_already_processed", None
        package = Package.objects.get(pk=proposal.package_id)
        booking = self.naive_hold(package, proposal.date, k)
        if booking is None:
            Proposal.objects.filter(pk=proposal.pk).update(
                status="failed", failure_code="date_unavailable", confirmed_at=Now()
            )
            return "date_unavailable", None
        Proposal.objects.filter(pk=proposal.pk).update(
            status="executed", booking=booking, confirmed_at=Now(), executed_at=Now()
        )
        return WON, booking

    def http(self, t, k):
        return f"/api/t/{self.ctx.slug}/proposals/{BASE_ID + t}/confirm", {"session_id": self.SESSION}, True

    def wins(self):
        return scalar(f"SELECT count(*) FROM bookings_booking WHERE {BOOKING_ACTIVE}")


# --- profile undo ------------------------------------------------------------------


class ProfileUndo(Operation):
    """``ProfileAuditLog.objects.undo``: entry BASE_ID + t renamed profile BASE_ID + t from A to B."""

    name = "profile_undo"
    NAIVE_IGNORES = ("profiles.ProfileAuditLog:audit_append_only_transition",)
    PGBENCH = """\
\\set eid :base_id + :t
BEGIN;
SELECT pg_try_advisory_xact_lock(hashtextextended('profiles.audit_undo:' || :eid, 0))::int AS got \\gset
\\if :got
SELECT (undone_at IS NULL)::int AS open, profile_id AS pid FROM profiles_profileauditlog
 WHERE id = :eid AND tenant_id = :tenant FOR UPDATE NOWAIT \\gset
\\if :open
SELECT (first_name = 'B')::int AS fresh, version, now() AS db_now FROM profiles_profile
 WHERE id = :pid AND tenant_id = :tenant FOR UPDATE NOWAIT \\gset
UPDATE profiles_profile SET version = version + 1, first_name = 'A' WHERE id = :pid;
INSERT INTO profiles_profileauditlog (tenant_id, profile_id, action, old_data, new_data, actor_id, created_at,
  undo_reason) VALUES (:tenant, :pid, 'undo', '{"first_name": "B"}', '{"first_name": "A"}', :user, now(), '')
 RETURNING id AS undo_id \\gset
UPDATE profiles_profileauditlog SET undone_at = now(), undone_by_id = :user, undo_reason = 'bench',
  undo_entry_id = :undo_id WHERE id = :eid;
\\endif
\\endif
COMMIT;
"""

    def variables(self):
        return {**super().variables(), "base_id": BASE_ID, "user": self.ctx.user.pk}

    def setup(self, rows):
        from profiles.models import Profile, ProfileAuditLog

        truncate(ProfileAuditLog, Profile)
        profile = Profile.objects.create(id=BASE_ID, tenant=self.ctx.tenant, first_name="B", sex="male", version=2)
        clone(Profile, profile.pk, rows, {"id": f"{BASE_ID} + g"})
        entry = ProfileAuditLog.objects.create(
            id=BASE_ID,
            tenant=self.ctx.tenant,
            profile=profile,
            action="update",
            old_data={"first_name": "A"},
            new_data={"first_name": "B"},
            actor=self.ctx.user,
        )
        clone(ProfileAuditLog, entry.pk, rows, {"id": f"{BASE_ID} + g", "profile_id": f"{BASE_ID} + g"})
        with connection.cursor() as cursor:  # the undo entries the runs insert get ids below BASE_ID
            cursor.execute("SELECT setval(pg_get_serial_sequence('profiles_profileauditlog', 'id'), 1)")
        analyze(Profile, ProfileAuditLog)

    def lockstep(self, t, k):
        from profiles.models import ProfileAuditLog

        ProfileAuditLog.objects.undo(BASE_ID + t, tenant=self.ctx.tenant, actor=self.ctx.user, reason="bench")

    def check_then_act(self, t, k):
        from profiles.models import Profile, ProfileAuditLog

        entry = ProfileAuditLog.objects.filter(pk=BASE_ID + t, tenant=self.ctx.tenant).first()
        if entry is None:
            return "audit_entry_not_found", None
        if entry.undone_at is not None:
            return "already_undone", None
        profile = Profile.objects.get(pk=entry.profile_id)
        if profile.first_name != entry.new_data["first_name"]:
            return "stale_version", None
        Profile.objects.filter(pk=profile.pk).update(first_name=entry.old_data["first_name"], version=F("version") + 1)
        undo = ProfileAuditLog.objects.create(
            tenant=self.ctx.tenant,
            profile=profile,
            action="undo",
            old_data=entry.new_data,
            new_data=entry.old_data,
            actor=self.ctx.user,
        )
        ProfileAuditLog.objects.filter(pk=entry.pk).update(
            undone_at=Now(), undone_by=self.ctx.user, undo_reason="bench", undo_entry=undo
        )
        return WON, None

    def http(self, t, k):
        return f"/api/t/{self.ctx.slug}/audit-log/{BASE_ID + t}/undo", {"reason": "bench"}, True

    def wins(self):
        return scalar("SELECT count(*) FROM profiles_profileauditlog WHERE action = 'undo'")

    def anomalies(self):
        return scalar(
            "SELECT count(*) FROM (SELECT profile_id FROM profiles_profileauditlog WHERE action = 'undo' "
            "GROUP BY profile_id HAVING count(*) > 1) AS twice"
        )


OPERATIONS = [ProposalConfirm, SessionConsume, PromoRedeem, DateHold, ProfileUndo]
