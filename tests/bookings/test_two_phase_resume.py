"""A two-phase request (it calls the payment provider between its own transactions) that died before it
stored its answer: once its Idempotency-Key's claim is stale, the retry resumes the work the dead attempt
committed, noted on the key in the same transaction (``note_work``), instead of doing it again.

Before, the retry ran the handler afresh: a second hold and a second pay link beside the first (already
e-mailed) on a package taking two bookings a day, the customer's own hold refused ``date_unavailable`` on
one taking one, a confirmation answered ``proposal_already_processed`` for good, a cancel
``booking_not_cancellable``. "Died" is the process killed at that point: an exception no handler catches.
"""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db.models import F
from django.db.models.functions import Now

from bookings import services as booking_services
from bookings.exceptions import PaymentProviderUnavailable
from bookings.managers import CheckoutManager
from bookings.models import Booking, Checkout
from core.exceptions import LockContended
from core.managers import IdempotencyKeyManager
from core.models import IdempotencyKey, Notification
from proposals import services as proposal_services
from proposals.models import Proposal
from tests.bookings.factories import PackageFactory, book, future, hold_without_provider_answer
from tests.bookings.providers import SameSessionProvider
from tests.proposals.factories import make_proposal
from tests.refusals import assert_error


class Died(BaseException):
    """The process killed here: not an error any handler or middleware catches."""


def die(*args, **kwargs):
    raise Died()


def stale(settings):
    """Every claim older than IDEMPOTENCY_IN_PROGRESS_TIMEOUT: a retry now takes it over."""
    past = Now() - settings.IDEMPOTENCY_IN_PROGRESS_TIMEOUT - timedelta(seconds=1)
    IdempotencyKey.objects.update(created_at=past)


@pytest.fixture
def package(tenant):
    # two a day: the old retry held a second place beside the first, both payable
    return PackageFactory(tenant=tenant, price=Decimal("450.00"), daily_capacity=2)


AFTER_THE_HOLD = "after the hold committed, before the provider was called"
BEFORE_THE_ANSWER = "after the checkout opened, before the answer was stored"


def died_at(monkeypatch, point, provider_call):
    if point == AFTER_THE_HOLD:
        monkeypatch.setattr(*provider_call, die)
    else:
        monkeypatch.setattr(IdempotencyKeyManager, "complete", die)


