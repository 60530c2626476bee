import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.exceptions import InvalidInput
from core.guards import database_clock
from promos import exceptions as errors
from promos.managers import hash_secret
from promos.models import PromoCode, PromoUsage, RedemptionSession
from tests.promos.factories import SECRET, PromoCodeFactory, PromoUsageFactory, RedemptionSessionFactory
from tests.promos.helpers import assert_invariant, statements

pytestmark = pytest.mark.django_db

LOCK_SELF = 'FOR NO KEY UPDATE OF "promos_promocode"'


def redeem(promo, customer="alice", amount="100.00", **kwargs):
    return PromoCode.objects.redeem(promo.code, tenant=promo.tenant, customer=customer, amount=amount, **kwargs)


# --- redeem --------------------------------------------------------------------------------------


def test_redeem_inserts_usage_and_counts_it(tenant):
    promo = PromoCodeFactory(tenant=tenant, code="Spring15", bonus_type="percentage", bonus_value=Decimal("15"))
    usage = PromoCode.objects.redeem("sPRING15", tenant=tenant, customer="alice", amount="33.33", reference="order-1")
    assert usage.bonus_amount == Decimal("5.00")
    assert usage.base_amount == Decimal("33.33")
    assert (usage.customer, usage.reference, usage.tenant_id) == ("alice", "order-1", tenant.pk)
    assert usage.created_at is not None
    assert assert_invariant(promo) == 1
    stored = PromoCode.objects.get(pk=promo.pk)
    assert (usage.promo.times_used, usage.promo.updated_at) == (1, stored.updated_at)  # as the use left it


def test_redeem_query_count_and_lock_sql(tenant):
    promo = PromoCodeFactory(tenant=tenant, per_customer_limit=3, total_usage_limit=10)
    with CaptureQueriesContext(connection) as queries:
        redeem(promo)
    sql = statements(queries)
    # SET LOCAL lock_timeout, then the row's lock and the clock above it, in one round trip; then one
    # statement: re-read (clock + customer's uses), judge, INSERT the usage (which counts itself on the code)
    assert len(sql) == 2, sql
    timeout, lock = sql[0].split("; ", 1)
    assert timeout == "SELECT set_config('lock_timeout', '1000ms', true)"
    assert lock.endswith(f"{LOCK_SELF}) locked") and "JOIN" not in lock, lock  # the code row only, never the tenant's
    assert lock.startswith("SELECT locked.") and ", clock_timestamp() FROM (SELECT" in lock  # once the lock is held
    assert sql[1].startswith("WITH promo AS") and "clock_timestamp()" in sql[1]
    assert "INSERT INTO" in sql[1] and "UPDATE" not in sql[1]  # times_used is the usage trigger's to write


def test_redeem_nowait_mode_locks_with_nowait(tenant):
    promo = PromoCodeFactory(tenant=tenant)
    with CaptureQueriesContext(connection) as queries:
        redeem(promo, nowait=True)
    sql = statements(queries)
    assert len(sql) == 2 and sql[0].endswith(f"{LOCK_SELF} NOWAIT) locked") and "JOIN" not in sql[0], sql


@pytest.mark.parametrize(
    ("terms", "refused"),
    [
        ({"is_active": False}, errors.PromoInactive),
        ({"ends_at_in_past": True}, errors.PromoExpired),
        ({"starts_at_in_future": True}, errors.PromoNotStarted),
        ({"total_usage_limit": 1, "times_used": 1}, errors.PromoExhausted),
    ],
)
def test_a_code_the_locked_row_refuses_is_refused_without_a_second_statement(tenant, terms, refused):
    """Inactive, outside its window, used up: judged on the row as the lock read it, at the clock read above the
    lock; no usage of the customer's bears on it, so the judging statement is not sent and the lock goes sooner."""
    now = database_clock()
    fields = {"is_active": terms.get("is_active", True), "total_usage_limit": terms.get("total_usage_limit")}
    if terms.get("ends_at_in_past"):
        fields.update(starts_at=now - timedelta(days=2), ends_at=now - timedelta(days=1))
    if terms.get("starts_at_in_future"):
        fields.update(starts_at=now + timedelta(days=1))
    promo = PromoCodeFactory(tenant=tenant, **fields)
    if terms.get("times_used"):
        redeem(promo)
    with CaptureQueriesContext(connection) as queries, pytest.raises(refused):
        redeem(promo)
    sql = statements(queries)
    assert len(sql) == 1 and sql[0].endswith(f"{LOCK_SELF}) locked"), sql
    assert PromoUsage.objects.filter(promo=promo).count() == terms.get("times_used", 0)


