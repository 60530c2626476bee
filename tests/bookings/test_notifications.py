"""Customers hear about their booking, in their language, once per event; operators hear about a lost refund."""

import pytest
from django.core import mail
from django.db import connection, transaction
from django.db.models import Q
from django.utils import translation

from bookings import notifications as notices
from bookings.models import Booking, Checkout
from bookings.services import cancel_booking, refund_booking, sandbox_deliver, start_checkout
from core.exceptions import LockContended
from core.models import Notification
from core.notifications import NOTIFICATION_RETRIES, MailRefused, message_id, send
from tests.bookings.factories import PackageFactory, future
from tests.races import row_locked


def book(package, *, language="en"):
    with translation.override(language):  # what LocaleMiddleware does for the customer's request
        return start_checkout(
            tenant=package.tenant, package_id=package.pk, date=future(), customer_name="Maya", customer_email="m@x.io"
        )


def owed(booking):
    """The booking's notices by kind (a refund's are about the booking and that refund)."""
    about = Q(subject=f"booking:{booking.pk}") | Q(subject__startswith=f"booking:{booking.pk}:refund:")
    return dict(Notification.objects.filter(about).values_list("kind", "status"))


def send_all():
    """What the worker does with each queued job (tests/core/test_worker.py runs the real worker)."""
    for pk in Notification.objects.filter(status="pending").order_by("pk").values_list("pk", flat=True):
        send(pk)


def _last_job():
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(id), 0) FROM procrastinate_jobs")
        return cursor.fetchone()[0]


@pytest.fixture(autouse=True)
def jobs_before(db):
    """The queue is not a Django model, so a committing (transactional) test elsewhere leaves its jobs."""
    global _FIRST_JOB
    _FIRST_JOB = _last_job()


_FIRST_JOB = 0


