"""The database's own guards on bookings rows: state machines, CHECKs, guarded columns, versions, invariants."""

import itertools
from datetime import timedelta
from decimal import Decimal

import pgtrigger
import pytest
from django.db import IntegrityError, connection, transaction
from django.db.models.functions import Now

from bookings import invariants
from bookings.exceptions import BookingStateInvalid, DateUnavailable
from bookings.managers import active_q
from bookings.models import Booking, Checkout, Package, PaymentEvent
from bookings.services import hold_in_transaction, start_checkout
from core.exceptions import GuardedWriteError, TransitionRefused
from core.guards import constraint_name, database_refusals
from core.integrity import state_machines
from tests.bookings.factories import PackageFactory, future
from tests.factories import UserFactory
from tests.refusals import refused_by


def machine(model, field):
    (trigger,) = [m for m in state_machines(model) if m.field == field]
    return trigger


MACHINES = [(Booking, "status"), (Checkout, "state"), (Checkout, "refund_state")]


def all_pairs(model, field):
    states = [value for value, _label in model._meta.get_field(field).choices]
    return [(model, field, old, new) for old, new in itertools.product(states, states)]


PAIRS = [pair for model, field in MACHINES for pair in all_pairs(model, field)]
CAPACITY = "bookings.Booking:booking_within_capacity"


def sql(statement, params=()):
    with connection.cursor() as cursor:
        if statement.startswith("ALTER TABLE"):  # ALTER refuses while deferred FK checks are pending
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(statement, params)


def force_state(model, pk, field, value):
    """Put a row in ``value`` past its machine (the trigger disabled inside the test's transaction)."""
    trigger = machine(model, field).get_pgid(model)
    table = model._meta.db_table
    sql(f'ALTER TABLE {table} DISABLE TRIGGER "{trigger}"')
    model.objects.filter(pk=pk).update(**{field: value})
    sql(f'ALTER TABLE {table} ENABLE TRIGGER "{trigger}"')


def held_checkout(tenant):
    """A held booking and its open checkout, as a checkout leaves them."""
    package = PackageFactory(tenant=tenant, daily_capacity=1)
    booking = start_checkout(
        tenant=tenant, package_id=package.pk, date=future(), customer_name="Ann", customer_email="ann@example.com"
    )
    return Checkout.objects.get(booking=booking)


@pytest.fixture
def checkout_row(tenant):
    """A booking and its checkout, with every column a state's CHECK asks for already filled (so only the
    machines judge a move; a stamp once set never changes, so no operation that writes it is run on it)."""
    checkout = held_checkout(tenant)
    Booking.objects.filter(pk=checkout.booking_id).update(confirmed_at=Now(), refunded_at=Now())
    return checkout


@pytest.mark.parametrize(
    "model,field,old,new", PAIRS, ids=[f"{m.__name__}.{f}:{o or 'none'}->{n or 'none'}" for m, f, o, n in PAIRS]
)
def test_every_transition_of_every_machine_is_allowed_or_refused_exactly_as_declared(
    checkout_row, model, field, old, new
):
    pk = checkout_row.booking_id if model is Booking else checkout_row.pk
    force_state(model, pk, field, old)
    allowed = machine(model, field).allows(old, new)
    try:
        with database_refusals(), transaction.atomic():
            model.objects.filter(pk=pk).update(**{field: new})
    except TransitionRefused as refused:
        assert not allowed, f"{old!r} -> {new!r} is in the machine but was refused"
        assert refused.code == "invalid_transition" and refused.params == {"old": old or "?", "new": new or "?"}
        assert getattr(model.objects.get(pk=pk), field) == old
    else:
        assert allowed, f"{old!r} -> {new!r} is not in the machine but was written"
        assert getattr(model.objects.get(pk=pk), field) == new