def test_a_customer_over_their_own_limit_is_judged_by_the_second_statement(tenant):
    """The customer's live uses are another table's rows: counted by the judging statement, on a snapshot taken
    once the lock is held, never from the locked row."""
    promo = PromoCodeFactory(tenant=tenant, per_customer_limit=1, total_usage_limit=10)
    redeem(promo)
    with CaptureQueriesContext(connection) as queries, pytest.raises(errors.PromoCustomerLimit):
        redeem(promo)
    sql = statements(queries)
    assert len(sql) == 2 and sql[1].startswith("WITH promo AS"), sql


def test_unknown_code_and_other_tenants_code_are_not_found(tenant, other_tenant):
    PromoCodeFactory(tenant=other_tenant, code="THEIRS")
    for code in ["THEIRS", "nope", "x" * 500, ""]:
        with pytest.raises(errors.PromoNotFound):
            PromoCode.objects.redeem(code, tenant=tenant, customer="alice", amount="10")
    assert PromoUsage.objects.count() == 0


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (dict(is_active=False), errors.PromoInactive),
        (dict(starts_at_offset=timedelta(hours=1)), errors.PromoNotStarted),
        (dict(ends_at_offset=timedelta(seconds=-1)), errors.PromoExpired),
    ],
)
def test_redeem_refusals_by_state(tenant, fields, error):
    now = database_clock()
    if offset := fields.pop("starts_at_offset", None):
        fields["starts_at"] = now + offset
    if offset := fields.pop("ends_at_offset", None):
        fields["ends_at"] = now + offset
        fields["starts_at"] = now - timedelta(days=1)
    promo = PromoCodeFactory(tenant=tenant, **fields)
    with pytest.raises(error):
        redeem(promo)
    with pytest.raises(error):
        PromoCode.objects.validate(promo.code, tenant=tenant, customer="alice", amount="1")
    assert assert_invariant(promo) == 0


def test_total_limit_and_per_customer_limit(tenant):
    promo = PromoCodeFactory(tenant=tenant, total_usage_limit=3, per_customer_limit=2)
    redeem(promo, "alice")
    redeem(promo, "alice")
    with pytest.raises(errors.PromoCustomerLimit):
        redeem(promo, "alice")
    redeem(promo, "bob")
    with pytest.raises(errors.PromoExhausted):
        redeem(promo, "carol")
    assert assert_invariant(promo) == 3


def test_voided_usage_frees_both_limits(tenant):
    promo = PromoCodeFactory(tenant=tenant, total_usage_limit=1, per_customer_limit=1)
    usage = redeem(promo)
    with pytest.raises(errors.PromoExhausted):
        redeem(promo)
    PromoUsage.objects.void(usage.pk, tenant=tenant)
    redeem(promo)
    assert assert_invariant(promo) == 1


def test_redeem_refuses_bad_amounts_without_writing(tenant):
    promo = PromoCodeFactory(tenant=tenant)
    for amount in ["NaN", "Infinity", "1e400", "-5", "0", "1.005", "abc", None, "1000000.01"]:
        with pytest.raises(InvalidInput):
            redeem(promo, amount=amount)
    assert assert_invariant(promo) == 0


# --- validate (preview) -------------------------------------------------------------------------


