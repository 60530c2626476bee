"""Guarded rows of the promos app: what save() may not write, and what the database itself refuses."""

import itertools
from datetime import timedelta
from decimal import Decimal

import pgtrigger
import pytest
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Coalesce
from django.utils import timezone

from core.exceptions import GuardedWriteError, TransitionRefused, VersionConflict
from core.guards import ClockNow, database_refusals
from core.integrity import state_machines
from promos import exceptions as errors
from promos.models import SESSION_TRANSITIONS, PromoCode, PromoUsage, RedemptionSession
from tests.promos.factories import PromoCodeFactory, RedemptionSessionFactory
from tests.promos.helpers import assert_invariant
from tests.refusals import refused_by

pytestmark = pytest.mark.django_db

STATUSES = [value for value, _label in RedemptionSession.Status.choices]
(SESSION_MACHINE,) = state_machines(RedemptionSession)


# --- GuardedModel ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [
        ("times_used", 0),
        ("is_active", False),
        ("total_usage_limit", 1),
        ("per_customer_limit", 1),
        ("bonus_value", Decimal("1.00")),
        ("code", "OTHER"),
        ("version", 7),
    ],
)
def test_a_plain_save_of_a_promo_code_cannot_write_a_guarded_column(tenant, field, value):
    promo = PromoCodeFactory(tenant=tenant, total_usage_limit=5)
    setattr(promo, field, value)
    with pytest.raises(GuardedWriteError):
        promo.save()
    with pytest.raises(GuardedWriteError):
        promo.save(update_fields=[field])


def test_a_plain_save_of_a_usage_or_session_cannot_write_guarded_columns(tenant):
    promo = PromoCodeFactory(tenant=tenant)
    usage = PromoCode.objects.redeem(promo.code, tenant=tenant, customer="a", amount="10")
    usage.voided_at = usage.created_at
    with pytest.raises(GuardedWriteError):
        usage.save()
    usage.reference = "order-9"  # not guarded: what the shop calls the purchase
    usage.save(update_fields=["reference"])
    session = RedemptionSessionFactory(tenant=tenant, status="approved")
    for field in ["status", "used_at", "used_amount", "expires_at", "max_amount", "secret_hash", "customer"]:
        with pytest.raises(GuardedWriteError):
            session.save(update_fields=[field])
    assert assert_invariant(promo) == 1
    assert PromoUsage.objects.get(pk=usage.pk).voided_at is None


# --- the session machine, every pair -----------------------------------------------------------

# The columns each state needs (the CHECKs hold them), so only the machine decides a change.
STAMPS = {
    "approved": {"approved_at": ClockNow()},
    "rejected": {"rejected_at": ClockNow()},
    "cancelled": {"cancelled_at": ClockNow()},
    "used": {"used_at": ClockNow(), "used_amount": Decimal("5.00")},
}
# A legal path to each state, through the transitions the managers make.
PATHS = {
    "pending": [],
    "approved": ["approved"],
    "rejected": ["rejected"],
    "expired": ["expired"],
    "cancelled": ["cancelled"],
    "used": ["approved", "used"],
}


def _move(session, status):
    """Set ``status`` and the stamps it needs, each only where not set yet (a stamp never changes:
    redemption_session_used_stamps_transition, which fires after the machine); leaving ``used`` clears its
    stamps, as the CHECKs require, so the un-use is judged by the machine."""
    clear = {"used_at": None, "used_amount": None} if status != "used" else {}
    stamps = {column: Coalesce(column, value) for column, value in STAMPS.get(status, {}).items()}
    RedemptionSession.objects.filter(pk=session.pk).update(status=status, **clear, **stamps)


def test_the_session_machine_is_the_managers_transitions():
    assert SESSION_MACHINE.name == "redemption_session_status_transition"
    assert SESSION_MACHINE.initial == ["pending"]
    assert set(SESSION_TRANSITIONS) == {(None, "pending"), *SESSION_MACHINE.transitions}
    assert set(SESSION_MACHINE.transitions) == {
        ("pending", "approved"),
        ("pending", "rejected"),
        ("pending", "expired"),
        ("pending", "cancelled"),
        ("approved", "used"),
        ("approved", "expired"),
        ("approved", "cancelled"),
    }