def test_the_machines_are_the_documented_ones():
    assert machine(Booking, "status").transitions == sorted(
        [
            ("held", "confirmed"),
            ("expired", "confirmed"),
            ("held", "refund_pending"),
            ("expired", "refund_pending"),
            ("cancelled", "refund_pending"),
            ("held", "expired"),
            ("held", "cancelled"),
            ("confirmed", "refund_pending"),
            ("refund_pending", "refunded"),
            ("refunded", "refund_pending"),
            ("held", "payment_pending"),
            ("expired", "payment_pending"),
            ("payment_pending", "confirmed"),
            ("payment_pending", "refund_pending"),
            ("payment_pending", "expired"),
            ("payment_pending", "cancelled"),
        ]
    )
    assert machine(Checkout, "state").transitions == sorted(
        [
            ("creating", "open"),
            ("creating", "failed"),
            ("creating", "expired"),
            ("open", "expired"),
            *[(unpaid, "completed") for unpaid in ("creating", "open", "expired", "failed", "processing")],
            ("payment_failed", "completed"),
            *[(unpaid, "processing") for unpaid in ("creating", "open", "expired", "failed")],
            *[(unsettled, "payment_failed") for unsettled in ("creating", "open", "processing")],
        ]
    )
    assert machine(Booking, "status").initial == ["held"]
    assert machine(Checkout, "state").initial == ["creating"]
    assert machine(Checkout, "refund_state").initial == [""]
    assert machine(Checkout, "refund_state").transitions == sorted(
        [
            ("", "pending"),
            ("pending", "succeeded"),
            ("pending", "submitted"),
            ("pending", "failed"),
            ("pending", "exhausted"),
            ("submitted", "succeeded"),
            ("submitted", "exhausted"),
            ("succeeded", "exhausted"),
            ("failed", "pending"),
            ("exhausted", "pending"),
            # a refund made after all (its answer lost): recorded from its event or a look-up
            *[(owed, recorded) for owed in ("failed", "exhausted") for recorded in ("succeeded", "submitted")],
            ("failed", "exhausted"),
        ]
    )


def test_a_row_cannot_be_inserted_in_a_later_state(tenant):
    package = PackageFactory(tenant=tenant)
    with pytest.raises(TransitionRefused), database_refusals(), transaction.atomic():
        Booking.objects.create(
            tenant=tenant,
            package=package,
            date=future(),
            customer_name="A",
            customer_email="a@example.com",
            status="confirmed",
            confirmed_at=Now(),
            amount=1,
            currency="USD",
            created_at=Now(),
        )


@pytest.mark.parametrize("model,field", MACHINES)
def test_a_value_outside_the_choices_is_refused_by_a_check(checkout_row, model, field):
    pk = checkout_row.booking_id if model is Booking else checkout_row.pk
    trigger = machine(model, field).get_pgid(model)
    sql(f'ALTER TABLE {model._meta.db_table} DISABLE TRIGGER "{trigger}"')  # the CHECK alone
    with pytest.raises(BookingStateInvalid), database_refusals(), transaction.atomic():
        model.objects.filter(pk=pk).update(**{field: "bogus"})


# --- guarded columns -------------------------------------------------------------


def test_a_full_save_of_a_guarded_row_fails_loudly_and_writes_nothing(checkout_row):
    booking = Booking.objects.get(pk=checkout_row.booking_id)
    for row in (booking, booking.package, checkout_row):
        with pytest.raises(GuardedWriteError):
            row.save()
    for row, fields in [(booking, ["status"]), (booking.package, ["daily_capacity"]), (checkout_row, ["state"])]:
        with pytest.raises(GuardedWriteError):
            row.save(update_fields=fields)


def test_when_a_booking_was_confirmed_or_cancelled_never_changes_whoever_writes(tenant):
    """booking_times_set_once_transition: a second "confirm" written straight to a confirmed booking (its time
    rewritten, its status left as it is, which the machine does not see) is refused, as is a cancellation's."""
    confirmed = Booking.objects.get(pk=held_checkout(tenant).booking_id)
    with transaction.atomic():
        Booking.objects.confirm_payment(confirmed.pk)
    rows = Booking.objects.filter(pk=confirmed.pk)
    first = rows.get().confirmed_at
    assert refused_by(lambda: rows.update(confirmed_at=Now())) == "booking_times_set_once_transition"
    assert refused_by(lambda: rows.update(status="confirmed", confirmed_at=None)) == "booking_times_set_once_transition"
    Booking.objects.cancel(confirmed.pk)
    assert refused_by(lambda: rows.update(cancelled_at=Now())) == "booking_times_set_once_transition"
    stored = rows.get()
    assert stored.confirmed_at == first and stored.cancelled_at is not None