def test_validate_is_one_read_without_lock_or_write(tenant):
    promo = PromoCodeFactory(tenant=tenant, bonus_type="percentage", bonus_value=Decimal("15"), per_customer_limit=1)
    with CaptureQueriesContext(connection) as queries:
        found, bonus = PromoCode.objects.validate("code" + promo.code[4:], tenant=tenant, customer="a", amount="33.33")
    assert (found.pk, bonus) == (promo.pk, Decimal("5.00"))
    sql = statements(queries)
    assert len(sql) == 1
    assert sql[0].startswith("SELECT") and "FOR " not in sql[0]
    assert assert_invariant(promo) == 0


def test_validate_reports_customer_limit_and_exhaustion(tenant):
    promo = PromoCodeFactory(tenant=tenant, total_usage_limit=2, per_customer_limit=1)
    redeem(promo, "alice")
    with pytest.raises(errors.PromoCustomerLimit):
        PromoCode.objects.validate(promo.code, tenant=tenant, customer="alice", amount="5")
    redeem(promo, "bob")
    with pytest.raises(errors.PromoExhausted):
        PromoCode.objects.validate(promo.code, tenant=tenant, customer="carol", amount="5")


def test_preview_then_deactivate_then_redeem_is_refused(tenant):
    """Seed 004: a preview said valid, the shop deactivated, the submit must be refused."""
    promo = PromoCodeFactory(tenant=tenant)
    PromoCode.objects.validate(promo.code, tenant=tenant, customer="alice", amount="20")
    PromoCode.objects.deactivate(promo.pk, tenant=tenant)
    with pytest.raises(errors.PromoInactive):
        redeem(promo)
    PromoCode.objects.activate(promo.pk, tenant=tenant)
    redeem(promo)
    assert assert_invariant(promo) == 1


def test_deactivate_other_tenants_code_is_not_found(tenant, other_tenant):
    promo = PromoCodeFactory(tenant=other_tenant)
    with pytest.raises(errors.PromoNotFound):
        PromoCode.objects.deactivate(promo.pk, tenant=tenant)
    assert PromoCode.objects.get(pk=promo.pk).is_active


def test_deactivate_takes_the_row_lock(tenant):
    promo = PromoCodeFactory(tenant=tenant)
    with CaptureQueriesContext(connection) as queries:
        PromoCode.objects.deactivate(promo.pk, tenant=tenant)
    locks = [sql for sql in statements(queries) if "FOR NO KEY UPDATE" in sql]
    assert len(locks) == 1 and locks[0].endswith(LOCK_SELF) and "JOIN" not in locks[0], locks
    assert not PromoCode.objects.get(pk=promo.pk).is_active


# --- definitions ---------------------------------------------------------------------------------


def test_codes_are_unique_per_tenant_case_insensitively(tenant, other_tenant):
    PromoCode.objects.create_code(tenant=tenant, code="Summer", bonus_type="fixed", bonus_value=Decimal("5"))
    with pytest.raises(errors.PromoCodeTaken):
        PromoCode.objects.create_code(tenant=tenant, code="SUMMER", bonus_type="fixed", bonus_value=Decimal("5"))
    PromoCode.objects.create_code(tenant=other_tenant, code="SUMMER", bonus_type="fixed", bonus_value=Decimal("5"))
    other = PromoCode.objects.create_code(tenant=tenant, code="Winter", bonus_type="fixed", bonus_value=Decimal("5"))
    with pytest.raises(errors.PromoCodeTaken):
        PromoCode.objects.update_code(other.pk, tenant=tenant, code="summer")


@pytest.mark.parametrize(
    "fields",
    [
        dict(bonus_type="percentage", bonus_value=Decimal("100.01")),
        dict(bonus_type="fixed", bonus_value=Decimal("0")),
        dict(bonus_type="fixed", bonus_value=Decimal("1"), max_bonus=Decimal("0")),
        dict(bonus_type="fixed", bonus_value=Decimal("1"), total_usage_limit=0),
    ],
)
def test_database_checks_refuse_bad_definitions(tenant, fields):
    with pytest.raises(errors.PromoInvalid):
        PromoCode.objects.create_code(tenant=tenant, code="BAD", **fields)


def test_window_must_end_after_start(tenant):
    now = database_clock()
    with pytest.raises(errors.PromoInvalid):
        PromoCode.objects.create_code(
            tenant=tenant, code="W", bonus_type="fixed", bonus_value=Decimal("1"), starts_at=now, ends_at=now
        )