@pytest.mark.parametrize("old,new", list(itertools.product(STATUSES, STATUSES)))
def test_every_session_status_pair_is_allowed_or_refused_by_the_database(tenant, old, new):
    session = RedemptionSessionFactory(tenant=tenant)
    for step in PATHS[old]:
        _move(session, step)
    name = refused_by(lambda: _move(session, new))
    if SESSION_MACHINE.allows(old, new):
        assert name is None, (old, new, name)
        assert RedemptionSession.objects.get(pk=session.pk).status == new
    else:
        assert name == "redemption_session_status_transition", (old, new, name)
        assert RedemptionSession.objects.get(pk=session.pk).status == old
        with pytest.raises(TransitionRefused) as refusal:  # the one translator: 409 invalid_transition
            with database_refusals(), transaction.atomic():
                _move(session, new)
        assert refusal.value.code == "invalid_transition" and refusal.value.params == {"old": old, "new": new}


@pytest.mark.parametrize("status", STATUSES)
def test_a_session_is_born_pending_only(tenant, status):
    session = RedemptionSessionFactory(tenant=tenant)
    fields = {
        "tenant": tenant,
        "customer": "b",
        "max_amount": Decimal("10"),
        "secret_hash": "x",
        "expires_at": session.expires_at,
        "status": status,
        **STAMPS.get(status, {}),
    }
    name = refused_by(lambda: RedemptionSession.objects.create(**fields))
    assert name == (None if status == "pending" else "redemption_session_status_transition"), (status, name)


@pytest.mark.parametrize(
    "change",
    [
        dict(currency="EUR"),
        dict(max_amount=Decimal("1000.00")),
        dict(customer="mallory"),
        dict(secret_hash="0" * 64),
        dict(session_id="00000000-0000-0000-0000-000000000001"),
        dict(created_at=F("created_at") - timedelta(days=1)),
        "tenant",
    ],
    ids=lambda change: change if isinstance(change, str) else next(iter(change)),
)
def test_what_a_session_was_made_for_never_changes_whoever_writes(tenant, change):
    """redemption_session_terms_transition: a raw UPDATE of a session's currency (or tenant, customer, limit,
    secret, public id, time of making) is refused by the database (409 invalid_transition), not only by
    GuardedModel's save()."""
    from tests.factories import TenantFactory

    session = RedemptionSessionFactory(tenant=tenant, status="approved", max_amount=Decimal("100.00"))
    if change == "tenant":
        change = dict(tenant=TenantFactory())
    rows = RedemptionSession.objects.filter(pk=session.pk)
    assert refused_by(lambda: rows.update(**change)) == "redemption_session_terms_transition"
    with pytest.raises(TransitionRefused) as refusal:
        with database_refusals(), transaction.atomic():
            rows.update(**change)
    assert refusal.value.code == "invalid_transition"
    assert refusal.value.params == {"old": "made", "new": "altered"}
    stored = rows.get()
    assert (stored.tenant_id, stored.currency, stored.max_amount, stored.customer) == (
        tenant.pk,
        "USD",
        Decimal("100.00"),
        "alice",
    )
    assert (stored.secret_hash, stored.session_id) == (session.secret_hash, session.session_id)
    # What the machine moves is still free to move: the trigger freezes terms, not states.
    RedemptionSession.objects.consume(session.session_id, tenant=tenant, amount="5")


def test_a_sessions_expiry_is_never_pushed_back_whoever_writes(tenant):
    """redemption_session_expiry_transition: a consent given until a time, moved later by a raw UPDATE, would be
    consumed after it lapsed (the sweep had not reached it yet); refused (409 invalid_transition,
    ``earlier->later``). Brought forward (an expiry written as it happens) it stays allowed."""
    session = RedemptionSessionFactory(tenant=tenant, status="approved", max_amount=Decimal("100.00"))
    rows = RedemptionSession.objects.filter(pk=session.pk)
    later = dict(expires_at=F("expires_at") + timedelta(days=30))
    assert refused_by(lambda: rows.update(**later)) == "redemption_session_expiry_transition"
    with pytest.raises(TransitionRefused) as refusal, database_refusals(), transaction.atomic():
        rows.update(**later)
    assert refusal.value.params == {"old": "earlier", "new": "later"}
    assert rows.get().expires_at == session.expires_at
    assert refused_by(lambda: rows.update(expires_at=ClockNow())) is None
    with pytest.raises(errors.SessionExpired):
        RedemptionSession.objects.consume(session.session_id, tenant=tenant, amount="5")