def test_a_hold_is_never_pushed_later_whoever_writes(tenant):
    """booking_hold_expiry_transition: a lapsed hold given a later expiry would take its place again behind the
    sweep, the checkout's opening and the proposal's unlink, which judged it lapsed; bringing it forward stays."""
    booking = Booking.objects.get(pk=held_checkout(tenant).booking_id)
    rows = Booking.objects.filter(pk=booking.pk)
    rows.update(hold_expires_at=Now() - timedelta(seconds=1))  # lapsed
    lapsed = rows.get().hold_expires_at
    later = Now() + timedelta(days=1)
    assert refused_by(lambda: rows.update(hold_expires_at=later)) == "booking_hold_expiry_transition"
    assert rows.get().hold_expires_at == lapsed
    assert refused_by(lambda: rows.update(hold_expires_at=lapsed - timedelta(seconds=1))) is None


def test_the_proposal_a_booking_was_made_for_never_changes(tenant):
    """booking_terms_transition covers origin_proposal_id: a payment of a booking whose proposal no longer links
    it is refunded, not placed (proposals.apps), so naming or un-naming its proposal later changes where money
    goes. Only the hold's INSERT names it."""
    booking = Booking.objects.get(pk=held_checkout(tenant).booking_id)
    rows = Booking.objects.filter(pk=booking.pk)
    assert refused_by(lambda: rows.update(origin_proposal_id=12345)) == "booking_terms_transition"
    assert rows.get().origin_proposal_id is None


def test_a_refunded_booking_says_when(tenant):
    """booking_refunded_has_time: ``refunded`` without ``refunded_at`` (a status written past complete_refund,
    which stamps both) is refused, as check_invariants would report it."""
    booking = Booking.objects.get(pk=held_checkout(tenant).booking_id)
    force_state(Booking, booking.pk, "status", "refund_pending")
    rows = Booking.objects.filter(pk=booking.pk)
    assert refused_by(lambda: rows.update(status="refunded")) == "booking_refunded_has_time"
    assert refused_by(lambda: rows.update(status="refunded", refunded_at=Now())) is None


def test_a_payment_event_is_stored_as_received_and_processed_once_whoever_writes(tenant):
    """payment_event_received_transition and payment_event_stamps_set_once_transition: the inbox's key and what
    the provider said never change, and an event processed (or reviewed) stays so: a processed_at cleared
    would have the next redelivery settle the event again."""
    with transaction.atomic():
        pk, processed = PaymentEvent.objects.receive(provider="sandbox", event_id="evt_1", type="t", payload={"a": 1})
        PaymentEvent.objects.mark_processed(pk, result="ignored_type", needs_review=True)
    assert not processed
    rows = PaymentEvent.objects.filter(pk=pk)
    for change in [{"event_id": "evt_2"}, {"type": "x"}, {"payload": {"a": 2}}, {"provider": "stripe"}]:
        assert refused_by(lambda change=change: rows.update(**change)) == "payment_event_received_transition", change
    assert refused_by(lambda: rows.update(processed_at=None)) == "payment_event_stamps_set_once_transition"
    assert refused_by(lambda: rows.update(processed_at=Now())) == "payment_event_stamps_set_once_transition"
    with transaction.atomic():
        assert PaymentEvent.objects.receive(provider="sandbox", event_id="evt_1", type="t", payload={})[1]  # processed
    operator = UserFactory()
    assert PaymentEvent.objects.mark_reviewed(pk, operator=operator)
    assert refused_by(lambda: rows.update(reviewed_at=Now())) == "payment_event_stamps_set_once_transition"
    stored = rows.get()
    assert (stored.event_id, stored.payload, stored.deliveries, stored.reviewed_by) == ("evt_1", {"a": 1}, 2, operator)


def test_the_database_refuses_a_hold_on_a_full_date_whoever_writes(tenant):
    """booking_within_capacity: a date of a package with two places, both taken by holds the managers made: a
    third hold written straight to the table is refused (409 date_unavailable through the managers' mapping;
    a booking is born held, booking_status_transition); another date, and a lapsed hold (which takes no
    place), let it pass."""
    package, day = PackageFactory(tenant=tenant, daily_capacity=2), future()
    for name in "AB":
        with transaction.atomic():
            Booking.objects.hold(package, day, customer_name=name, customer_email="a@example.com")
    assert refused_by(lambda: booking_of(package, date=day)) == "booking_within_capacity"
    with pytest.raises(DateUnavailable), database_refusals(), transaction.atomic():
        booking_of(package, date=day)
    assert refused_by(lambda: booking_of(package, date=future(2))) is None
    Booking.objects.filter(package=package, date=day, customer_name="B").update(
        hold_expires_at=Now() - timedelta(seconds=1)
    )
    assert refused_by(lambda: booking_of(package, date=day)) is None  # B's place is free again
    assert Booking.objects.filter(package=package, date=day).filter(active_q()).count() == 2