def test_limit_cannot_drop_below_uses(tenant):
    promo = PromoCodeFactory(tenant=tenant, total_usage_limit=5)
    redeem(promo, "a")
    redeem(promo, "b")
    with pytest.raises(errors.PromoLimitBelowUsage):
        PromoCode.objects.update_code(promo.pk, tenant=tenant, total_usage_limit=1)
    assert PromoCode.objects.update_code(promo.pk, tenant=tenant, total_usage_limit=2).total_usage_limit == 2


def test_used_code_cannot_be_deleted(tenant):
    promo = PromoCodeFactory(tenant=tenant)
    redeem(promo)
    with pytest.raises(errors.PromoInUse):
        PromoCode.objects.delete_code(promo.pk, tenant=tenant)
    unused = PromoCodeFactory(tenant=tenant)
    PromoCode.objects.delete_code(unused.pk, tenant=tenant)
    assert not PromoCode.objects.filter(pk=unused.pk).exists()


# --- void ----------------------------------------------------------------------------------------


def test_void_gives_the_use_back_exactly_once(tenant):
    promo = PromoCodeFactory(tenant=tenant)
    usage = PromoUsageFactory(promo=promo)
    with CaptureQueriesContext(connection) as queries:
        voided = PromoUsage.objects.void(usage.pk, tenant=tenant)
    assert voided.voided_at is not None
    assert len(statements(queries)) == 2  # UPDATE usage (filtered; its trigger counts the code down), read back
    assert assert_invariant(promo) == 0
    with pytest.raises(errors.UsageAlreadyVoided):
        PromoUsage.objects.void(usage.pk, tenant=tenant)
    assert assert_invariant(promo) == 0


def test_void_of_unknown_or_other_tenants_usage(tenant, other_tenant):
    usage = PromoUsageFactory(promo=PromoCodeFactory(tenant=other_tenant))
    for pk in [usage.pk, 10**12]:
        with pytest.raises(errors.UsageNotFound):
            PromoUsage.objects.void(pk, tenant=tenant)
    assert PromoUsage.objects.get(pk=usage.pk).voided_at is None


# --- redemption sessions ------------------------------------------------------------------------


def test_create_session_keeps_only_the_secret_hash(tenant):
    session, secret = RedemptionSession.objects.create_session(tenant=tenant, customer="alice", max_amount="50")
    assert len(secret) >= 40
    assert session.secret_hash == hash_secret(secret) != secret
    assert session.status == "pending"
    assert timedelta(minutes=14) < session.expires_at - session.created_at <= timedelta(minutes=15, seconds=1)


def test_a_sessions_limit_is_at_most_its_currencys_ceiling(tenant):
    """What a card processor charges at once in the session's currency (USD when none is named)."""
    for currency in ({}, {"currency": "USD"}, {"currency": None}):
        with pytest.raises(errors.InvalidAmount) as refusal:
            RedemptionSession.objects.create_session(tenant=tenant, customer="a", max_amount="1000000", **currency)
        assert refusal.value.params == {"maximum": "999999.99"}
    assert not RedemptionSession.objects.exists()
    session, _secret = RedemptionSession.objects.create_session(
        tenant=tenant, customer="a", max_amount="99999999", currency="JPY"
    )
    assert (session.max_amount, session.currency) == (Decimal("99999999"), "JPY")


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(days=8)])
def test_create_session_refuses_silly_ttls(tenant, ttl):
    with pytest.raises(InvalidInput) as refusal:
        RedemptionSession.objects.create_session(tenant=tenant, customer="a", max_amount="5", expires_in=ttl)
    assert refusal.value.code == "session_lifetime_out_of_range"
    assert refusal.value.params == {"minimum": 1, "maximum": 7 * 24 * 3600}
    assert not RedemptionSession.objects.exists()


