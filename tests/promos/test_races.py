"""Real concurrent attempts on separate connections, lined up on a barrier.

Each storm asserts the exact winners, every loser's code and, for promo codes,
the invariant ``times_used == count(non-voided usages) <= total_usage_limit``.
The controls run the same storm against the race scenarios' naive check-then-act
(promos/race_scenarios.py) and show it goes wrong on this database.
"""

import random
import threading
import time
from collections import Counter
from datetime import timedelta
from decimal import Decimal

import pgtrigger
import pytest
from django.db import IntegrityError, connections
from django.db.models import Value

from core.exceptions import LockContended
from core.guards import ClockNow
from promos import managers
from promos.models import PromoCode, PromoUsage, RedemptionSession
from promos.race_scenarios import PromoRedeem, SessionConsume
from tests.factories import TenantFactory
from tests.promos.factories import SECRET, PromoCodeFactory, RedemptionSessionFactory
from tests.promos.helpers import assert_invariant
from tests.races import OpenTransaction, attempted_while_held, lock_timeout, row_locked, run_concurrently, tally

pytestmark = pytest.mark.django_db(transaction=True)


def clock():
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


retried = Counter()


def retrying(call, *, attempts=6):
    """What a client does with 409 resource_locked + Retry-After: back off briefly, try again.

    On an idle machine the storms below never need it (the lock_timeout absorbs
    the queue); when the machine is saturated a waiter can run out of lock
    timeout, and the exact-outcome assertions are about the final answers.
    """
    for attempt in range(attempts):
        try:
            return call()
        except LockContended:
            if attempt == attempts - 1:
                raise
            retried["resource_locked"] += 1
            time.sleep(0.05 + random.random() * 0.1)


def redeemer(promo, customers, *, retry=True, **kwargs):
    def attempt(i):
        def call():
            return PromoCode.objects.redeem(
                promo.code, tenant=promo.tenant, customer=customers(i), amount=Decimal("40.00"), **kwargs
            )

        return retrying(call) if retry else call()

    return attempt


# --- promo codes ---------------------------------------------------------------------------------


def test_60_redeems_20_customers_limit_5_exactly_5_winners():
    promo = PromoCodeFactory(tenant=TenantFactory(), total_usage_limit=5, per_customer_limit=1)
    retried.clear()
    started = time.monotonic()
    outcomes = run_concurrently(redeemer(promo, lambda i: f"customer-{i % 20}"), 60)
    elapsed = time.monotonic() - started
    codes = tally(outcomes)
    print(f"60-redeem storm: {dict(codes)}, {retried['resource_locked']} retries, {elapsed * 1000:.0f} ms")
    assert codes["ok"] == 5, codes
    assert set(codes) <= {"ok", "promo_exhausted", "promo_customer_limit"}, codes
    winners = {outcome.value.customer for outcome in outcomes if outcome.ok}
    assert len(winners) == 5
    assert assert_invariant(promo) == 5
    assert elapsed < 10


@pytest.mark.control("promo redeem")
def test_naive_redeem_over_redeems():
    """The bug of seed 003/004: check in Python, then act, no lock (the app works 0.3 s in between)."""
    redeems = PromoRedeem(TenantFactory(), window=0.3)
    promo = redeems.create_target(total_usage_limit=5, per_customer_limit=1)
    outcomes = run_concurrently(lambda i: redeems.naive(0, i % 20), 60)
    winners = sum(outcome.ok for outcome in outcomes)
    print(f"naive 60-redeem storm: {dict(tally(outcomes))}")
    assert winners > 5, tally(outcomes)
    promo.refresh_from_db()
    assert PromoUsage.objects.filter(promo=promo).count() > promo.total_usage_limit
    assert promo.times_used != PromoUsage.objects.filter(promo=promo).count()  # lost updates too