def test_a_consent_is_given_before_the_session_lapsed_whoever_writes(tenant):
    """redemption_approved_before_expiry: a lapsed pending session approved by a raw UPDATE (the answer judges
    the expiry above its lock, a writer past it does not) is refused (409 session_expired), and so is an
    approved session's expiry brought back before its approval; the consume's own CHECK (used before expiry)
    is the one this stands beside."""
    session = RedemptionSessionFactory(tenant=tenant)
    rows = RedemptionSession.objects.filter(pk=session.pk)
    rows.update(expires_at=ClockNow() - timedelta(seconds=1))
    approve = dict(status="approved", approved_at=ClockNow())
    assert refused_by(lambda: rows.update(**approve)) == "redemption_approved_before_expiry"
    with pytest.raises(errors.SessionExpired), database_refusals(), transaction.atomic():
        rows.update(**approve)
    assert rows.get().status == "pending"
    approved = RedemptionSessionFactory(tenant=tenant, status="approved")
    before = RedemptionSession.objects.filter(pk=approved.pk)
    earlier = dict(expires_at=F("approved_at") - timedelta(seconds=1))
    assert refused_by(lambda: before.update(**earlier)) == "redemption_approved_before_expiry"


@pytest.mark.parametrize(
    "change",
    [
        dict(used_amount=F("used_amount") + Decimal("10.00"), used_at=ClockNow()),  # consumed again, status kept
        dict(used_amount=Decimal("1.00")),
        dict(used_at=ClockNow()),
        dict(approved_at=ClockNow()),
    ],
    ids=["consumed-again", "amount", "time", "approval"],
)
def test_a_used_sessions_stamps_never_change_whoever_writes(tenant, change):
    """redemption_session_used_stamps_transition: a second "consume" written straight to a used session (its
    amount and time rewritten, its status left ``used``, which the state machine does not see) is refused by
    the database (409 invalid_transition), as is any rewrite of a decision's time."""
    session = RedemptionSessionFactory(tenant=tenant, status="approved", max_amount=Decimal("100.00"))
    used = RedemptionSession.objects.consume(session.session_id, tenant=tenant, amount="10")
    rows = RedemptionSession.objects.filter(pk=session.pk)
    assert refused_by(lambda: rows.update(**change)) == "redemption_session_used_stamps_transition"
    with pytest.raises(TransitionRefused) as refusal:
        with database_refusals(), transaction.atomic():
            rows.update(**change)
    assert refusal.value.params == {"old": "set", "new": "altered"}
    stored = rows.get()
    assert (stored.used_amount, stored.used_at, stored.approved_at) == (
        Decimal("10.00"),
        used.used_at,
        used.approved_at,
    )


def test_a_promo_code_never_moves_to_another_shop_whoever_writes(tenant):
    """promo_code_tenant_transition: a raw UPDATE of a code's tenant is refused by the database (409
    invalid_transition); its usages, counter and limits were counted in its shop (only save() was stopped)."""
    from tests.factories import TenantFactory

    promo = PromoCodeFactory(tenant=tenant)
    PromoCode.objects.redeem(promo.code, tenant=tenant, customer="a", amount="10")
    rows = PromoCode.objects.filter(pk=promo.pk)
    elsewhere = TenantFactory()
    assert refused_by(lambda: rows.update(tenant=elsewhere)) == "promo_code_tenant_transition"
    with pytest.raises(TransitionRefused) as refusal:
        with database_refusals(), transaction.atomic():
            rows.update(tenant=elsewhere)
    assert refusal.value.code == "invalid_transition"
    assert rows.get().tenant_id == tenant.pk
    assert assert_invariant(promo) == 1


def test_a_codes_counter_is_written_by_its_usages_only_whoever_writes(tenant):
    """promo_times_used_transition: a raw write of times_used is refused by the database (409 invalid_transition).
    Let through, ``times_used = 0`` reopened a used-up code: its limit judged on a counter its usages
    no longer explained, until check_invariants told within the hour."""
    promo = PromoCodeFactory(tenant=tenant, total_usage_limit=1)
    PromoCode.objects.redeem(promo.code, tenant=tenant, customer="a", amount="10")
    rows = PromoCode.objects.filter(pk=promo.pk)
    for change in [dict(times_used=0), dict(times_used=F("times_used") - 1), dict(times_used=5)]:
        assert refused_by(lambda change=change: rows.update(**change)) == "promo_times_used_transition", change
    with pytest.raises(TransitionRefused) as refusal:
        with database_refusals(), transaction.atomic():
            rows.update(times_used=0)
    assert refusal.value.code == "invalid_transition"
    with pytest.raises(errors.PromoExhausted):  # still used up
        PromoCode.objects.redeem(promo.code, tenant=tenant, customer="b", amount="10")
    assert assert_invariant(promo) == 1
    assert refused_by(lambda: PromoCodeFactory(tenant=tenant, times_used=3)) == "promo_born_unused_transition"


