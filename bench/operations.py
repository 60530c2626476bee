"""The five guarded operations, each in the shapes the benchmark compares.

Every operation has targets 0..rows-1 (exactly one winner allowed per target)
and offers:

- ``setup(rows)``: empty its tables, create the targets (one template row through
  the ORM, the rest cloned by one INSERT ... SELECT generate_series);
- ``lockstep(t, k)``: Lockstep's own manager or service call, and ``naive(t, k)``,
  the naive read, check in Python, write: both the operation's race scenario's
  (``<app>/race_scenarios.py``, shared with race_demo and the race tests); the naive
  body also runs under SERIALIZABLE, retried, as the textbook alternative;
- ``PGBENCH``: the same statements, locks and index use as Lockstep's guard, as a
  pgbench script (variables: k from a sequence, t from k, and the ones in
  ``variables``); tests/bench/test_pgbench_fidelity.py holds them to the app's SQL.
  pgbench cannot test a NULL or read a row count, so a script may add what it
  decides on as ``... AS pgbench_<name>`` (a select item, or ``RETURNING 1``);
- ``http(t, k)``: the API request (path, JSON body, authenticated?);
- ``wins()`` and ``anomalies()``: counted from the rows afterwards.

Attempt k acts for customer ``c<k>``.
"""

import re
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db import DatabaseError, connection, transaction

from bench.runner import WON
from core.exceptions import DomainError

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
            f'INSERT INTO "{table}" ({column_list}) SELECT {", ".join(values)} '
            f'FROM "{table}" src, generate_series(1, %s) AS g WHERE src.id = %s',
            [rows - 1, template_pk],
        )


def columns(model):
    """Every column of ``model``, table-qualified, in field order: what Django selects for a row."""
    table = model._meta.db_table
    return ", ".join(f"{table}.{field.column}" for field in model._meta.concrete_fields)


# Stand-ins for the row and tenant a decision names, replaced by pgbench variables in its script.
PGBENCH_ID, PGBENCH_TENANT, PGBENCH_BOOKING = 987_654_321, 987_654_322, 987_654_323
PGBENCH_UUID = uuid.UUID("98765432-1098-7654-3210-987654321098")
PGBENCH_CODE, PGBENCH_CUSTOMER, PGBENCH_BONUS = "pgbench-code", "pgbench-customer", Decimal("987654.32")
PGBENCH_VARIABLES = {  # as Django renders each stand-in -> the script's expression
    rf"'{PGBENCH_UUID.hex}'::uuid": "md5('bench:' || :t)::uuid",
    rf"\b{PGBENCH_ID}\b": ":pid",
    rf"\b{PGBENCH_TENANT}\b": ":tenant",
}


def decide_script(decision):
    """``core.decide``'s very statement for ``decision`` (a manager's ``decision(...)``), for pgbench."""
    from core.decide import decide_statement

    return script_of(*decide_statement(**decision))


def script_of(statement, params, variables=None):
    """The app's statement with its parameters in place, each stand-in replaced by its pgbench variable."""
    text = connection.ops.compose_sql(statement, params)
    for stand_in, variable in (variables or PGBENCH_VARIABLES).items():
        text = re.sub(stand_in, variable, text)
    return text


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

    def __init__(self, ctx):
        self.ctx = ctx
        self.scenario = self.race_scenario()

    def race_scenario(self):
        """The operation's scenario (``<app>/race_scenarios.py``) on the bench's tenant."""
        raise NotImplementedError

    def variables(self):
        return {"tenant": self.ctx.tenant.pk}

    # A refusal raises (runner.outcome reads its code); a won attempt returns nothing.
    def lockstep(self, t, k):
        self.scenario.guarded(t, k)

    def naive(self, t, k):
        self.scenario.naive(t, k)

    def serializable(self, t, k):
        """The scenario's naive body in a SERIALIZABLE transaction, retried; returns (code, retries)."""
        retries = 0
        while True:
            try:
                with transaction.atomic():
                    with connection.cursor() as cursor:
                        cursor.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                    payload = self.scenario.check_then_act(t, k)
                break
            except DomainError as refusal:
                return refusal.code, retries
            except DatabaseError as exc:
                if sqlstate(exc) not in RETRYABLE or retries >= MAX_RETRIES:
                    raise
                retries += 1
        self.scenario.after_commit(payload)
        return WON, retries

    def pgbench_script(self, case):
        target = ":k / :clients" if case == "hot" else ":k"
        return PGBENCH_HEAD.format(target=target) + self.PGBENCH