def test_one_customer_20_redeems_per_customer_limit_2():
    promo = PromoCodeFactory(tenant=TenantFactory(), per_customer_limit=2)
    outcomes = run_concurrently(redeemer(promo, lambda i: "alice"), 20)
    assert tally(outcomes) == {"ok": 2, "promo_customer_limit": 18}
    assert assert_invariant(promo) == 2


def test_deactivation_during_a_storm():
    """No redeem that started after the deactivation committed creates a usage; every usage is counted.

    Threads 0-29 are staggered around the deactivation (some get in before it,
    some queue behind its lock); threads 30-39 start only once it has committed.
    """
    promo = PromoCodeFactory(tenant=TenantFactory())
    n, early = 40, 30
    started = [None] * n
    committed = {}
    deactivated = threading.Event()

    def attempt(i):
        if i == n:
            time.sleep(0.05)
            try:
                retrying(lambda: PromoCode.objects.deactivate(promo.pk, tenant=promo.tenant))
                committed["at"] = clock()  # read after commit: an upper bound of the commit instant
            finally:
                deactivated.set()
            return "deactivated"
        if i < early:
            time.sleep(i * 0.004)
        else:
            assert deactivated.wait(10)
        started[i] = clock()
        return retrying(
            lambda: PromoCode.objects.redeem(promo.code, tenant=promo.tenant, customer=f"c{i}", amount="10")
        )

    outcomes = run_concurrently(attempt, n + 1)
    assert outcomes[n].value == "deactivated"
    redeems = outcomes[:n]
    codes = tally(redeems)
    assert set(codes) == {"ok", "promo_inactive"}, codes  # both sides of the switch happened
    late = [o for o, start in zip(redeems, started, strict=True) if start > committed["at"]]
    assert len(late) >= n - early
    assert all(o.code == "promo_inactive" for o in late)
    usages = PromoUsage.objects.filter(promo=promo)
    assert usages.count() == codes["ok"]
    assert all(u.created_at < committed["at"] for u in usages)
    assert assert_invariant(promo) == codes["ok"]


def test_reserve_waiting_on_a_deactivation_is_refused_when_it_commits():
    promo = PromoCodeFactory(tenant=TenantFactory())
    # the deactivation commits while the reserve waits
    outcome = attempted_while_held(
        lambda: PromoCode.objects.deactivate(promo.pk, tenant=promo.tenant), redeemer(promo, lambda i: "alice")
    )
    assert outcome.code == "promo_inactive"
    assert assert_invariant(promo) == 0


def test_deactivation_waits_for_a_reserve_holding_the_lock_and_counts_it():
    promo = PromoCodeFactory(tenant=TenantFactory())
    outcome = attempted_while_held(
        lambda: PromoCode.objects.redeem(promo.code, tenant=promo.tenant, customer="alice", amount="10"),
        lambda i: PromoCode.objects.deactivate(promo.pk, tenant=promo.tenant),
    )
    assert outcome.ok
    assert assert_invariant(promo) == 1
    assert run_concurrently(redeemer(promo, lambda i: "bob"), 1)[0].code == "promo_inactive"


def test_held_code_row_refuses_with_resource_locked_after_the_timeout(monkeypatch):
    monkeypatch.setattr(managers, "REDEEM_LOCK_TIMEOUT_MS", 100)
    promo = PromoCodeFactory(tenant=TenantFactory())
    with row_locked(PromoCode.objects.filter(pk=promo.pk)):
        waited = run_concurrently(redeemer(promo, lambda i: "alice", retry=False), 1)[0]
        refused = run_concurrently(redeemer(promo, lambda i: "alice", retry=False, nowait=True), 1)[0]
    assert (waited.code, refused.code) == ("resource_locked", "resource_locked")
    assert assert_invariant(promo) == 0


