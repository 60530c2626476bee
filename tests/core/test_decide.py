"""core.decide: lock, judge and change one row in one statement; a loser sees the winner's row."""

import datetime
import time
import uuid
from decimal import Decimal

import pytest
from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Q
from django.test.utils import CaptureQueriesContext
from psycopg.types.json import Json, Jsonb

from bookings.models import Booking, Checkout
from core.decide import NOW, decide
from core.guards import ClockNow, database_clock
from core.models import Tenant
from core.prepared import Prepared
from profiles.models import Profile, ProfileAuditLog
from promos.models import PromoCode, PromoUsage, RedemptionSession
from proposals.models import Proposal
from tests.factories import TenantFactory
from tests.races import Background, OpenTransaction, run_concurrently, tally

pytestmark = pytest.mark.django_db(transaction=True)

USABLE = Q(status=RedemptionSession.Status.APPROVED, expires_at__gt=ClockNow(), used_at__isnull=True)
USE = {"status": RedemptionSession.Status.USED, "used_at": NOW, "used_amount": Decimal("10.00")}


@pytest.fixture
def session():
    tenant = TenantFactory(slug="acme")
    created, secret = RedemptionSession.objects.create_session(
        tenant=tenant, customer="c", max_amount=Decimal("100.00")
    )
    RedemptionSession.objects.approve(created.session_id, secret=secret)
    return created


def use(session_id):
    return decide(RedemptionSession.objects.filter(session_id=session_id), when=USABLE, changes=USE)


def test_the_winner_gets_the_changed_row_the_loser_the_row_that_refused_it_each_in_one_statement(session):
    with CaptureQueriesContext(connection) as first:
        won, row = use(session.session_id)
    assert won and row.status == "used" and row.used_amount == Decimal("10.00") and row.used_at is not None
    assert isinstance(row.max_amount, Decimal) and row.pk == session.pk
    with CaptureQueriesContext(connection) as second:
        won_again, seen = use(session.session_id)
    assert not won_again and seen.status == "used" and seen.used_at == row.used_at
    assert len(first) == len(second) == 1
    assert use("00000000-0000-0000-0000-000000000000") == (False, None)


def test_many_at_once_one_wins_and_every_loser_reads_the_winners_row(session):
    outcomes = run_concurrently(lambda i: use(session.session_id), 20)
    results = [outcome.value for outcome in outcomes]
    assert tally(outcomes) == {"ok": 20}
    assert sum(won for won, _row in results) == 1
    assert {row.status for _won, row in results} == {"used"}
    assert len({row.used_at for _won, row in results}) == 1
    assert RedemptionSession.objects.get(pk=session.pk).status == "used"


def test_a_loser_that_waited_on_the_lock_judges_the_committed_version():
    """Forced interleaving: another connection holds the row and uses it; decide waits, then refuses
    with that connection's row, not the version it could see when it started."""
    tenant = TenantFactory(slug="acme")
    created, secret = RedemptionSession.objects.create_session(tenant=tenant, customer="c", max_amount=Decimal("100"))
    RedemptionSession.objects.approve(created.session_id, secret=secret)

    def use_it_elsewhere():
        RedemptionSession.objects.select_for_update().get(pk=created.pk)
        RedemptionSession.objects.filter(pk=created.pk).update(
            status=RedemptionSession.Status.USED, used_at=ClockNow(), used_amount=Decimal("1.00")
        )

    holder = OpenTransaction(use_it_elsewhere).start()
    deciding = Background(lambda: use(created.session_id))
    assert not deciding.done.wait(0.3), "decide must wait for the row lock"
    holder.commit()
    (won, row) = deciding.join().result
    assert not won and row.status == "used" and row.used_amount == Decimal("1.00")