# --- promo redeem ------------------------------------------------------------------


class PromoRedeem(Operation):
    """``PromoCode.objects.redeem``: code ``B<t>`` has ``total_usage_limit = 1``."""

    name = "promo_redeem"

    @property
    def PGBENCH(self):  # a property: the scripts are the app's statements
        from promos.managers import REDEEM_LOCK_TIMEOUT_MS
        from promos.models import PromoCode
        from promos.race_scenarios import PromoRedeem

        variables = {
            rf"\b{PGBENCH_TENANT}\b": ":tenant",
            rf"\b{PGBENCH_ID}\b": ":id",  # the locked row's, from its \gset
            rf"'{PGBENCH_CODE}'": "'B:t'",
            rf"'{PGBENCH_CUSTOMER}'": "'c:k'",
            rf"\b{PGBENCH_BONUS}\b": ":bonus_value",  # the bench's codes give a fixed bonus
        }
        with transaction.atomic():  # a locking query compiles only in a transaction
            lock = PromoCode.objects.lock_by_code(
                code=PGBENCH_CODE, tenant=PGBENCH_TENANT, nowait=False, lock_timeout_ms=REDEEM_LOCK_TIMEOUT_MS
            )
            # the lock timeout and the lock, one query as the app sends them (pgbench's compound: "\;")
            lock_sql = script_of(*lock, variables).replace("; ", " \\; ", 1)
        # what the app's Python judges on the locked row (inactive, used up) before sending a second statement
        refused = "(NOT locked.is_active OR locked.times_used >= locked.total_usage_limit IS TRUE) AS pgbench_refused"
        lock_sql = lock_sql.replace("clock_timestamp() FROM (", f"clock_timestamp(), {refused} FROM (", 1)
        redemption = script_of(
            *PromoCode.objects.redemption(
                PGBENCH_ID, customer=PGBENCH_CUSTOMER, amount=PromoRedeem.AMOUNT, bonus=PGBENCH_BONUS, reference=""
            ),
            variables,
        ).replace(" FROM promo LEFT JOIN used", ", (used.id IS NOT NULL) AS pgbench_won FROM promo LEFT JOIN used")
        # The bench's codes have no window and no per-customer limit (NULL: pgbench cannot test them).
        return f"""\
BEGIN \\;
{lock_sql} \\gset
\\if :pgbench_refused
ROLLBACK;
\\else
{redemption} \\gset r_
\\if :r_pgbench_won
COMMIT;
\\else
ROLLBACK;
\\endif
\\endif
"""

    def race_scenario(self):
        from promos.race_scenarios import PromoRedeem

        return PromoRedeem(self.ctx.tenant)

    def setup(self, rows):
        from promos.models import PromoCode, PromoUsage

        truncate(PromoUsage, PromoCode)
        template = self.scenario.create_target(total_usage_limit=1)
        clone(PromoCode, template.pk, rows, {"code": "'B' || g"})
        analyze(PromoCode, PromoUsage)

    def http(self, t, k):
        body = {"code": self.scenario.code(t), "customer": f"c{k}", "amount": str(self.scenario.AMOUNT)}
        return f"/api/t/{self.ctx.slug}/promo-codes/redeem", body, True

    def wins(self):
        return scalar("SELECT count(*) FROM promos_promousage WHERE voided_at IS NULL")

    def anomalies(self):
        return scalar(
            "SELECT count(*) FROM promos_promocode p WHERE p.total_usage_limit < "
            "(SELECT count(*) FROM promos_promousage u WHERE u.promo_id = p.id AND u.voided_at IS NULL)"
        )