def test_approve_with_secret_then_consume_once(tenant):
    session = RedemptionSessionFactory(tenant=tenant)
    with pytest.raises(errors.SessionNotApproved):
        RedemptionSession.objects.consume(session.session_id, tenant=tenant, amount="10")
    with pytest.raises(errors.SessionNotFound):
        RedemptionSession.objects.approve(session.session_id, secret="wrong")
    approved = RedemptionSession.objects.approve(session.session_id, secret=SECRET)
    assert approved.status == "approved" and approved.approved_at is not None
    with pytest.raises(errors.SessionNotPending):
        RedemptionSession.objects.reject(session.session_id, secret=SECRET)
    with pytest.raises(errors.AmountExceedsLimit):
        RedemptionSession.objects.consume(session.session_id, tenant=tenant, amount="100.01")
    used = RedemptionSession.objects.consume(session.session_id, tenant=tenant, amount="100")
    assert (used.status, used.used_amount, used.currency) == ("used", Decimal("100.00"), "USD")
    with pytest.raises(errors.SessionAlreadyUsed):
        RedemptionSession.objects.consume(session.session_id, tenant=tenant, amount="1")
    used = RedemptionSession.objects.get(pk=session.pk)
    assert (used.status, used.used_amount) == ("used", Decimal("100.00"))
    assert used.approved_at <= used.used_at < used.expires_at


def test_consume_success_is_one_statement_that_locks_judges_and_uses_the_row(tenant):
    session = RedemptionSessionFactory(tenant=tenant, status="approved")
    with CaptureQueriesContext(connection) as queries:
        RedemptionSession.objects.consume(session.session_id, tenant=tenant, amount="10")
    sql = statements(queries)
    assert len(sql) == 1, sql
    sql = sql[0]
    assert sql.startswith("WITH locked AS (SELECT") and "FOR NO KEY UPDATE" in sql and "UPDATE" in sql
    for condition in [
        '"tenant_id" =',
        "\"status\" = 'approved'",
        '"expires_at" > (clock_timestamp())',
        '"used_at" IS NULL',
        '"max_amount" >=',
    ]:
        assert condition in sql, (condition, sql)


def test_consume_refusal_is_named_by_the_same_statement(tenant):
    session = RedemptionSessionFactory(tenant=tenant, status="approved")
    with CaptureQueriesContext(connection) as queries:
        with pytest.raises(errors.AmountExceedsLimit):
            RedemptionSession.objects.consume(session.session_id, tenant=tenant, amount="1000")
    assert len(statements(queries)) == 1


def test_consume_unknown_or_other_tenants_session(tenant, other_tenant):
    theirs = RedemptionSessionFactory(tenant=other_tenant, status="approved")
    for session_id in [theirs.session_id, uuid.uuid4()]:
        with pytest.raises(errors.SessionNotFound):
            RedemptionSession.objects.consume(session_id, tenant=tenant, amount="1")
    assert RedemptionSession.objects.get(pk=theirs.pk).status == "approved"


def test_expired_session_cannot_be_answered_or_consumed(tenant):
    pending = RedemptionSessionFactory(tenant=tenant, expires_in=timedelta(seconds=-1))
    approved = RedemptionSessionFactory(tenant=tenant, status="approved", expires_in=timedelta(seconds=-1))
    with pytest.raises(errors.SessionExpired):
        RedemptionSession.objects.approve(pending.session_id, secret=SECRET)
    with pytest.raises(errors.SessionExpired):
        RedemptionSession.objects.consume(approved.session_id, tenant=tenant, amount="1")
    with pytest.raises(errors.SessionExpired):
        RedemptionSession.objects.cancel(approved.session_id, tenant=tenant)
    assert RedemptionSession.objects.expire_due() == 2
    assert RedemptionSession.objects.expire_due() == 0
    with pytest.raises(errors.SessionExpired):
        RedemptionSession.objects.consume(approved.session_id, tenant=tenant, amount="1")
    assert set(RedemptionSession.objects.values_list("status", flat=True)) == {"expired"}