def test_a_row_only_locked_meanwhile_is_judged_by_the_clock_once_the_lock_is_held():
    """Forced interleaving: another connection only locks the row (as a refused decide holds it) until
    the session has expired; decide waits, then judges the unchanged row by the clock after the wait."""
    tenant = TenantFactory(slug="acme")
    created, secret = RedemptionSession.objects.create_session(
        tenant=tenant, customer="c", max_amount=Decimal("100"), expires_in=datetime.timedelta(seconds=1)
    )
    RedemptionSession.objects.approve(created.session_id, secret=secret)
    locked_only = RedemptionSession.objects.select_for_update(no_key=True).filter(pk=created.pk)
    holder = OpenTransaction(lambda: list(locked_only)).start()
    deciding = Background(lambda: use(created.session_id))
    assert not deciding.done.wait(0.3), "decide must wait for the row lock"
    time.sleep(max((created.expires_at - database_clock()).total_seconds(), 0) + 0.1)
    holder.commit()
    (won, row) = deciding.join().result
    assert not won and row.status == "approved" and row.used_at is None  # expired while it waited
    assert row.judged_at > row.expires_at


# --- Decision: a call site's statement written once ------------------------------------------------

# Each call site with real values, one per shape it takes.
CALL_SITES = [
    *[
        (
            RedemptionSession.objects,
            "consumed",
            {"session_id": uuid.uuid4(), "tenant": 7, "amount": amount, "currency": currency, "places": places},
        )
        # no currency named: the session's judged against the amount's places (none, 1 or 2, 3); one named
        for amount, currency, places in [
            (Decimal("12"), None, 0),
            (Decimal("12.50"), None, 1),
            (Decimal("1.250"), None, 2),
            (Decimal("1.255"), None, 3),
            (Decimal("12.50"), "USD", 0),
        ]
    ],
    (RedemptionSession.objects, "cancelled", {"session_id": uuid.uuid4(), "tenant": 7}),
    *[
        (
            RedemptionSession.objects,
            "answered",
            {"session_id": uuid.uuid4(), "secret_hash": "ab" * 32, "to_status": status, "stamp": stamp},
        )
        for status, stamp in [("approved", "approved_at"), ("rejected", "rejected_at")]
    ],
    *[
        (Proposal.objects, "decided", {"proposal_id": 41, "decision": decision, "tenant": 7, "session_id": "chat-1"})
        for decision in ("confirmed", "rejected")
    ],
    (Booking.objects, "released", {"booking_id": 41, "tenant": 7}),
    (Tenant.objects, "slugged", {"slug": "acme"}),
    *[
        (
            Booking.objects,
            name,
            {
                "tenant_id": 7,
                "package_id": 41,
                "date": datetime.date(2030, 1, 2),
                "customer_name": "C",
                "customer_email": "c@example.com",
                "status": "held",
                "hold_expires_at": datetime.datetime(2030, 1, 1, 12, tzinfo=datetime.UTC),
                "amount": Decimal("100.00"),
                "currency": "USD",
                "exclusive": True,
                "origin_proposal_id": origin,
                "created_at": datetime.datetime(2030, 1, 1, 11, 45, tzinfo=datetime.UTC),
                **extra,
            },
        )
        for name, extra in (
            ("inserted", {}),
            ("inserted_with_checkout", {"checkout_provider": "sandbox", "then": None}),
            # a proposal's confirmation: the hold's statement executes its origin proposal too
            ("inserted_with_checkout", {"checkout_provider": "sandbox", "then": Proposal.objects.execution}),
        )
        for origin in (None, 42)
        if origin or not extra.get("then")
    ],
    (Profile.objects, "subject_locking", {"profile_id": 41, "tenant": 7}),
    (ProfileAuditLog.objects, "entry_locking", {"entry_id": 41, "tenant": 7}),
    *[
        (
            Profile.objects,
            "changed_and_recorded",
            {
                **dict.fromkeys(("first_name", "last_name", "sex", "birth_date", "death_date", "father", "mother")),
                "deleted_at": None,
                "pk": 41,
                "version": 3,
                **change,
                "fields": tuple(sorted(change)),
                "tenant_id": 7,
                "action": "undo" if undone else "update",
                "old_data": {"first_name": "Ada"},
                "new_data": {"first_name": "Augusta"},
                "actor_id": actor,
                "undone_pk": 40 if undone else None,
                "undone_at": datetime.datetime(2030, 1, 1, 12, tzinfo=datetime.UTC) if undone else None,
                "undone_by": actor if undone else None,
                "undo_reason": "typo" if undone else None,
            },
        )
        for change in (
            {"first_name": "Ada", "birth_date": datetime.date(1815, 12, 10), "father": 40, "death_date": None},
            {"deleted_at": datetime.datetime(2030, 1, 1, 12, tzinfo=datetime.UTC)},
            {"deleted_at": None},
        )
        for undone, actor in ((False, None), (False, 7), (True, None), (True, 7))
    ],
    *[
        (
            ProfileAuditLog.objects,
            "recorded",
            {
                "tenant_id": 7,
                "profile_id": 41,
                "action": "update",
                "old_data": {"first_name": "Ada", "birth_date": None},
                "new_data": {"first_name": "Augusta", "birth_date": "1815-12-10"},
                "actor_id": actor,
            },
        )
        for actor in (None, 7)
    ],
    (
        Checkout.objects,
        "opened",
        {"checkout_id": 41, "provider_checkout_id": "cs_1", "url": "https://pay.example/cs_1", "payment_id": ""},
    ),
    (Booking.objects, "notice_facts", {"booking": 41}),
    (PromoUsage.objects, "voided_once", {"usage_id": 41, "tenant": 7}),
    *[
        (PromoCode.objects, "locking", {"code": "SPRING", "tenant": 7, "nowait": nowait, "lock_timeout_ms": timeout})
        for nowait, timeout in ((False, 1000), (True, None))
    ],
    (
        PromoCode.objects,
        "redeeming",
        {"promo_id": 41, "customer": "c", "amount": Decimal("12.50"), "bonus": Decimal("1.25"), "reference": ""},
    ),
]