# --- session consume ---------------------------------------------------------------


class SessionConsume(Operation):
    """``RedemptionSession.objects.consume``: approved session md5('bench:<t>'), 10.00 of 100.00."""

    name = "session_consume"

    @property
    def PGBENCH(self):  # a property: the scripts list the models' columns
        from promos.models import RedemptionSession
        from promos.race_scenarios import SessionConsume

        consumption = RedemptionSession.objects.consumption(
            PGBENCH_UUID, tenant=PGBENCH_TENANT, amount=SessionConsume.AMOUNT
        )
        # One statement, no transaction around it (the app sends no BEGIN either).
        return f"""\
{decide_script(consumption)};
"""

    def race_scenario(self):
        from promos.race_scenarios import SessionConsume

        return SessionConsume(self.ctx.tenant)

    def setup(self, rows):
        from promos.models import RedemptionSession

        truncate(RedemptionSession)
        template = self.scenario.create_target()
        clone(RedemptionSession, template.pk, rows, {"session_id": "md5('bench:' || g)::uuid"})
        self.scenario.approve_all()
        analyze(RedemptionSession)

    def http(self, t, k):
        from promos.race_scenarios import session_uuid

        path = f"/api/t/{self.ctx.slug}/redemption-sessions/{session_uuid(t)}/consume"
        return path, {"amount": str(self.scenario.AMOUNT)}, True

    def wins(self):
        return scalar("SELECT count(*) FROM promos_redemptionsession WHERE status = 'used'")

    def anomalies(self):
        return scalar("SELECT count(*) FROM promos_redemptionsession WHERE used_amount > 10.00")


# --- date checkout hold --------------------------------------------------------------

BOOKING_ACTIVE = "(status = 'confirmed' OR (status = 'held' AND hold_expires_at > statement_timestamp()))"

DAY = "(DATE '2000-01-01' + :day)"


def hold_sql(origin, then=None):
    """Booking.objects.hold with its checkout intent; ends inside the ``\\if`` of a won hold (caller closes it).

    The place's locks and its read are one query, as the app sends them (pgbench's compound: "\\;"); the
    booking and its checkout are one statement, and so is ``then``, the script of a write that follows
    from the hold (the hold's ``then``: a proposal's execution). ``\\gset`` keeps the last column of a
    name, so the booking's and the checkout's ids come as ``pgbench_booking_id`` and ``pgbench_checkout_id``,
    which the comparison with the app leaves out (tests/bench/test_pgbench_fidelity.py).
    """
    from bookings.managers import ACTIVE_SQL

    followed, joined = ("", "")
    if then is not None:
        followed, joined = f",\nlockstep_then AS ({then})", " LEFT JOIN lockstep_then ON true"
    return f"""\
SELECT CASE WHEN t.shared THEN pg_advisory_xact_lock_shared(hashtextextended(t.key, 0))
  ELSE pg_advisory_xact_lock(hashtextextended(t.key, 0)) END
 FROM unnest(('{{bookings.package:' || :package_id || ',bookings.date:' || :package_id || ':' || {DAY} || '}}')::text[],
  '{{t,f}}'::boolean[]) AS t(key, shared)
 WHERE EXISTS (SELECT 1 FROM "bookings_package" WHERE "id" = :package_id AND "tenant_id" = :tenant) \\;
SELECT p.tenant_id, p.is_active, p.daily_capacity, p.price, p.currency, (SELECT count(*) FROM bookings_booking b
  WHERE b.package_id = p.id AND b.date = {DAY} AND {ACTIVE_SQL} AND b.id IS DISTINCT FROM NULL),
  (SELECT (clock_timestamp() AT TIME ZONE t.time_zone)::date FROM core_tenant t WHERE t.id = p.tenant_id) AS today,
  clock_timestamp(), p.name FROM bookings_package p WHERE p.id = :package_id \\gset
\\if :is_active and :tenant_id = :tenant and :count < :daily_capacity
\\set exclusive :daily_capacity = 1
WITH booking AS (INSERT INTO bookings_booking (tenant_id, package_id, date, customer_name, customer_email, status,
  hold_expires_at, amount, currency, exclusive, origin_proposal_id, created_at, confirmed_at, cancelled_at,
  refunded_at, version)
 VALUES (:tenant_id, :package_id, {DAY}, 'c:k', 'c:k@example.com', 'held',
  ':clock_timestamp'::timestamptz + interval ':hold_ttl seconds', :price, ':currency', :exclusive, {origin},
  ':clock_timestamp'::timestamptz, NULL, NULL, NULL, 1)
 RETURNING bookings_booking.id, bookings_booking.created_at),
checkout AS (INSERT INTO bookings_checkout (booking_id, provider, state, provider_checkout_id, url,
  provider_payment_id, amount, currency, error, refund_state, provider_refund_id, failed_refund_ids,
  refund_attempts, refund_key_round, refund_error, refund_requested_at, next_retry_at, looked_up_at, created_at,
  updated_at)
 VALUES ((SELECT id FROM booking), 'sandbox', 'creating', NULL, '', '', :price, ':currency', '', '', '',
  '{{}}'::varchar(255)[], 0, 0, '', NULL, NULL, NULL, DEFAULT, DEFAULT)
 RETURNING bookings_checkout.id, bookings_checkout.created_at, bookings_checkout.updated_at){followed}
SELECT *, (SELECT id FROM booking) AS pgbench_booking_id, (SELECT id FROM checkout) AS pgbench_checkout_id
 FROM booking, checkout{joined} \\gset checkout_
\\set booking_id :checkout_pgbench_booking_id
\\set checkout_id :checkout_pgbench_checkout_id
"""