def test_20_concurrent_voids_give_the_use_back_once():
    promo = PromoCodeFactory(tenant=TenantFactory(), total_usage_limit=3)
    usages = [
        PromoCode.objects.redeem(promo.code, tenant=promo.tenant, customer=c, amount="10") for c in ("a", "b", "c")
    ]
    outcomes = run_concurrently(lambda i: PromoUsage.objects.void(usages[0].pk, tenant=promo.tenant), 20)
    assert tally(outcomes) == {"ok": 1, "usage_already_voided": 19}
    assert assert_invariant(promo) == 2


def test_voids_racing_redeems_keep_the_invariant():
    promo = PromoCodeFactory(tenant=TenantFactory(), total_usage_limit=10)
    usages = [
        PromoCode.objects.redeem(promo.code, tenant=promo.tenant, customer=f"old{i}", amount="10") for i in range(10)
    ]

    def attempt(i):
        if i % 2:
            return retrying(lambda: PromoUsage.objects.void(usages[i // 2].pk, tenant=promo.tenant))
        return retrying(
            lambda: PromoCode.objects.redeem(promo.code, tenant=promo.tenant, customer=f"new{i}", amount="10")
        )

    outcomes = run_concurrently(attempt, 20)
    codes = tally(outcomes)
    assert set(codes) <= {"ok", "promo_exhausted"}
    assert all(o.ok for o in outcomes[1::2])  # every void wins
    assert assert_invariant(promo) == 10 - 10 + sum(o.ok for o in outcomes[0::2])


# --- redemption sessions ---------------------------------------------------------------------------


def consume(session, amount="25.00"):
    return lambda i: RedemptionSession.objects.consume(session.session_id, tenant=session.tenant, amount=amount)


def naive_consumes(*, window, expires_in=timedelta(minutes=15)):
    """Seed 003 before the fix: read, check, do other work (``window`` seconds), then mark used."""
    consumes = SessionConsume(TenantFactory(), window=window)
    session = consumes.create_target(expires_in=expires_in)
    consumes.approve_all()
    return consumes, session


def test_30_concurrent_consumes_exactly_one_used():
    session = RedemptionSessionFactory(tenant=TenantFactory(), status="approved")
    outcomes = run_concurrently(consume(session), 30)
    assert tally(outcomes) == {"ok": 1, "session_already_used": 29}
    session.refresh_from_db()
    assert (session.status, session.used_amount) == ("used", Decimal("25.00"))
    assert session.used_at < session.expires_at


@pytest.mark.control("session consume")
def test_naive_consume_is_used_many_times():
    consumes, _session = naive_consumes(window=0.2)
    outcomes = run_concurrently(lambda i: consumes.naive(0, i), 30)
    print(f"naive 30-consume storm: {dict(tally(outcomes))}")
    assert sum(o.ok for o in outcomes) > 1, tally(outcomes)


@pytest.mark.parametrize("with_sweep", [False, True], ids=["clock_only", "with_sweep"])
def test_consume_racing_expiry_never_uses_after_expiry(with_sweep):
    """30 sessions expire together while consumes arrive every 20 ms; optionally the sweep runs all along."""
    tenant = TenantFactory()
    n = 30
    sessions = [RedemptionSessionFactory(tenant=tenant, status="approved") for _ in range(n)]
    attempted = [None] * n
    armed = threading.Event()
    expiry = {}

    def attempt(i):
        if i == n:  # arm the clock once every thread is connected, then (maybe) sweep
            mine = RedemptionSession.objects.filter(tenant=tenant)
            mine.update(expires_at=ClockNow() + Value(timedelta(milliseconds=300)))
            expiry["at"] = mine.values_list("expires_at", flat=True).first()
            armed.set()
            swept = 0
            deadline = time.monotonic() + 0.8
            while with_sweep and time.monotonic() < deadline:
                swept += RedemptionSession.objects.expire_due(tenant=tenant)
                time.sleep(0.01)
            return swept
        assert armed.wait(10)
        time.sleep(i * 0.02 + random.random() * 0.005)
        attempted[i] = clock()
        return RedemptionSession.objects.consume(sessions[i].session_id, tenant=tenant, amount="10")

    outcomes = run_concurrently(attempt, n + 1)
    expires_at = expiry["at"]
    consumes = outcomes[:n]
    codes = tally(consumes)
    assert set(codes) == {"ok", "session_expired"}, codes
    for outcome, started in zip(consumes, attempted, strict=True):
        if outcome.ok:
            assert started < expires_at
    used = RedemptionSession.objects.filter(tenant=tenant, status="used")
    assert used.count() == codes["ok"]
    assert all(s.used_at < s.expires_at for s in used)
    if with_sweep:
        assert outcomes[n].value == n - codes["ok"]  # the sweep expired exactly the others
        statuses = set(RedemptionSession.objects.filter(tenant=tenant).values_list("status", flat=True))
        assert statuses == {"used", "expired"}


@pytest.mark.control("session consume")
def test_naive_consume_writes_after_expiry():
    """The naive check passes before expiry, the write lands after it; only the CHECK backstop refuses."""
    consumes, session = naive_consumes(window=0.4, expires_in=timedelta(milliseconds=150))
    with pytest.raises(IntegrityError, match="redemption_used_before_expiry"):
        consumes.naive(0, 0)
    session.refresh_from_db()
    assert session.status == "approved" and session.expires_at < clock()


def test_approve_racing_cancel_one_wins():
    tenant = TenantFactory()
    sessions = [RedemptionSessionFactory(tenant=tenant) for _ in range(20)]

    def attempt(i):
        session = sessions[i // 2]
        time.sleep(random.random() * 0.01)
        if i % 2:
            return RedemptionSession.objects.cancel(session.session_id, tenant=tenant)
        return RedemptionSession.objects.approve(session.session_id, secret=SECRET)

    outcomes = run_concurrently(attempt, 40)
    cancels = outcomes[1::2]  # the shop may cancel pending or approved: cancel always lands
    assert all(o.ok for o in cancels), [repr(o.error) for o in cancels if not o.ok]
    approvals = Counter(o.code for o in outcomes[0::2])
    assert set(approvals) <= {"ok", "session_not_pending"}
    for approve, session in zip(outcomes[0::2], sessions, strict=True):
        session.refresh_from_db()
        assert session.status == "cancelled"
        if approve.ok:  # approve won the row first, then was cancelled
            assert session.approved_at < session.cancelled_at
        else:  # cancel won: approve never lands afterwards
            assert session.approved_at is None


def test_consume_racing_cancel_exactly_one_wins():
    tenant = TenantFactory()
    sessions = [RedemptionSessionFactory(tenant=tenant, status="approved") for _ in range(20)]

    def attempt(i):
        session = sessions[i // 2]
        time.sleep(random.random() * 0.01)
        if i % 2:
            return RedemptionSession.objects.cancel(session.session_id, tenant=tenant)
        return RedemptionSession.objects.consume(session.session_id, tenant=tenant, amount="5")

    outcomes = run_concurrently(attempt, 40)
    for k, session in enumerate(sessions):
        consumed, cancelled = outcomes[2 * k], outcomes[2 * k + 1]
        assert consumed.ok != cancelled.ok, (consumed.code, cancelled.code)
        session.refresh_from_db()
        if consumed.ok:
            assert (session.status, cancelled.code) == ("used", "session_already_used")
        else:
            assert (session.status, consumed.code) == ("cancelled", "session_not_approved")


# --- the lock-mode measurement (docs/promos.md) ----------------------------------------------------


def _measure_storm(*, nowait, limit):
    promo = PromoCodeFactory(tenant=TenantFactory(), total_usage_limit=limit, per_customer_limit=1)
    spans = [None] * 60
    customers = 20 if limit == 5 else 60

    def attempt(i):
        begun = time.monotonic()
        try:
            return PromoCode.objects.redeem(
                promo.code, tenant=promo.tenant, customer=f"customer-{i % customers}", amount="40", nowait=nowait
            )
        finally:
            spans[i] = (begun, time.monotonic())

    outcomes = run_concurrently(attempt, 60)
    storm_ms = (max(end for _, end in spans) - min(begun for begun, _ in spans)) * 1000
    slowest_ms = max(end - begun for begun, end in spans) * 1000
    codes = tally(outcomes)
    assert set(codes) <= {"ok", "promo_exhausted", "promo_customer_limit", "resource_locked"}
    assert assert_invariant(promo) == codes["ok"]
    assert 1 <= codes["ok"] <= limit  # raw numbers, no retries: a saturated machine may time some waiters out
    mode = "NOWAIT" if nowait else f"lock_timeout={managers.REDEEM_LOCK_TIMEOUT_MS}ms"
    return f"[promos {mode} limit={limit}] {dict(codes)} storm {storm_ms:.0f} ms, slowest {slowest_ms:.0f} ms"


def test_lock_mode_storm_measurement(capsys):
    """60 redeems at once under each lock mode; prints the numbers quoted in docs/promos.md."""
    lines = [_measure_storm(nowait=nowait, limit=limit) for nowait in (False, True) for limit in (5, 60)]
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_delete_racing_an_uncommitted_redeem_is_refused_in_use():
    """Regression: delete checked for usages before a waiting redeem committed one; the deferred
    foreign key then failed at COMMIT (IntegrityError, a 500). Now delete locks the row first."""
    promo = PromoCodeFactory(tenant=TenantFactory())
    # the redeem commits while the delete waits for the row
    outcome = attempted_while_held(
        lambda: PromoCode.objects.redeem(promo.code, tenant=promo.tenant, customer="alice", amount="10"),
        lambda i: PromoCode.objects.delete_code(promo.pk, tenant=promo.tenant),
    )
    assert outcome.code == "promo_in_use", repr(outcome.error)
    assert assert_invariant(promo) == 1


def test_redeem_waiting_on_a_delete_is_not_found():
    promo = PromoCodeFactory(tenant=TenantFactory())
    outcome = attempted_while_held(
        lambda: PromoCode.objects.delete_code(promo.pk, tenant=promo.tenant),
        redeemer(promo, lambda i: "alice", retry=False),
    )
    assert outcome.code == "promo_not_found"
    assert not PromoCode.objects.filter(pk=promo.pk).exists()
    assert not PromoUsage.objects.exists()


def test_session_operations_on_a_locked_row_answer_resource_locked():
    """Regression: cancel, consume, approve and the sweep let 55P03 escape as OperationalError
    (a 500 in the admin cancel action, a traceback in the command). The sweep now skips a held row
    without waiting: nothing to time out."""
    tenant = TenantFactory()
    pending = RedemptionSessionFactory(tenant=tenant)
    approved = RedemptionSessionFactory(tenant=tenant, status="approved")
    RedemptionSessionFactory(tenant=tenant, expires_in=timedelta(seconds=-1))  # due for the sweep
    attempts = [
        lambda: RedemptionSession.objects.cancel(pending.session_id, tenant=tenant),
        lambda: RedemptionSession.objects.approve(pending.session_id, secret=SECRET),
        lambda: RedemptionSession.objects.reject(pending.session_id, secret=SECRET),
        lambda: RedemptionSession.objects.consume(approved.session_id, tenant=tenant, amount="1"),
    ]

    def attempt(i):
        with lock_timeout(200):
            return attempts[i]()

    with row_locked(RedemptionSession.objects.filter(tenant=tenant)):
        outcomes = run_concurrently(attempt, len(attempts))
        swept = run_concurrently(lambda i: RedemptionSession.objects.expire_due(tenant=tenant), 1)
    assert [o.code for o in outcomes] == ["resource_locked"] * len(attempts), [repr(o.error) for o in outcomes]
    assert swept[0].ok and swept[0].value == 0  # every due row held: skipped, not waited for
    assert set(RedemptionSession.objects.values_list("status", flat=True)) == {"pending", "approved"}


def test_a_busy_code_does_not_block_another_code_of_the_same_shop():
    """Regression: the lock statement joined core_tenant (default ordering) without OF, so it locked the
    tenant row too: a redeem or deactivation in flight on one code blocked every code of the shop."""
    tenant = TenantFactory()
    busy, other = PromoCodeFactory(tenant=tenant), PromoCodeFactory(tenant=tenant)
    for hold_busy_code in [
        lambda: PromoCode.objects.redeem(busy.code, tenant=tenant, customer="alice", amount="10"),
        lambda: PromoCode.objects.deactivate(busy.pk, tenant=tenant),
        lambda: PromoCode.objects.update_code(busy.pk, tenant=tenant, bonus_value=Decimal("3.00")),
    ]:
        with OpenTransaction(hold_busy_code):
            redeem = redeemer(other, lambda i: f"customer-{i}", retry=False, nowait=True)
            changes = [
                redeem,
                lambda i: PromoCode.objects.deactivate(other.pk, tenant=tenant),
                lambda i: PromoCode.objects.activate(other.pk, tenant=tenant),
            ]
            outcomes = [run_concurrently(change, 1)[0] for change in changes]
        assert [o.code for o in outcomes] == ["ok", "ok", "ok"], [repr(o.error) for o in outcomes]
    assert assert_invariant(busy) == 1
    assert assert_invariant(other) == 3


# --- definition edits: the row lock, the version, the CHECKs ---------------------------------------


def test_concurrent_edits_carrying_the_same_version_exactly_one_wins():
    """update_code checks the version *under the row lock*: of 12 editors who read version 1, one
    writes and 11 get version_conflict. Without the lock every one passes the check and writes."""
    promo = PromoCodeFactory(tenant=TenantFactory(), total_usage_limit=50)

    def edit(i):
        return retrying(
            lambda: PromoCode.objects.update_code(
                promo.pk, tenant=promo.tenant, version=1, bonus_value=Decimal(i + 1), total_usage_limit=50 - i
            )
        )

    outcomes = run_concurrently(edit, 12)
    assert tally(outcomes) == {"ok": 1, "version_conflict": 11}, tally(outcomes)
    (winner,) = [i for i, o in enumerate(outcomes) if o.ok]
    promo.refresh_from_db()
    assert (promo.bonus_value, promo.total_usage_limit, promo.version) == (Decimal(winner + 1), 50 - winner, 2)


def test_a_limit_cut_below_the_uses_is_refused_while_redeems_race_it():
    """promo_times_used_within_limit: a cut under the uses already made is promo_limit_below_usage (409),
    never accepted (times_used > limit) and never a 500, whatever the redeems around it do."""
    promo = PromoCodeFactory(tenant=TenantFactory(), total_usage_limit=40)
    for i in range(12):
        PromoCode.objects.redeem(promo.code, tenant=promo.tenant, customer=f"old{i}", amount="10")

    def attempt(i):
        if i == 0:  # below the 12 uses already made, whatever happens around it
            return retrying(lambda: PromoCode.objects.update_code(promo.pk, tenant=promo.tenant, total_usage_limit=10))
        if i == 1:  # a cut that races: it holds only if it lands before the redeems pass 16
            time.sleep(0.01)
            return retrying(lambda: PromoCode.objects.update_code(promo.pk, tenant=promo.tenant, total_usage_limit=16))
        return retrying(
            lambda: PromoCode.objects.redeem(promo.code, tenant=promo.tenant, customer=f"new{i}", amount="10")
        )

    outcomes = run_concurrently(attempt, 22)
    assert outcomes[0].code == "promo_limit_below_usage", repr(outcomes[0].error)
    assert outcomes[1].code in {"ok", "promo_limit_below_usage"}, repr(outcomes[1].error)
    assert set(tally(outcomes[2:])) <= {"ok", "promo_exhausted"}, tally(outcomes[2:])
    promo.refresh_from_db()
    assert promo.total_usage_limit == (16 if outcomes[1].ok else 40)
    assert assert_invariant(promo) == 12 + tally(outcomes[2:])["ok"] <= promo.total_usage_limit


def test_a_void_storm_on_a_drifted_counter_never_takes_it_below_zero():
    """promo_times_used_not_negative: the counter drifted to 2 with 5 live usages; 5 voids at once give
    back exactly 2 uses, the other 3 are refused promo_counter_out_of_step (409), nothing half-written."""
    promo = PromoCodeFactory(tenant=TenantFactory())
    usages = [
        PromoCode.objects.redeem(promo.code, tenant=promo.tenant, customer=f"c{i}", amount="10") for i in range(5)
    ]
    with pgtrigger.ignore("promos.PromoCode:promo_times_used_transition"):  # the database refuses it: planted
        PromoCode.objects.filter(pk=promo.pk).update(times_used=2)  # the drift (check_invariants would report it)
    outcomes = run_concurrently(lambda i: PromoUsage.objects.void(usages[i].pk, tenant=promo.tenant), 5)
    assert tally(outcomes) == {"ok": 2, "promo_counter_out_of_step": 3}, [repr(o.error) for o in outcomes]
    promo.refresh_from_db()
    assert promo.times_used == 0
    refused = [usages[i].pk for i, o in enumerate(outcomes) if not o.ok]
    assert set(PromoUsage.objects.filter(voided_at__isnull=True).values_list("pk", flat=True)) == set(refused)
    with pgtrigger.ignore("promos.PromoUsage:promo_usage_counted"):  # uncounted, as the drift left them
        PromoUsage.objects.filter(pk__in=refused).delete()  # repair the planted drift for the invariant check


def test_a_definition_edit_on_a_held_code_row_waits_then_answers_resource_locked(monkeypatch):
    """update_code takes the row lock a redeem holds, bounded by the redeem lock timeout."""
    monkeypatch.setattr(managers, "REDEEM_LOCK_TIMEOUT_MS", 100)
    promo = PromoCodeFactory(tenant=TenantFactory(), total_usage_limit=5)
    with row_locked(PromoCode.objects.filter(pk=promo.pk)):
        started = time.monotonic()
        outcome = run_concurrently(
            lambda i: PromoCode.objects.update_code(promo.pk, tenant=promo.tenant, version=1, total_usage_limit=3), 1
        )[0]
        waited = time.monotonic() - started
    assert outcome.code == "resource_locked" and 0.1 <= waited < 1.5, (outcome.code, waited)
    promo.refresh_from_db()
    assert (promo.total_usage_limit, promo.version) == (5, 1)


def test_a_delete_at_a_version_waiting_on_an_edit_is_refused_when_the_edit_commits():
    """The version is judged under the row lock: a delete that waited for a colleague's edit sees its version."""
    promo = PromoCodeFactory(tenant=TenantFactory())
    outcome = attempted_while_held(
        lambda: PromoCode.objects.update_code(promo.pk, tenant=promo.tenant, version=1, bonus_value=Decimal("50")),
        lambda i: PromoCode.objects.delete_code(promo.pk, tenant=promo.tenant, version=1),
    )
    assert outcome.code == "version_conflict", repr(outcome.error)
    assert PromoCode.objects.get(pk=promo.pk).bonus_value == Decimal("50.00")


def test_deletes_at_one_version_at_once_delete_the_code_once():
    promo = PromoCodeFactory(tenant=TenantFactory())
    outcomes = run_concurrently(lambda i: PromoCode.objects.delete_code(promo.pk, tenant=promo.tenant, version=1), 6)
    assert tally(outcomes) == {"ok": 1, "promo_not_found": 5}
    assert not PromoCode.objects.filter(pk=promo.pk).exists()