def test_a_booking_that_had_no_place_is_refused_one_on_a_full_date_and_one_that_had_keeps_it(tenant):
    """booking_within_capacity on a status change: an expired booking (or a lapsed hold) moved into payment_pending
    or confirmed on a full date is refused, as a late payment's confirm_payment would refuse it; a live hold
    confirmed keeps the place it had, even on a date its own hold fills."""
    package, day = PackageFactory(tenant=tenant, daily_capacity=1), future()
    with transaction.atomic():
        taken = Booking.objects.hold(package, day, customer_name="A", customer_email="a@example.com")
    with transaction.atomic():  # a place taken while the earlier booking had none
        Booking.objects.filter(pk=taken.pk).update(hold_expires_at=Now() - timedelta(seconds=1))
        late = Booking.objects.hold(package, day, customer_name="B", customer_email="b@example.com")
    rows = Booking.objects.filter(pk=taken.pk)
    for status in ("confirmed", "payment_pending"):
        assert (
            refused_by(lambda status=status: rows.update(status=status, confirmed_at=Now()))
            == "booking_within_capacity"
        )
    force_state(Booking, taken.pk, "status", "expired")
    assert refused_by(lambda: rows.update(status="confirmed", confirmed_at=Now())) == "booking_within_capacity"
    assert rows.get().status == "expired"
    late_rows = Booking.objects.filter(pk=late.pk)
    assert refused_by(lambda: late_rows.update(status="confirmed", confirmed_at=Now())) is None  # it had its place


def test_unguarded_columns_may_be_saved_and_the_version_follows_what_people_edit(tenant):
    booking = Booking.objects.get(pk=held_checkout(tenant).booking_id)
    assert booking.version == 1
    booking.customer_email = "new@example.com"
    booking.save(update_fields=["customer_email"])
    assert Booking.objects.get(pk=booking.pk).version == 2
    Booking.objects.filter(pk=booking.pk).update(customer_name="Same")  # changed: bumped
    Booking.objects.filter(pk=booking.pk).update(customer_name="Same")  # unchanged: not bumped
    assert Booking.objects.get(pk=booking.pk).version == 3
    with transaction.atomic():
        Booking.objects.confirm_payment(booking.pk)  # a status change makes an open form stale
    assert Booking.objects.get(pk=booking.pk).version == 4
    Booking.objects.filter(pk=booking.pk).update(hold_expires_at=Now())  # not an edited column
    assert Booking.objects.get(pk=booking.pk).version == 4

    package = Package.objects.get(pk=booking.package_id)
    for change in [{"name": "N"}, {"price": 5}, {"currency": "EUR"}, {"is_active": False}, {"daily_capacity": 4}]:
        before = Package.objects.get(pk=package.pk).version
        Package.objects.filter(pk=package.pk).update(**change)
        assert Package.objects.get(pk=package.pk).version == before + 1, change


# --- invariants: each one detects its planted defect -------------------------------------


def names(check):
    return check(None)


def test_invariants_hold_on_a_healthy_history(checkout_row):
    assert all(
        not names(check)
        for check in (
            invariants.capacity_respected,
            invariants.settled_bookings_are_stamped,
            invariants.paid_checkouts_are_placed_or_refunded,
            invariants.states_inside_their_machines,
            invariants.exclusive_follows_capacity,
        )
    )


def test_capacity_invariant_detects_more_live_bookings_than_capacity(tenant):
    package = PackageFactory(tenant=tenant, daily_capacity=2)
    day = future()
    for name in "AB":
        with transaction.atomic():
            Booking.objects.hold(package, day, customer_name=name, customer_email="a@example.com")
    assert invariants.capacity_respected(None) == []
    Package.objects.filter(pk=package.pk).update(daily_capacity=1)  # around edit_package's occupancy check
    assert invariants.capacity_respected(None) == [f"package {package.pk} on {day}: 2 active > capacity 1"]
    # An expired hold (by the database clock) does not count, swept or not.
    Booking.objects.filter(package=package, customer_name="B").update(hold_expires_at=Now() - timedelta(seconds=1))
    assert invariants.capacity_respected(None) == []