def _usage_of(promo, customer="a"):
    """A usage written past the redeem, as a shell or a bug would: a raw insert."""
    return lambda: PromoUsage.objects.create(
        tenant=promo.tenant, promo=promo, customer=customer, base_amount=Decimal("10"), bonus_amount=Decimal("1")
    )


def test_every_write_of_a_usage_counts_itself_on_its_code(tenant):
    """promo_usage_counted: a usage inserted, voided or deleted while live moves its code's counter in
    the same statement, whoever writes it (a raw ORM write here, not the managers)."""
    promo = PromoCodeFactory(tenant=tenant, total_usage_limit=2)
    created = PromoCode.objects.get(pk=promo.pk).updated_at

    first, second = _usage_of(promo, "a")(), _usage_of(promo, "b")()
    assert assert_invariant(promo) == 2
    # past the limit: the count the insert makes meets the limit's CHECK, the insert is refused with it
    assert refused_by(_usage_of(promo, "c")) == "promo_times_used_within_limit"
    PromoUsage.objects.filter(pk=first.pk).update(voided_at=ClockNow())
    assert assert_invariant(promo) == 1
    PromoUsage.objects.filter(pk=second.pk).delete()  # live: given back
    PromoUsage.objects.filter(pk=first.pk).delete()  # voided: given back already
    assert assert_invariant(promo) == 0
    assert PromoCode.objects.get(pk=promo.pk).updated_at > created  # the code's row says it moved


# --- usages: voided once, never changed ---------------------------------------------------------


def test_a_usage_is_voided_once_and_never_changes(tenant):
    promo = PromoCodeFactory(tenant=tenant, bonus_value=Decimal("5.00"))
    other = PromoCodeFactory(tenant=tenant)
    usage = PromoCode.objects.redeem(promo.code, tenant=tenant, customer="a", amount="10")
    live = PromoUsage.objects.filter(pk=usage.pk)
    for change in [
        dict(base_amount=Decimal("20.00")),
        dict(bonus_amount=Decimal("1.00")),
        dict(customer="b"),
        dict(promo=other),
    ]:
        assert refused_by(lambda change=change: live.update(**change)) == "promo_usage_transition", change
    assert refused_by(lambda: live.update(reference="order-2")) is None  # the shop's own label may change
    PromoUsage.objects.void(usage.pk, tenant=tenant)
    for change in [dict(voided_at=None), dict(voided_at=ClockNow())]:
        assert refused_by(lambda change=change: live.update(**change)) == "promo_usage_transition", change
    with pytest.raises(TransitionRefused):
        with database_refusals(), transaction.atomic():
            live.update(voided_at=None)  # un-voiding would count a use the code already gave back
    assert live.get().voided_at is not None
    assert assert_invariant(promo) == 0


def test_a_usage_is_born_live(tenant):
    promo = PromoCodeFactory(tenant=tenant)
    name = refused_by(
        lambda: PromoUsage.objects.create(
            tenant=tenant,
            promo=promo,
            customer="a",
            base_amount=Decimal("10"),
            bonus_amount=Decimal("1"),
            voided_at=promo.created_at,
        )
    )
    assert name == "promo_usage_transition"


def test_a_usage_is_born_in_its_codes_shop(tenant, api_client):
    """promo_usage_transition: a usage inserted under another tenant than its code's is refused by the
    database. Let through, that tenant listed and voided it: the void gave a use back to a code of
    another shop (usage_in_its_codes_tenant only told afterwards)."""
    from tests.factories import TenantFactory

    promo = PromoCodeFactory(tenant=TenantFactory(), total_usage_limit=1)
    PromoCode.objects.redeem(promo.code, tenant=promo.tenant, customer="a", amount="10")
    stray = dict(tenant=tenant, promo=promo, customer="b", base_amount=Decimal("10"), bonus_amount=Decimal("1"))
    assert refused_by(lambda: PromoUsage.objects.create(**stray)) == "promo_usage_transition"
    assert not PromoUsage.objects.for_tenant(tenant).exists()
    assert api_client.get("/api/t/acme/promo-usages").json()["results"] == []
    assert assert_invariant(promo) == 1