def decisions_of(manager):
    return {name for name in dir(type(manager)) if isinstance(getattr(type(manager), name), Prepared)}


def test_every_call_site_is_listed_here():
    found = {(model._meta.label, name) for model in apps.get_models() for name in decisions_of(model._default_manager)}
    assert found == {(manager.model._meta.label, name) for manager, name, _ in CALL_SITES}


@pytest.mark.parametrize("manager, name, values", CALL_SITES, ids=lambda v: v if isinstance(v, str) else "")
def test_a_prepared_statement_is_the_one_the_orm_compiles_for_the_same_values(manager, name, values):
    """Prepared (not left to compile on each call), and the same SQL and parameters the ORM builds."""
    statement = getattr(type(manager), name)
    with transaction.atomic():  # a locking query compiles only in a transaction
        prepared = statement.prepared(manager, **values)
        assert prepared is not None, f"{name} could not be prepared"
        sql, params = statement.build(manager, **values)
        assert (prepared[0], comparable(prepared[1])) == (sql, comparable(params))
        assert connection.ops.compose_sql(*prepared) == connection.ops.compose_sql(sql, params)  # as sent


def comparable(params):
    """Parameters with a JSON adapter (which has no equality of its own) as its class, value and dumps."""
    return [(type(p), p.obj, p.dumps) if isinstance(p, Json | Jsonb) else p for p in params]


def test_a_value_not_of_its_kind_is_refused_as_the_orm_refuses_it(session):
    with pytest.raises(ValidationError):
        RedemptionSession.objects.consume("not-a-uuid", tenant=session.tenant, amount="10.00")
    # and a prepared call decides as decide does
    RedemptionSession.objects.consume(str(session.session_id), tenant=session.tenant_id, amount="10.00")
    assert RedemptionSession.objects.get(pk=session.pk).status == "used"