def test_paid_checkout_invariant_detects_a_payment_neither_placed_nor_refunded(checkout_row):
    check = invariants.paid_checkouts_are_placed_or_refunded
    Checkout.objects.filter(pk=checkout_row.pk).update(state="completed")  # paid, booking still held
    assert check(None) == [
        f"checkout {checkout_row.pk}: paid, booking {checkout_row.booking_id} is held and refund is none"
    ]
    Booking.objects.filter(pk=checkout_row.booking_id).update(status="confirmed")
    assert check(None) == []
    Booking.objects.filter(pk=checkout_row.booking_id).update(status="refund_pending")  # cancelled, refund lost
    assert len(check(None)) == 1
    for refund in ("pending", "failed", "pending", "succeeded"):
        Checkout.objects.filter(pk=checkout_row.pk).update(refund_state=refund)
        assert check(None) == []


@pytest.mark.parametrize(
    "model,field,constraint",
    [
        (Booking, "status", "booking_status_valid"),
        (Checkout, "state", "checkout_state_valid"),
        (Checkout, "refund_state", "checkout_refund_state_valid"),
    ],
)
def test_state_invariant_detects_a_state_outside_the_machine(checkout_row, model, field, constraint):
    pk = checkout_row.booking_id if model is Booking else checkout_row.pk
    sql(f"ALTER TABLE {model._meta.db_table} DROP CONSTRAINT {constraint}")  # rolled back with the test
    force_state(model, pk, field, "limbo")
    assert invariants.states_inside_their_machines(None) == [f"{model._meta.model_name} {pk}: {field} 'limbo'"]


def test_exclusive_invariant_detects_a_flag_that_disagrees_with_the_capacity(checkout_row):
    booking = Booking.objects.get(pk=checkout_row.booking_id)
    assert booking.exclusive is True and invariants.exclusive_follows_capacity(None) == []
    Package.objects.filter(pk=booking.package_id).update(daily_capacity=2)  # around edit_package's recompute
    assert invariants.exclusive_follows_capacity(None) == [f"booking {booking.pk}: exclusive=True but capacity 2"]
    Booking.objects.filter(pk=booking.pk).update(exclusive=False)
    assert invariants.exclusive_follows_capacity(None) == []


def test_unique_index_backstop_maps_to_a_domain_error(tenant):
    """The one-confirmed-per-exclusive-date index, met with the capacity trigger (which would refuse first) off."""
    package = PackageFactory(tenant=tenant)
    with transaction.atomic():
        first = hold_in_transaction(
            tenant=tenant, package_id=package.pk, date=future(), customer_name="A", customer_email="a@example.com"
        )
    Booking.objects.filter(pk=first.pk).update(status="confirmed", confirmed_at=Now())
    with pgtrigger.ignore(CAPACITY):
        second = booking_of(package, date=first.date, customer_name="B")
        with pytest.raises(DateUnavailable), database_refusals(), transaction.atomic():
            Booking.objects.filter(pk=second.pk).update(status="confirmed", confirmed_at=Now())
        with pytest.raises(IntegrityError) as raw, transaction.atomic():  # the raw refusal, without the translator
            Booking.objects.filter(pk=second.pk).update(status="confirmed", confirmed_at=Now())
    assert constraint_name(raw.value) == "booking_one_confirmed_per_exclusive_date"


@pytest.mark.parametrize(
    "change",
    [{"date": "date"}, {"package": "package"}, {"tenant": "tenant"}, {"amount": "1.00"}, {"currency": "EUR"}],
    ids=lambda c: next(iter(c)),
)
def test_the_database_refuses_moving_a_booking_or_changing_what_it_charged(tenant, other_tenant, change):
    """A raw writer (past GuardedModel) moving a booking skips the date's lock and its count; one changing the
    amount or currency makes every payment check compare against a price nobody charged."""
    package = PackageFactory(tenant=tenant)
    booking = hold_in_transaction(
        tenant=tenant, package_id=package.pk, date=future(), customer_name="A", customer_email="a@b.co"
    )
    field = next(iter(change))
    others = {"date": future(9), "package": PackageFactory(tenant=tenant), "tenant": other_tenant}
    terms = Booking.objects.filter(pk=booking.pk).values_list("date", "package", "tenant", "amount", "currency")
    before = terms.get()
    with pytest.raises(TransitionRefused), database_refusals(), transaction.atomic():
        Booking.objects.filter(pk=booking.pk).update(**{field: others.get(field, change[field])})
    assert terms.get() == before