def open_sql():
    """Checkout.objects.open after the provider answered (the sandbox's id and URL): the app's one statement,
    which opens the checkout and owes the customer's e-mail with its job (Notification.objects.owe_if)."""
    from types import SimpleNamespace

    from bookings.models import Checkout
    from bookings.notifications import held_notice
    from core.models import Notification

    provider_id = f"cs-sandbox-{PGBENCH_ID}"  # a word boundary before the id: each checkout its own
    url = f"http://127.0.0.1:8000/sandbox/checkout/{provider_id}"
    held = SimpleNamespace(  # what the hold's \\gset gave the script, as stand-ins
        pk=PGBENCH_BOOKING,
        customer_name="c-pgbench",
        customer_email="c-pgbench@example.com",
        package_name="Bench day",
        date=EPOCH,
        amount=Decimal("100.00"),
        currency="USD",
        hold_expires_at=datetime(2000, 1, 1, tzinfo=UTC),
    )
    opening = Checkout.objects.opening(PGBENCH_ID, provider_id, url, "")
    statement = script_of(
        *Notification.objects.owe_if_statement(opening, **held_notice(held, pay_url=url)),
        {
            rf"\b{PGBENCH_ID}\b": ":checkout_id",
            rf"'booking:{PGBENCH_BOOKING}'": "'booking:' || :booking_id",
            rf"\b{PGBENCH_BOOKING}\b": ":booking_id",
            r"\bc-pgbench\b": "c:k",
        },
    )
    return f"{statement};\n"


def date_anomalies():
    return scalar(
        "SELECT count(*) FROM (SELECT 1 FROM bookings_booking b JOIN bookings_package p ON p.id = b.package_id "
        "WHERE b.status = 'confirmed' OR (b.status = 'held' AND b.hold_expires_at > statement_timestamp()) "
        "GROUP BY b.package_id, b.date, p.daily_capacity HAVING count(*) > p.daily_capacity) AS over"
    )