def queued_jobs():
    """The notifications queued by this test, in order."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (args ->> 'notification_id')::bigint FROM procrastinate_jobs"
            " WHERE task_name = 'notifications.send' AND id > %s ORDER BY id",
            [_FIRST_JOB],
        )
        return [row[0] for row in cursor.fetchall()]


@pytest.fixture
def package(tenant):
    return PackageFactory(tenant=tenant, name="Sunset cruise")


def test_a_hold_tells_the_customer_the_pay_link_and_the_expiry(package):
    booking = book(package)
    assert owed(booking) == {notices.HELD: "pending"}
    notification = Notification.objects.get(subject=f"booking:{booking.pk}")
    assert queued_jobs() == [notification.pk]  # queued in the transaction that recorded it
    send_all()
    [message] = mail.outbox
    assert message.to == ["m@x.io"]
    assert message.subject == f"Your booking for Sunset cruise on {booking.date.isoformat()} is held"
    checkout = Checkout.objects.get(booking=booking)
    assert checkout.url.startswith("http") and f"here to confirm it:\n{checkout.url}\n" in message.body
    assert "Pay 100.00 USD" in message.body
    assert Booking.objects.get(pk=booking.pk).hold_expires_at.strftime("%H:%M") in message.body
    assert owed(booking) == {notices.HELD: "sent"}


def test_every_later_notice_is_in_the_language_the_customer_checked_out_in(package):
    booking = book(package, language="ar")
    sandbox_deliver(booking.checkout, "checkout.session.completed")  # the webhook has no customer language
    send_all()
    held, confirmed = mail.outbox
    assert held.subject.startswith("حجزك لـ Sunset cruise")
    assert confirmed.subject == f"تم تأكيد حجزك لـ Sunset cruise بتاريخ {booking.date.isoformat()}"
    assert "مرحبًا Maya" in confirmed.body


def test_cancel_and_refund_of_a_paid_booking_are_told_once_each(package):
    booking = book(package)
    sandbox_deliver(booking.checkout, "checkout.session.completed")
    cancel_booking(booking.pk)  # refunds after the cancellation commits
    assert Booking.objects.get(pk=booking.pk).status == "refunded"
    every_event = (notices.HELD, notices.CONFIRMED, notices.CANCELLED, notices.REFUNDED)
    assert owed(booking) == dict.fromkeys(every_event, "pending")
    send_all()
    send_all()  # a second pass (a retried job) sends nothing again
    assert [m.subject.split(" is ")[-1] for m in mail.outbox[:3]] == ["held", "confirmed", "cancelled"]
    assert mail.outbox[3].subject.startswith("Your refund") and len(mail.outbox) == 4
    assert "100.00 USD for booking" in mail.outbox[3].body


def test_a_payment_that_came_after_the_date_was_taken_is_told_before_its_refund(package):
    """Regression: the customer whose late payment could not be placed heard only "refunded" (or, were the
    refund given up on, nothing), never why the booking they paid for was not theirs."""
    from datetime import timedelta

    from django.db.models.functions import Now

    late = book(package)
    Booking.objects.filter(pk=late.pk).update(hold_expires_at=Now() - timedelta(seconds=1))
    Booking.objects.expire_holds()
    taker = book(package)  # the date, free again, is held and paid by someone else
    sandbox_deliver(taker.checkout, "checkout.session.completed")
    assert sandbox_deliver(late.checkout, "checkout.session.completed").result == "refund_pending"
    assert Booking.objects.get(pk=late.pk).status == "refunded"  # refunded after the commit
    assert owed(late) == dict.fromkeys((notices.HELD, notices.NOT_PLACED, notices.REFUNDED), "pending")
    send_all()
    told = [m.subject for m in mail.outbox if f"booking #{late.pk} " in m.body or f"#{late.pk} (" in m.body]
    assert told == [
        f"Your booking for Sunset cruise on {late.date.isoformat()} could not be confirmed",
        f"Your refund for Sunset cruise on {late.date.isoformat()}",
    ]
    assert notices.NOT_PLACED not in owed(taker)


def test_a_delayed_payment_that_failed_is_told_once_the_date_released_and_nothing_charged(package):
    """Regression: a bank debit that failed days later released the date and no one told the customer."""
    booking = book(package)
    assert sandbox_deliver(booking.checkout, "checkout.session.completed", payment_status="unpaid").result == (
        "payment_pending"
    )
    assert sandbox_deliver(booking.checkout, "checkout.session.async_payment_failed").result == "released"
    assert sandbox_deliver(booking.checkout, "checkout.session.async_payment_failed").result != "released"
    assert owed(booking) == dict.fromkeys((notices.HELD, notices.PAYMENT_FAILED), "pending")
    send_all()
    (told,) = [m for m in mail.outbox if m.subject.startswith("Your payment")]
    assert told.subject == f"Your payment for Sunset cruise on {booking.date.isoformat()} did not go through"
    assert "100.00 USD" in told.body and "nothing was charged" in told.body


def test_a_cancelled_booking_paid_afterwards_is_not_told_twice_why(package):
    booking = book(package)
    cancel_booking(booking.pk)  # held: cancelled, "cancelled, the refund follows in a separate e-mail"
    assert sandbox_deliver(booking.checkout, "checkout.session.completed").result == "refund_pending"
    assert notices.NOT_PLACED not in owed(booking) and notices.CANCELLED in owed(booking)


def test_a_notification_is_sent_at_most_once(package):
    booking = book(package)
    pk = Notification.objects.get(subject=f"booking:{booking.pk}").pk
    assert send(pk) is True
    assert send(pk) is False  # a duplicate job, or a retry after the send
    assert len(mail.outbox) == 1
    with transaction.atomic():  # the same event owed again (a redelivery): recorded once
        assert Notification.objects.owe(**notices.held_notice(booking, pay_url="https://pay.example/again")) is None
    assert Notification.objects.filter(subject=f"booking:{booking.pk}").count() == 1


def test_the_row_and_its_job_are_one_statement_and_the_job_is_procrastinates_own(package):
    """``owe`` queues in its INSERT the job ``send_notification.defer()`` would queue; a repeat queues none."""
    from core.tasks import send_notification

    columns = "queue_name, task_name, priority, lock, queueing_lock, scheduled_at, status, attempts, args"

    def job(where, value):
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {columns} FROM procrastinate_jobs WHERE {where} = %s", [value])  # noqa: S608
            return cursor.fetchall()

    booking = book(package)
    pk = Notification.objects.get(subject=f"booking:{booking.pk}").pk
    assert queued_jobs() == [pk]
    ours = job("args ->> 'notification_id'", str(pk))
    theirs = job("id", send_notification.defer(notification_id=pk))
    assert ours == theirs and len(ours) == 1
    with transaction.atomic():
        assert (
            Notification.objects.owe(**notices.held_notice(booking, pay_url="https://pay.example/again")) is None
        )  # recorded already: no job
    assert queued_jobs() == [pk, pk]  # (the second is the one this test deferred by hand)


def test_an_event_rolled_back_owes_nothing(package):
    booking = book(package)
    before = (Notification.objects.count(), len(queued_jobs()))
    with pytest.raises(RuntimeError), transaction.atomic():
        cancel_booking(booking.pk)
        raise RuntimeError("the transaction fails after the cancel")
    assert Booking.objects.get(pk=booking.pk).status == "held"
    assert (Notification.objects.count(), len(queued_jobs())) == before


def test_a_mail_server_refusal_is_retried_then_given_up_on(package, settings):
    booking = book(package)
    pk = Notification.objects.get(subject=f"booking:{booking.pk}").pk
    settings.EMAIL_BACKEND = "tests.bookings.providers.RefusingEmailBackend"
    with pytest.raises(MailRefused) as refused:
        send(pk)
    assert not refused.value.final and isinstance(refused.value.__cause__, ConnectionRefusedError)
    row = Notification.objects.get(pk=pk)
    assert (row.status, row.attempts, row.last_error) == ("pending", 1, "ConnectionRefusedError: no SMTP")
    for attempt in range(2, NOTIFICATION_RETRIES + 1):  # the retries but the last
        with pytest.raises(MailRefused) as refused:
            send(pk)
        assert not refused.value.final and Notification.objects.get(pk=pk).status == "pending", attempt
    with pytest.raises(MailRefused) as refused:
        send(pk)
    assert refused.value.final
    row = Notification.objects.get(pk=pk)
    assert (row.status, row.attempts) == ("failed", NOTIFICATION_RETRIES + 1)  # the first attempt and 5 retries
    assert send(pk) is False  # a job's run after that sends nothing


def test_a_message_taken_before_its_answer_was_lost_is_retried_under_the_same_message_id(package, settings):
    """A mail server that took the message but whose answer was lost (a timeout) looks like a refusal, and the
    retry sends it again: both copies carry the notification's own Message-ID, which mail systems use to
    drop the second (it was a new one per attempt, so the customer got the pay link twice)."""
    from tests.bookings.providers import LostAnswerEmailBackend

    booking = book(package)
    notification = Notification.objects.get(subject=f"booking:{booking.pk}")
    settings.EMAIL_BACKEND = "tests.bookings.providers.LostAnswerEmailBackend"
    LostAnswerEmailBackend.taken = []
    with pytest.raises(MailRefused):
        send(notification.pk)
    assert send(notification.pk) is True
    first, second = LostAnswerEmailBackend.taken
    assert first.extra_headers["Message-ID"] == second.extra_headers["Message-ID"] == message_id(notification)
    assert first.message()["Message-ID"] == message_id(notification)  # on the wire, not Django's own


@pytest.mark.django_db(transaction=True)
def test_a_busy_row_at_the_claim_attempts_nothing_and_uses_up_no_retry(package):
    """The claim meets the row locked (here by another connection, as ``take_back`` locks it): the run
    raises ``LockContended``, its job is retried, and the row's count of mail attempts is untouched."""
    booking = book(package)
    pk = Notification.objects.get(subject=f"booking:{booking.pk}").pk
    with row_locked(Notification.objects.filter(pk=pk)), pytest.raises(LockContended):
        send(pk)
    row = Notification.objects.get(pk=pk)
    assert (row.status, row.attempts) == ("pending", 0)
    assert send(pk) is True