# --- rows that copy another's terms -------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [dict(amount=Decimal("1.00")), dict(currency="EUR"), dict(provider="other"), "booking"],
    ids=lambda change: change if isinstance(change, str) else next(iter(change)),
)
def test_what_a_checkout_charges_and_for_which_booking_never_changes_whoever_writes(tenant, change):
    """checkout_terms_transition: the amount the provider charges (and a refund is matched against), its
    currency, its provider and its booking, copied from the booking by the hold, are refused any change."""
    checkout = held_checkout(tenant)
    if change == "booking":
        change = dict(booking_id=held_checkout(tenant).booking_id)
        Checkout.objects.filter(booking_id=change["booking_id"]).delete()  # the other booking's slot is free
    rows = Checkout.objects.filter(pk=checkout.pk)
    assert refused_by(lambda: rows.update(**change)) == "checkout_terms_transition"
    stored = rows.get()
    assert (stored.amount, stored.currency, stored.booking_id) == (
        checkout.amount,
        checkout.currency,
        checkout.booking_id,
    )


def test_a_checkouts_provider_session_and_payment_are_written_once(tenant):
    """checkout_written_once_transition: once recorded, the provider's session id and payment id never change
    (a refund would go to another customer's payment; a payment would be matched to another session), and a
    payment id is still recorded once where the session was opened without one (``''``: not yet)."""
    checkout = held_checkout(tenant)
    rows = Checkout.objects.filter(pk=checkout.pk)
    assert checkout.provider_checkout_id and checkout.provider_payment_id == ""
    assert refused_by(lambda: rows.update(provider_checkout_id="cs_other")) == "checkout_written_once_transition"
    assert refused_by(lambda: rows.update(provider_checkout_id=None)) == "checkout_written_once_transition"
    assert refused_by(lambda: rows.update(provider_payment_id="pi_first")) is None  # '' -> set: the first payment
    assert refused_by(lambda: rows.update(provider_payment_id="pi_other")) == "checkout_written_once_transition"
    assert refused_by(lambda: rows.update(provider_payment_id="")) == "checkout_written_once_transition"
    assert rows.values_list("provider_checkout_id", "provider_payment_id").get() == (
        checkout.provider_checkout_id,
        "pi_first",
    )


def booking_of(package, **overrides):
    """A held booking written straight to the table, past the managers' lock and count (as a bug or a shell
    would): what the database's own triggers judge."""
    fields = dict(
        tenant=package.tenant,
        package=package,
        date=future(),
        customer_name="A",
        customer_email="a@example.com",
        hold_expires_at=Now() + timedelta(minutes=5),
        amount=package.price,
        currency=package.currency,
        exclusive=package.daily_capacity == 1,
        created_at=Now(),
    )
    return Booking.objects.create(**{**fields, **overrides})


def test_a_booking_not_of_its_package_is_refused_whoever_writes(tenant):
    """booking_of_its_package_transition: a booking made under another tenant than its package's (that shop
    would list, cancel and refund it), in another currency, or with an ``exclusive`` flag that disagrees with
    the capacity (the flag arms the last guard of a capacity-1 date), is refused; so is a package moved to
    another tenant (package_tenant_transition), which would take its bookings' shop with it."""
    from tests.factories import TenantFactory

    package, other = PackageFactory(tenant=tenant, daily_capacity=1), TenantFactory()
    assert refused_by(lambda: booking_of(package, tenant=other)) == "booking_of_its_package_transition"
    assert refused_by(lambda: booking_of(package, currency="EUR")) == "booking_of_its_package_transition"
    assert refused_by(lambda: booking_of(package, exclusive=False)) == "booking_of_its_package_transition"
    booking = booking_of(package)
    rows = Booking.objects.filter(pk=booking.pk)
    assert refused_by(lambda: rows.update(exclusive=False)) == "booking_of_its_package_transition"
    packages = Package.objects.filter(pk=package.pk)
    assert refused_by(lambda: packages.update(tenant=other)) == "package_tenant_transition"
    with pytest.raises(TransitionRefused) as refusal, database_refusals(), transaction.atomic():
        booking_of(package, tenant=other)
    assert refusal.value.params == {"old": "package", "new": "booking"}
    # The capacity crossing 1 still moves the flag, with the capacity written first (edit_package).
    Package.objects.edit_package(package.pk, tenant=tenant, daily_capacity=2)
    assert rows.get().exclusive is False
    assert Booking.objects.filter(tenant=other).count() == 0