class DateHold(Operation):
    """``bookings.services.start_checkout``: package with capacity 1, date = first day + t."""

    name = "date_hold"

    @property
    def PGBENCH(self):  # a property: the scripts list the models' columns
        hold = "\\set day :base_day + :t\nBEGIN \\;\n" + hold_sql("NULL")
        return hold + "COMMIT;\n" + open_sql() + "\\else\nROLLBACK;\n\\endif\n"

    def variables(self):
        from django.conf import settings

        return {
            **super().variables(),
            "package_id": self.ctx.package.pk,
            "base_day": self.ctx.base_day,
            "hold_ttl": int(settings.BOOKING_HOLD_TTL.total_seconds()),
        }

    def day(self, t):
        return EPOCH + timedelta(days=self.ctx.base_day + t)

    def race_scenario(self):
        from bookings.race_scenarios import DateCheckoutHold

        return DateCheckoutHold(self.ctx.tenant, package=self.ctx.package, first_day=self.day(0))

    def setup(self, rows):
        from bookings.models import Booking, Checkout
        from core.models import Notification

        truncate(Notification, Checkout, Booking)  # every hold owes its own notice (one per booking id)
        analyze(Checkout, Booking)

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

    @property
    def PGBENCH(self):  # a property: the scripts list the models' columns
        from core.prepared import returned_by
        from proposals.models import Proposal
        from proposals.race_scenarios import CHAT

        proposal = Proposal._meta.db_table
        decision = Proposal.objects.decision(
            PGBENCH_ID, Proposal.Status.CONFIRMED, tenant=PGBENCH_TENANT, session_id=CHAT
        )
        quote = connection.ops.quote_name
        new_booking = returned_by(quote("booking"), "id", quote)  # as the hold's statement names it
        hold = {"origin_proposal_id": PGBENCH_ID}
        execution = script_of(*Proposal.objects.execution(connection.alias, hold, new_booking))
        return f"""\
\\set pid :base_id + :t
\\set day :base_day + :t
BEGIN \\;
{decide_script(decision)} \\gset decided_
\\if :decided_lockstep_won
{hold_sql(":pid", then=execution)}COMMIT;
{open_sql()}\\else
UPDATE {proposal} SET status = 'failed', failure_code = 'date_unavailable'
 WHERE ({proposal}.id = :pid AND {proposal}.status = 'confirmed');
COMMIT;
\\endif
\\else
ROLLBACK;
\\endif
"""

    def variables(self):
        return {**super().variables(), "base_id": BASE_ID}

    def race_scenario(self):
        from proposals.race_scenarios import ProposalConfirm

        return ProposalConfirm(self.ctx.tenant, first_id=BASE_ID)

    def setup(self, rows):
        from bookings.models import Booking, Checkout
        from core.models import Notification
        from proposals.models import Proposal

        truncate(Proposal, Notification, Checkout, Booking)
        template = self.scenario.create_target(self.ctx.package, self.day(0))
        clone(Proposal, template.pk, rows, {"id": f"{BASE_ID} + g", "date": "src.date + g"})
        analyze(Proposal, Checkout, Booking)

    def http(self, t, k):
        from proposals.race_scenarios import CHAT

        return f"/api/t/{self.ctx.slug}/proposals/{BASE_ID + t}/confirm", {"session_id": CHAT}, True

    def wins(self):
        return scalar(f"SELECT count(*) FROM bookings_booking WHERE {BOOKING_ACTIVE}")


# --- profile undo ------------------------------------------------------------------