@pytest.mark.parametrize("point", [AFTER_THE_HOLD, BEFORE_THE_ANSWER])
def test_a_checkout_retried_after_its_request_died_answers_the_booking_it_held(
    anon_client, package, monkeypatch, settings, recording_provider, point
):
    body = {"package": package.pk, "date": future().isoformat(), "customer": {"name": "Ann", "email": "a@b.co"}}

    def post():
        return anon_client.post("/api/public/acme/checkouts", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")

    with monkeypatch.context() as dying:
        died_at(dying, point, (booking_services, "create_provider_checkout"))
        with pytest.raises(Died):
            post()
    (held,) = Booking.objects.all()
    stale(settings)
    retried = post()

    assert retried.status_code == 201, retried.content
    assert Booking.objects.get() == held and retried.json()["booking"]["id"] == held.pk
    checkout = Checkout.objects.get(booking=held)
    assert checkout.state == "open" and retried.json()["checkout"]["url"] == checkout.url
    assert recording_provider.checkouts == [held.pk]  # one session asked for, by the dead attempt or the retry
    assert Notification.objects.filter(kind="booking_held").count() == 1  # one pay link e-mailed
    replay = post()
    assert replay["Idempotent-Replayed"] == "true" and replay.json() == retried.json()


@pytest.mark.parametrize("point", [AFTER_THE_HOLD, BEFORE_THE_ANSWER])
def test_a_confirmation_retried_after_its_request_died_answers_the_booking_it_made(
    api_client, tenant, package, monkeypatch, settings, recording_provider, point
):
    proposal = make_proposal(tenant, package=package)

    def post():
        url = f"/api/t/acme/proposals/{proposal.pk}/confirm"
        return api_client.post(url, {"session_id": "chat-1"}, format="json", HTTP_IDEMPOTENCY_KEY="c-1")

    with monkeypatch.context() as dying:
        died_at(dying, point, (proposal_services, "create_provider_checkout"))
        with pytest.raises(Died):
            post()
    stale(settings)
    retried = post()

    assert retried.status_code == 200, retried.content
    (booking,) = Booking.objects.all()
    stored = Proposal.objects.get(pk=proposal.pk)
    assert (stored.status, stored.booking_id) == ("executed", booking.pk)
    assert retried.json()["booking"]["id"] == booking.pk and retried.json()["proposal"]["status"] == "executed"
    assert Checkout.objects.get(booking=booking).state == "open"
    assert recording_provider.checkouts == [booking.pk]


def test_a_confirmation_resumed_while_the_provider_is_down_reopens_the_proposal(
    api_client, tenant, package, monkeypatch, settings
):
    """As a confirmation whose provider call fails: the hold released, the proposal pending again, so a
    later retry (the 503 says "try again") books anew."""
    proposal = make_proposal(tenant, package=package)
    url = f"/api/t/acme/proposals/{proposal.pk}/confirm"
    with monkeypatch.context() as dying:
        dying.setattr(proposal_services, "create_provider_checkout", die)
        with pytest.raises(Died):
            api_client.post(url, {"session_id": "chat-1"}, format="json", HTTP_IDEMPOTENCY_KEY="c-1")
    stale(settings)
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.DownProvider"

    down = api_client.post(url, {"session_id": "chat-1"}, format="json", HTTP_IDEMPOTENCY_KEY="c-1")

    assert_error(down, 503, "payment_provider_unavailable")
    stored = Proposal.objects.get(pk=proposal.pk)
    assert (stored.status, stored.booking_id) == ("pending", None)
    assert Booking.objects.get().status == "expired"  # released: the date is free
    settings.PAYMENT_PROVIDER = "sandbox"
    again = api_client.post(url, {"session_id": "chat-1"}, format="json", HTTP_IDEMPOTENCY_KEY="c-1")
    assert again.status_code == 200 and Proposal.objects.get(pk=proposal.pk).status == "executed"


def test_a_cancel_retried_after_its_request_died_answers_the_cancelled_booking(
    api_client, package, monkeypatch, settings
):
    held = book(package)

    def post():
        url = f"/api/t/acme/bookings/{held.pk}/cancel"
        return api_client.post(url, {}, format="json", HTTP_IDEMPOTENCY_KEY="x-1")

    with monkeypatch.context() as dying:
        dying.setattr(IdempotencyKeyManager, "complete", die)
        with pytest.raises(Died):
            post()
    stale(settings)
    retried = post()

    assert retried.status_code == 200, retried.content
    assert retried.json()["id"] == held.pk and retried.json()["status"] == "cancelled"


def test_a_claim_taken_over_from_an_attempt_that_died_before_its_work_committed_runs_the_work(
    anon_client, package, monkeypatch, settings
):
    """Nothing was noted (the hold never committed): the retry holds, as a first attempt would."""
    body = {"package": package.pk, "date": future().isoformat(), "customer": {"name": "Ann", "email": "a@b.co"}}
    with monkeypatch.context() as dying:
        dying.setattr(booking_services, "hold_in_transaction", die)
        with pytest.raises(Died):
            anon_client.post("/api/public/acme/checkouts", body, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    assert not Booking.objects.exists() and IdempotencyKey.objects.get().work_id is None
    stale(settings)
    retried = anon_client.post("/api/public/acme/checkouts", body, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    assert retried.status_code == 201 and Booking.objects.get().pk == retried.json()["booking"]["id"]


# --- a request that answered, but with an answer worth retrying (not kept) ------------------------------


def test_a_checkout_whose_checkout_met_a_busy_row_after_the_hold_is_resumed_by_its_retry(
    anon_client, package, monkeypatch, recording_provider
):
    """Regression: the 409 resource_locked (with Retry-After) is not kept, and freeing the key forgot the hold
    it had committed: the retry held a second place beside the first."""
    body = {"package": package.pk, "date": future().isoformat(), "customer": {"name": "Ann", "email": "a@b.co"}}

    def post():
        return anon_client.post("/api/public/acme/checkouts", body, format="json", HTTP_IDEMPOTENCY_KEY="k-3")

    def busy(*args, **kwargs):
        raise LockContended()

    with monkeypatch.context() as locked:
        locked.setattr(CheckoutManager, "open", busy)
        refused = post()
    assert_error(refused, 409, "resource_locked")
    assert refused.has_header("Retry-After")
    (held,) = Booking.objects.all()

    retried = post()  # at once, as Retry-After says: no claim to wait out

    assert retried.status_code == 201, retried.content
    assert Booking.objects.get() == held and retried.json()["booking"]["id"] == held.pk
    assert Checkout.objects.get(booking=held).state == "open"


def test_a_checkout_refused_by_the_provider_holds_anew_on_its_retry(anon_client, package, settings):
    """The 503's hold was released before its checkout ever opened: that work was undone, and the retry
    (the 503 says "try again") holds anew rather than answer with the released booking."""
    body = {"package": package.pk, "date": future().isoformat(), "customer": {"name": "Ann", "email": "a@b.co"}}
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.DownProvider"
    down = anon_client.post("/api/public/acme/checkouts", body, format="json", HTTP_IDEMPOTENCY_KEY="k-4")
    assert_error(down, 503, "payment_provider_unavailable")
    settings.PAYMENT_PROVIDER = "sandbox"

    retried = anon_client.post("/api/public/acme/checkouts", body, format="json", HTTP_IDEMPOTENCY_KEY="k-4")

    assert retried.status_code == 201, retried.content
    first, second = Booking.objects.order_by("pk")
    assert (first.status, second.status, retried.json()["booking"]["id"]) == ("expired", "held", second.pk)


# --- retries racing for the one resume ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_ten_retries_racing_after_a_checkout_died_resume_it_once(package, monkeypatch, settings, recording_provider):
    """The key's try-lock and its one-row takeover let exactly one retry resume the dead attempt's hold:
    the others are told the key is in progress (409 with Retry-After) or replayed the answer it stored.
    One booking, one provider session, one pay link e-mailed."""
    from rest_framework.test import APIClient

    from tests.races import run_concurrently

    # one customer's eleven requests in a second: past the checkout rate limits, which are not what is raced here
    settings.LOCKSTEP_THROTTLE_RATES = {
        **settings.LOCKSTEP_THROTTLE_RATES,
        "checkout_address": None,
        "checkout_email": None,
    }
    body = {"package": package.pk, "date": future().isoformat(), "customer": {"name": "Ann", "email": "a@b.co"}}

    def post(client):
        return client.post("/api/public/acme/checkouts", body, format="json", HTTP_IDEMPOTENCY_KEY="k-race")

    with monkeypatch.context() as dying:
        dying.setattr(booking_services, "create_provider_checkout", die)
        with pytest.raises(Died):
            post(APIClient())
    (held,) = Booking.objects.all()
    stale(settings)
    clients = [APIClient() for _ in range(10)]

    outcomes = run_concurrently(lambda i: post(clients[i]), 10)

    assert all(outcome.ok for outcome in outcomes), [outcome.error for outcome in outcomes]
    answers = [outcome.value for outcome in outcomes]
    resumed = [a for a in answers if a.status_code == 201 and not a.has_header("Idempotent-Replayed")]
    assert len(resumed) == 1, [(a.status_code, a.content) for a in answers]
    for answer in answers:
        if answer.status_code == 409:
            assert_error(answer, 409, "idempotency_key_in_progress")
            assert answer.has_header("Retry-After")
        else:
            assert answer.status_code == 201 and answer.json()["booking"]["id"] == held.pk
    assert Booking.objects.get() == held and Checkout.objects.get(booking=held).state == "open"
    assert recording_provider.checkouts == [held.pk]
    assert Notification.objects.filter(kind="booking_held").count() == 1


@pytest.fixture
def same_session_provider(settings):
    SameSessionProvider.reset()
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.SameSessionProvider"
    return SameSessionProvider


def as_a_resume_reads_it(booking):
    """The booking and its checkout as ``resume_checkout`` reads them (the checkout still ``creating``)."""
    return Booking.objects.select_related("checkout").annotate(package_name=F("package__name")).get(pk=booking.pk)


def test_a_retry_resuming_a_hold_whose_request_is_still_alive_never_kills_the_pay_link_it_opened(
    tenant, same_session_provider
):
    """Regression: a request still waiting for the provider past IDEMPOTENCY_IN_PROGRESS_TIMEOUT, its retry
    resuming the same hold. Both get the one session of their idempotency key; the original opened the
    checkout first and e-mailed its link, and the retry, finding its own opening refused, recorded the
    checkout expired and closed the session: the customer held a dead pay link and a hold about to go."""
    booking = hold_without_provider_answer(PackageFactory(tenant=tenant))
    retry_read = as_a_resume_reads_it(booking)
    original = booking_services.create_provider_checkout(booking)
    retried = booking_services.create_provider_checkout(retry_read)
    checkout = Checkout.objects.get(booking=booking)
    assert checkout.state == Checkout.State.OPEN and retried.state == Checkout.State.OPEN
    assert checkout.url == original.url == retried.url
    assert Booking.objects.get(pk=booking.pk).status == Booking.Status.HELD
    assert same_session_provider.expired == []  # the session the customer was sent is still open
    assert Notification.objects.filter(kind="booking_held").count() == 1


def test_a_retry_whose_provider_call_fails_after_the_request_it_resumes_opened_the_checkout_answers_that_checkout(
    tenant, same_session_provider
):
    """The retry's own call to the provider failed (a connection reset) after the original opened the checkout:
    no reason to release the hold its customer is paying for, nor to answer 503 over a working pay link (a
    confirm's 503 reopens its proposal, which the open checkout's booking then refuses, for good)."""
    booking = hold_without_provider_answer(PackageFactory(tenant=tenant))
    retry_read = as_a_resume_reads_it(booking)
    original = booking_services.create_provider_checkout(booking)
    same_session_provider.refuse_next = SameSessionProvider.UNREACHABLE
    retried = booking_services.create_provider_checkout(retry_read)
    assert retried.state == Checkout.State.OPEN and retried.url == original.url
    assert Booking.objects.get(pk=booking.pk).status == Booking.Status.HELD
    assert Checkout.objects.get(booking=booking).state == Checkout.State.OPEN


def test_a_retry_refused_for_overlapping_the_request_it_resumes_leaves_that_request_to_open_the_checkout(
    tenant, same_session_provider
):
    """Stripe refuses a request made while another under the same key is still being served (409, nothing saved
    under the key): that other request decides. The retry answers 503 and leaves the hold and its checkout as
    they are; the original then opens the checkout with its session."""
    booking = hold_without_provider_answer(PackageFactory(tenant=tenant))
    original_read = as_a_resume_reads_it(booking)
    same_session_provider.refuse_next = SameSessionProvider.IN_PROGRESS
    with pytest.raises(PaymentProviderUnavailable):
        booking_services.create_provider_checkout(booking)  # the retry, while the original waits
    assert Booking.objects.get(pk=booking.pk).status == Booking.Status.HELD
    assert Checkout.objects.get(booking=booking).state == Checkout.State.CREATING
    original = booking_services.create_provider_checkout(original_read)
    assert original.state == Checkout.State.OPEN and Booking.objects.get(pk=booking.pk).status == Booking.Status.HELD


def test_a_request_whose_retry_failed_the_checkout_meanwhile_closes_its_session_and_answers_503(
    tenant, same_session_provider
):
    """The retry's call failed (unreachable) while the original still waited: the retry failed the checkout and
    released the hold. The original's session then comes back to a checkout no longer creating: it closes that
    session (nobody will pay through it) and answers 503, never a checkout that cannot be paid."""
    booking = hold_without_provider_answer(PackageFactory(tenant=tenant))
    original_read = as_a_resume_reads_it(booking)
    same_session_provider.refuse_next = SameSessionProvider.UNREACHABLE
    with pytest.raises(PaymentProviderUnavailable):
        booking_services.create_provider_checkout(booking)  # the retry
    assert Booking.objects.get(pk=booking.pk).status == Booking.Status.EXPIRED  # released: the date is free
    with pytest.raises(PaymentProviderUnavailable):
        booking_services.create_provider_checkout(original_read)
    assert Checkout.objects.get(booking=booking).state == Checkout.State.FAILED
    assert same_session_provider.expired == [booking.pk]  # its session closed
    assert Notification.objects.filter(kind="booking_held").count() == 0