def test_reject_and_cancel(tenant):
    rejected = RedemptionSessionFactory(tenant=tenant)
    RedemptionSession.objects.reject(rejected.session_id, secret=SECRET)
    with pytest.raises(errors.SessionNotApproved):
        RedemptionSession.objects.consume(rejected.session_id, tenant=tenant, amount="1")
    with pytest.raises(errors.SessionNotCancellable):
        RedemptionSession.objects.cancel(rejected.session_id, tenant=tenant)

    approved = RedemptionSessionFactory(tenant=tenant, status="approved")
    cancelled = RedemptionSession.objects.cancel(approved.session_id, tenant=tenant)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    with pytest.raises(errors.SessionNotApproved):
        RedemptionSession.objects.consume(approved.session_id, tenant=tenant, amount="1")
    with pytest.raises(errors.SessionNotPending):
        RedemptionSession.objects.approve(approved.session_id, secret=SECRET)

    used = RedemptionSessionFactory(tenant=tenant, status="approved")
    RedemptionSession.objects.consume(used.session_id, tenant=tenant, amount="1")
    with pytest.raises(errors.SessionAlreadyUsed):
        RedemptionSession.objects.cancel(used.session_id, tenant=tenant)


def test_cancel_other_tenants_session_is_not_found(tenant, other_tenant):
    theirs = RedemptionSessionFactory(tenant=other_tenant)
    with pytest.raises(errors.SessionNotFound):
        RedemptionSession.objects.cancel(theirs.session_id, tenant=tenant)


@pytest.mark.django_db(transaction=True)  # as in production: the consume is its own transaction
def test_consume_when_expiry_falls_between_where_and_set_is_session_expired(tenant):
    """Regression: WHERE and SET each read clock_timestamp(); expiry between the two reads made the
    CHECK used_at < expires_at fail, an IntegrityError (500). It is session_expired, nothing written.

    The trigger stands in for that microsecond: it moves the SET's timestamp onto expires_at.
    """
    session = RedemptionSessionFactory(tenant=tenant, status="approved")
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION pg_temp.late_clock() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN NEW.used_at := NEW.expires_at; RETURN NEW; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER late_clock BEFORE UPDATE ON promos_redemptionsession FOR EACH ROW "
            "WHEN (NEW.status = 'used') EXECUTE FUNCTION pg_temp.late_clock()"
        )
    with pytest.raises(errors.SessionExpired):
        RedemptionSession.objects.consume(session.session_id, tenant=tenant, amount="10")
    session.refresh_from_db()
    assert (session.status, session.used_at, session.used_amount) == ("approved", None, None)


def test_delete_code_locks_the_row_before_looking_for_usages(tenant):
    promo = PromoCodeFactory(tenant=tenant)
    with CaptureQueriesContext(connection) as queries:
        PromoCode.objects.delete_code(promo.pk, tenant=tenant)
    sql = statements(queries)
    assert "set_config('lock_timeout'" in sql[0]
    assert sql[1].endswith('FOR UPDATE OF "promos_promocode"') and "JOIN" not in sql[1], sql[1]
    assert "promos_promousage" in sql[2]  # the usages check, issued after the lock is held
    assert not PromoCode.objects.filter(pk=promo.pk).exists()


def test_consume_refuses_an_expired_session_by_its_own_where_even_without_the_backstop_check(tenant):
    """The WHERE's expiry condition decides on its own: with the CHECK used_at < expires_at dropped, a
    consume after expiry is still refused and writes nothing (each of the two guards is proven alone)."""
    from django.db.models import Value

    from core.guards import ClockNow
    from tests.promos.helpers import bypassing

    approved_earlier = ClockNow() - Value(timedelta(minutes=1))  # approved before it lapsed
    session = RedemptionSessionFactory(tenant=tenant, status="approved", approved_at=approved_earlier)
    RedemptionSession.objects.filter(pk=session.pk).update(expires_at=ClockNow() - Value(timedelta(seconds=1)))
    with bypassing(RedemptionSession, constraints=["redemption_used_before_expiry"]):
        with pytest.raises(errors.SessionExpired):
            RedemptionSession.objects.consume(session.session_id, tenant=tenant, amount="10.00")
        session.refresh_from_db()
        assert (session.status, session.used_at) == ("approved", None)