class ProfileUndo(Operation):
    """``ProfileAuditLog.objects.undo``: entry BASE_ID + t renamed profile BASE_ID + t from A to B."""

    name = "profile_undo"

    @property
    def PGBENCH(self):  # a property: the scripts list the models' columns
        from django.contrib.auth import get_user_model

        from profiles.models import Profile, ProfileAuditLog

        User = get_user_model()
        log, profile, user = ProfileAuditLog._meta.db_table, Profile._meta.db_table, User._meta.db_table
        # The bench never edits a profile after its entry, so the script skips the app's stale-field check.
        return f"""\
\\set eid :base_id + :t
BEGIN \\;
WITH lockstep_tried(got) AS MATERIALIZED (
SELECT pg_try_advisory_xact_lock(hashtextextended('profiles.audit_undo:' || :tenant || ':' || :eid, 0)))
SELECT lockstep_tried.got, gated.* FROM lockstep_tried LEFT JOIN LATERAL (
SELECT {columns(ProfileAuditLog)}, ({log}.undone_at IS NULL) AS pgbench_open, {columns(User)}
 FROM {log} LEFT OUTER JOIN {user} ON ({log}.actor_id = {user}.id)
 WHERE ((lockstep_tried.got) AND {log}.id = :eid AND {log}.tenant_id = :tenant) ORDER BY {log}.id ASC LIMIT 1
 FOR UPDATE OF {log} NOWAIT) AS gated ON true \\gset
\\if :got
\\if :pgbench_open
SELECT {columns(Profile)}, clock_timestamp() AS db_now FROM {profile}
 WHERE ({profile}.id = :profile_id AND {profile}.tenant_id = :tenant) ORDER BY {profile}.id ASC LIMIT 1
 FOR UPDATE OF {profile} NOWAIT \\gset
WITH changed AS (UPDATE {profile} SET version = :version + 1, first_name = 'A' WHERE {profile}.id = :profile_id),
entry AS (INSERT INTO {log} (tenant_id, profile_id, action, old_data, new_data, actor_id, created_at, undone_at,
  undone_by_id, undo_reason, undo_entry_id) VALUES (:tenant, :profile_id, 'undo', '{{"first_name": "B"}}'::jsonb,
  '{{"first_name": "A"}}'::jsonb, :user, DEFAULT, NULL, NULL, '', NULL)
 RETURNING {log}.id, {log}.created_at),
undone AS (UPDATE {log} SET undone_at = ':db_now'::timestamptz, undone_by_id = :user, undo_reason = 'bench',
  undo_entry_id = (SELECT id FROM entry) WHERE {log}.id = :eid)
SELECT * FROM entry;
COMMIT;
\\else
ROLLBACK;
\\endif
\\else
ROLLBACK;
\\endif
"""

    def variables(self):
        return {**super().variables(), "base_id": BASE_ID, "user": self.ctx.user.pk}

    def race_scenario(self):
        from profiles.race_scenarios import ProfileUndo

        return ProfileUndo(self.ctx.tenant, actor=self.ctx.user, first_id=BASE_ID)

    def setup(self, rows):
        from profiles.models import Profile, ProfileAuditLog

        truncate(ProfileAuditLog, Profile)
        profile = Profile.objects.create(id=BASE_ID, tenant=self.ctx.tenant, first_name="B", sex="male", version=2)
        clone(Profile, profile.pk, rows, {"id": f"{BASE_ID} + g"})
        # Version 2 = its create entry + the update to undo (the audit invariant); the create
        # entries take ids 1..rows.
        created = ProfileAuditLog.objects.create(
            tenant=self.ctx.tenant,
            profile=profile,
            action="create",
            old_data={},
            new_data={"first_name": "A", "sex": "male"},
            actor=self.ctx.user,
        )
        clone(ProfileAuditLog, created.pk, rows, {"profile_id": f"{BASE_ID} + g"})
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
        # An undo entry is later than the entry it undoes (audit_links_transition): the runs' undo entries
        # take ids after the targets', as they would in a log written in order.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)", [ProfileAuditLog._meta.db_table, BASE_ID + rows]
            )
        analyze(Profile, ProfileAuditLog)

    def http(self, t, k):
        return f"/api/t/{self.ctx.slug}/audit-log/{BASE_ID + t}/undo", {"reason": self.scenario.REASON}, True

    def wins(self):
        return scalar("SELECT count(*) FROM profiles_profileauditlog WHERE action = 'undo'")

    def anomalies(self):
        return scalar(
            "SELECT count(*) FROM (SELECT profile_id FROM profiles_profileauditlog WHERE action = 'undo' "
            "GROUP BY profile_id HAVING count(*) > 1) AS twice"
        )


OPERATIONS = [ProposalConfirm, SessionConsume, PromoRedeem, DateHold, ProfileUndo]