def test_the_database_refuses_a_notification_sent_twice(package):
    from django.db import IntegrityError

    booking = book(package)
    pk = Notification.objects.get(subject=f"booking:{booking.pk}").pk
    send(pk)
    with pytest.raises(IntegrityError, match="notification_status_transition"), transaction.atomic():
        Notification.objects.filter(pk=pk).update(status="sending")  # a buggy resend: sent -> sending


def test_operators_hear_about_a_refund_given_up_on(package, settings):
    settings.OPERATOR_EMAILS = ["ops@example.com"]
    settings.REFUND_MAX_ATTEMPTS = 1
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.RefundDownProvider"
    booking = book(package)
    sandbox_deliver(booking.checkout, "checkout.session.completed")
    cancel_booking(booking.pk)
    assert Checkout.objects.get(booking=booking).refund_state == "exhausted"
    assert refund_booking(booking.pk) is None
    send_all()
    [alert] = [m for m in mail.outbox if m.to == ["ops@example.com"]]
    assert alert.subject == f"Refund of booking #{booking.pk} failed 1 times: act on it"
    assert "m@x.io" in alert.body


@pytest.mark.django_db(transaction=True)
def test_senders_racing_for_one_notification_send_it_once(tenant):
    """A duplicated or retried job, several workers: each claims the row; exactly one claim wins."""
    from tests.races import run_concurrently, tally

    booking = book(PackageFactory(tenant=tenant, name="Sunset cruise"))
    pk = Notification.objects.get(subject=f"booking:{booking.pk}").pk
    outcomes = run_concurrently(lambda i: send(pk), 8)
    assert tally(outcomes) == {"ok": 8}, [repr(o.error) for o in outcomes if not o.ok]
    assert sorted(o.value for o in outcomes) == [False] * 7 + [True]
    assert len(mail.outbox) == 1
    row = Notification.objects.get(pk=pk)
    assert (row.status, row.attempts) == ("sent", 1)