def test_a_usage_is_born_only_of_a_code_usable_when_it_is_written(tenant):
    """promo_usage_of_an_active_code, promo_usage_after_code_start, promo_usage_before_code_end: a usage of an
    inactive code, or of one outside its window by the database's clock at the insert, is refused whoever writes
    it; each maps to the refusal a redeem of that code answers. Let through, a shell's insert counted a use of a
    code an operator had switched off, or that had ended."""
    hour = timedelta(hours=1)
    codes = {
        "promo_usage_of_an_active_code": (PromoCodeFactory(tenant=tenant, is_active=False), errors.PromoInactive),
        "promo_usage_after_code_start": (
            PromoCodeFactory(tenant=tenant, starts_at=timezone.now() + hour),
            errors.PromoNotStarted,
        ),
        "promo_usage_before_code_end": (
            PromoCodeFactory(tenant=tenant, starts_at=timezone.now() - 2 * hour, ends_at=timezone.now() - hour),
            errors.PromoExpired,
        ),
    }
    for constraint, (promo, refusal) in codes.items():
        assert refused_by(_usage_of(promo)) == constraint
        with pytest.raises(refusal):
            with database_refusals(), transaction.atomic():
                _usage_of(promo)()
        assert assert_invariant(promo) == 0
    usable = PromoCodeFactory(tenant=tenant, starts_at=timezone.now() - hour, ends_at=timezone.now() + hour)
    assert refused_by(_usage_of(usable)) is None
    assert assert_invariant(usable) == 1


@pytest.mark.django_db(transaction=True)
def test_a_usage_written_while_its_code_is_switched_off_waits_for_it_and_is_refused():
    """Forced interleaving: a deactivation holds the code's row lock, uncommitted; a raw usage insert meanwhile
    waits in its trigger (which takes that lock to judge), and once the deactivation commits reads the code as
    it was left: inactive, refused. Judged on the row as it read it before the wait, it counted a use of a code
    switched off under it."""
    from tests.factories import TenantFactory
    from tests.races import Background, OpenTransaction, wait_until_blocked

    promo = PromoCodeFactory(tenant=TenantFactory())
    switching_off = OpenTransaction(lambda: PromoCode.objects.filter(pk=promo.pk).update(is_active=False)).start()
    try:
        insert = Background(lambda: refused_by(_usage_of(promo)))
        wait_until_blocked("promos_promousage")
    finally:
        switching_off.commit()
    assert insert.done.wait(15)
    assert insert.error is None and insert.result == "promo_usage_of_an_active_code"
    assert assert_invariant(promo) == 0


# --- promo codes: version ----------------------------------------------------------------------


def test_version_moves_with_the_definition_and_activity_not_with_redeems(tenant):
    promo = PromoCodeFactory(tenant=tenant)
    assert promo.version == 1
    usage = PromoCode.objects.redeem(promo.code, tenant=tenant, customer="a", amount="10")
    PromoUsage.objects.void(usage.pk, tenant=tenant)
    assert PromoCode.objects.get(pk=promo.pk).version == 1  # redeem and void do not stale an open form
    assert PromoCode.objects.update_code(promo.pk, tenant=tenant, max_bonus=Decimal("3")).version == 2
    assert PromoCode.objects.deactivate(promo.pk, tenant=tenant).version == 3
    assert PromoCode.objects.deactivate(promo.pk, tenant=tenant).version == 3  # nothing changed
    assert PromoCode.objects.update_code(promo.pk, tenant=tenant, version=3, is_active=True).version == 4
    # any writer, not only the manager: the trigger bumps it
    PromoCode.objects.filter(pk=promo.pk).update(total_usage_limit=9)
    assert PromoCode.objects.get(pk=promo.pk).version == 5


def test_a_stale_version_is_refused_and_nothing_is_written(tenant):
    promo = PromoCodeFactory(tenant=tenant, total_usage_limit=10)
    PromoCode.objects.update_code(promo.pk, tenant=tenant, total_usage_limit=5)  # someone else's edit: v2
    with pytest.raises(VersionConflict) as conflict:
        PromoCode.objects.update_code(promo.pk, tenant=tenant, version=1, total_usage_limit=10, bonus_value=Decimal(7))
    assert conflict.value.params == {"current": 2}
    promo.refresh_from_db()
    assert (promo.total_usage_limit, promo.bonus_value, promo.version) == (5, Decimal("10.00"), 2)


def test_update_code_writes_only_the_given_fields_with_one_update(tenant):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.promos.helpers import statements

    promo = PromoCodeFactory(tenant=tenant, total_usage_limit=10)
    with CaptureQueriesContext(connection) as queries:
        PromoCode.objects.update_code(promo.pk, tenant=tenant, max_bonus=Decimal("4.00"))
    updates = [sql for sql in statements(queries) if sql.startswith("UPDATE")]
    assert len(updates) == 1
    assert '"max_bonus" =' in updates[0] and '"total_usage_limit"' not in updates[0]
    assert '"times_used"' not in updates[0] and '"is_active"' not in updates[0]


def test_update_code_refuses_fields_that_are_not_editable(tenant):
    promo = PromoCodeFactory(tenant=tenant)
    for field in ["times_used", "created_at", "updated_at"]:
        with pytest.raises(TypeError):
            PromoCode.objects.update_code(promo.pk, tenant=tenant, **{field: 1})


def test_the_counter_can_never_go_below_zero(tenant):
    """promo_times_used_not_negative: a decrement below zero is refused with a domain error, not a 500,
    even by a writer the counter's own guard (promo_times_used_transition) was switched off for."""
    promo = PromoCodeFactory(tenant=tenant)
    with pytest.raises(errors.PromoCounterOutOfStep):
        with pgtrigger.ignore("promos.PromoCode:promo_times_used_transition"):
            with database_refusals(), transaction.atomic():
                PromoCode.objects.filter(pk=promo.pk).update(times_used=F("times_used") - 1)
    assert PromoCode.objects.get(pk=promo.pk).times_used == 0


def test_a_void_on_a_drifted_counter_is_refused_and_writes_nothing(tenant):
    promo = PromoCodeFactory(tenant=tenant)
    usage = PromoCode.objects.redeem(promo.code, tenant=tenant, customer="a", amount="10")
    with pgtrigger.ignore("promos.PromoCode:promo_times_used_transition"):  # the database refuses it: planted
        PromoCode.objects.filter(pk=promo.pk).update(times_used=0)  # plant the drift
    with pytest.raises(errors.PromoCounterOutOfStep):
        PromoUsage.objects.void(usage.pk, tenant=tenant)
    assert PromoUsage.objects.get(pk=usage.pk).voided_at is None  # the usage's void rolled back with it
    assert PromoCode.objects.get(pk=promo.pk).times_used == 0


def test_a_session_is_used_exactly_when_used_at_is_set(tenant):
    """redemption_used_iff_used_at: a direct .update() that breaks it is refused by the database."""
    approved = RedemptionSessionFactory(tenant=tenant, status="approved")
    rows = RedemptionSession.objects.filter(pk=approved.pk)
    assert refused_by(lambda: rows.update(status="used")) == "redemption_used_iff_used_at"  # used, no used_at
    assert (
        refused_by(lambda: rows.update(used_at=ClockNow(), used_amount=Decimal("5"))) == "redemption_used_iff_used_at"
    )
    assert refused_by(lambda: rows.update(status="used", used_at=ClockNow())) == "redemption_used_iff_used_at"
    RedemptionSession.objects.consume(approved.session_id, tenant=tenant, amount="5")
    # a used session's stamps never change (the trigger refuses first); the CHECK stands behind it
    assert refused_by(lambda: rows.update(used_at=None)) == "redemption_session_used_stamps_transition"
    assert refused_by(lambda: rows.update(used_amount=None)) == "redemption_session_used_stamps_transition"
    with pgtrigger.ignore("promos.RedemptionSession:redemption_session_used_stamps_transition"):
        assert refused_by(lambda: rows.update(used_at=None)) == "redemption_used_iff_used_at"
        assert refused_by(lambda: rows.update(used_amount=None)) == "redemption_used_iff_used_at"
    session = rows.get()
    assert (session.status, session.used_amount) == ("used", Decimal("5.00")) and session.used_at is not None