def test_an_operator_queues_again_a_pending_notification_whose_job_is_gone(package, admin_client, client):
    """A notification left ``pending`` without a job (given up on by a release before the row counted its
    attempts) is sent once a superuser queues it again; one already sent is left alone."""
    from django.contrib.auth import get_user_model
    from django.urls import reverse

    other = PackageFactory(tenant=package.tenant, name="Dhow dinner")
    lost, sent = (Notification.objects.get(subject=f"booking:{book(p).pk}") for p in (package, other))
    send(sent.pk)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM procrastinate_jobs WHERE (args ->> 'notification_id')::bigint = %s", [lost.pk])
    assert lost.pk not in queued_jobs()
    changelist = reverse("admin:core_notification_changelist")
    chosen = {"action": "queue_again", "_selected_action": [lost.pk, sent.pk]}
    said = [str(m) for m in admin_client.post(changelist, chosen, follow=True).context["messages"]]
    assert "1 notification queued." in said and f"{sent}: not pending: nothing to send" in said, said
    assert queued_jobs().count(lost.pk) == 1
    send_all()
    assert Notification.objects.get(pk=lost.pk).status == "sent"

    staff = get_user_model().objects.create_user("staff", password="pw", is_staff=True)  # not a superuser
    client.force_login(staff)
    assert client.post(changelist, chosen).status_code == 403  # the queue is shared by every tenant


def test_an_operator_sends_again_a_notification_left_sending_by_a_worker_that_died(package, admin_client):
    """Regression: a worker that died between its claim and the mail server's answer left the row
    ``sending``: its job's retry found it taken and sent nothing, and no action could send it. A
    superuser now sends it again, after a confirmation that says to check the mail log first; a claim
    too recent to be no send in flight (``SENDING_LEFT_AFTER``) is left to its worker."""
    from django.db.models.functions import Now
    from django.urls import reverse

    from core.models import SENDING_LEFT_AFTER

    other = PackageFactory(tenant=package.tenant, name="Dhow dinner")
    left, recent = (Notification.objects.get(subject=f"booking:{book(p).pk}") for p in (package, other))
    for row in (left, recent):
        assert Notification.objects.claim(row.pk) is not None  # claimed; then the worker died
    Notification.objects.filter(pk=left.pk).update(claimed_at=Now() - SENDING_LEFT_AFTER)
    assert send(left.pk) is False and not mail.outbox  # the job's retry: taken, nothing sent
    changelist = reverse("admin:core_notification_changelist")
    chosen = {"action": "send_again", "_selected_action": [left.pk, recent.pk]}

    page = admin_client.post(changelist, chosen)  # the confirmation: nothing happens before it is confirmed
    assert page.status_code == 200 and "mail log" in page.content.decode()
    assert Notification.objects.get(pk=left.pk).status == "sending"
    said = [str(m) for m in admin_client.post(changelist, {**chosen, "apply": "1"}, follow=True).context["messages"]]

    assert "1 notification queued again." in said, said
    assert any(m.startswith(str(recent)) and "nothing to send again" in m for m in said), said
    assert queued_jobs()[-1] == left.pk
    assert Notification.objects.get(pk=recent.pk).status == "sending"  # in flight, as far as anyone knows
    assert send(left.pk) is True and len(mail.outbox) == 1
    assert Notification.objects.values_list("status", "attempts").get(pk=left.pk) == ("sent", 2)
