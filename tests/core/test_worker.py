"""The worker (procrastinate on the test database): sweeps run by themselves, once per period."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.db import OperationalError, connection
from django.db.models.functions import Now
from procrastinate.contrib.django.models import ProcrastinateJob

from bookings.models import Booking
from bookings.services import start_checkout
from core import notifications
from core.exceptions import DatabaseUnavailable, LockContended
from core.health import readiness
from core.management.base import EXIT_LOCKED, EXIT_OK
from core.models import Notification
from core.notifications import NOTIFICATION_RETRIES
from core.tasks import HOURLY, SWEEPS, run_sweep, send_notification
from tests.bookings.factories import PackageFactory, future
from tests.factories import TenantFactory
from tests.races import row_locked

ROOT = Path(__file__).resolve().parents[2]
EVERY_SECOND = "* * * * * *"  # croniter's sixth field: seconds

# A real worker process (`manage.py procrastinate worker`) on this test's database.
WORKER = textwrap.dedent(
    """
    import sys, django
    from django.conf import settings
    settings.DATABASES["default"]["NAME"] = sys.argv[1]  # the test database, before any connection
    django.setup()
    from django.core.management import call_command
    call_command("procrastinate", "worker", "--name", sys.argv[2])
    """
)


@pytest.fixture(autouse=True)
def empty_queue(django_db_blocker):
    """procrastinate's tables are not Django-managed, so a transactional test's flush leaves their rows."""
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM procrastinate_periodic_defers; DELETE FROM procrastinate_jobs;")
        cursor.execute("DELETE FROM procrastinate_workers")


def start_worker(name, **environment):
    env = {**os.environ, "SWEEP_SCHEDULE": EVERY_SECOND, "PYTHONPATH": str(ROOT), **environment}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, connection.settings_dict["NAME"], name],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(worker):
    worker.send_signal(signal.SIGINT)  # procrastinate finishes the job in hand, then exits
    output, _ = worker.communicate(timeout=30)
    return output


def sweep_jobs():
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT task_name, (args ->> 'timestamp')::bigint, status::text, attempts
            FROM procrastinate_jobs WHERE task_name LIKE 'sweep.%%'
            """
        )
        return cursor.fetchall()


def wait_until(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def lapsed_hold(tenant):
    package = PackageFactory(tenant=tenant)
    booking = start_checkout(
        tenant=tenant, package_id=package.pk, date=future(), customer_name="A", customer_email="a@example.com"
    )
    Booking.objects.filter(pk=booking.pk).update(hold_expires_at=Now() - timedelta(seconds=1))
    return booking


@pytest.mark.django_db(transaction=True)
def test_two_workers_expire_a_lapsed_hold_and_run_each_period_once():
    booking = lapsed_hold(TenantFactory())
    workers = [start_worker("worker-a"), start_worker("worker-b")]
    try:
        # no manual command: the sweep the workers schedule finds the lapsed hold
        assert wait_until(lambda: Booking.objects.get(pk=booking.pk).status == "expired")
        periods_seen = lambda: {stamp for task, stamp, *_ in sweep_jobs() if task == "sweep.expire_holds"}  # noqa: E731
        assert wait_until(lambda: len(periods_seen()) >= 3)
        assert readiness()["worker"]["ok"] is True  # both beat
    finally:
        outputs = [stop(worker) for worker in workers]
    jobs = sweep_jobs()
    per_period = {}
    for task, stamp, status, attempts in jobs:
        per_period.setdefault((task, stamp), []).append((status, attempts))
    # each sweep, each second: one job, whichever worker deferred it first; run once, successfully
    # every minute sweep ran (the hourly one too when the workers start within its catch-up window)
    every_second = {f"sweep.{command}" for command, schedule in SWEEPS.items() if schedule != HOURLY}
    assert every_second <= {task for task, _stamp in per_period}, outputs
    duplicated = {key: runs for key, runs in per_period.items() if len(runs) != 1}
    assert not duplicated, duplicated
    finished = [runs[0] for runs in per_period.values() if runs[0][0] not in ("todo", "doing")]
    assert finished and all(run == ("succeeded", 1) for run in finished), (finished, outputs)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM procrastinate_workers")
        assert cursor.fetchone() == (0,)  # both unregistered on a graceful stop


def job_statuses(task):
    with connection.cursor() as cursor:
        cursor.execute("SELECT status::text FROM procrastinate_jobs WHERE task_name = %s ORDER BY id", [task])
        return [status for (status,) in cursor.fetchall()]


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_sweep_does_not_stop_that_sweep_for_good():
    """The dead worker's job stays ``doing`` and keeps the sweep's lock; once the dead one's heartbeat is stale
    a live worker (jobs.retry_stalled) puts it back in the queue or, when the sweep's next run already waits
    (its queueing lock allows one; every period here), ends it ``aborted``; either way the sweep runs again."""
    booking = lapsed_hold(TenantFactory())
    stale = {"WORKER_STALLED_AFTER_S": "2"}
    with row_locked(Booking.objects.filter(pk=booking.pk)):  # worker A is surely mid-sweep...
        dying = start_worker("worker-a", LOCK_TIMEOUT_MS="30000", **stale)
        assert wait_until(lambda: "doing" in job_statuses("sweep.expire_holds"))
        dying.send_signal(signal.SIGKILL)  # ...and dies there
        dying.wait()
    healthy = start_worker("worker-b", **stale)
    try:
        swept = wait_until(lambda: Booking.objects.get(pk=booking.pk).status == "expired", timeout=30)
        statuses = job_statuses("sweep.expire_holds")
    finally:
        output = stop(healthy)
    assert swept, (statuses, output[-2000:])
    assert "(sweep.expire_holds) of a dead worker aborted: its next run already waits" in output


@pytest.mark.django_db(transaction=True)
def test_the_worker_sends_the_e_mail_owed_by_a_hold_once():
    booking = lapsed_hold(TenantFactory())  # owes its customer the pay link
    notification = Notification.objects.get(subject=f"booking:{booking.pk}")
    worker = start_worker("worker-mail")  # EMAIL_BACKEND: the console, i.e. its output
    try:
        assert wait_until(lambda: Notification.objects.get(pk=notification.pk).status == "sent")
    finally:
        output = stop(worker)
    assert output.count(f"Subject: Your booking for {booking.package.name}") == 1, output
    assert "To: a@example.com" in output


@pytest.mark.django_db(transaction=True)
def test_a_sweep_waiting_on_a_busy_row_does_not_hold_back_the_e_mails():
    """The worker runs jobs side by side (WORKER_CONCURRENCY): the hold sweep waits on a row another
    transaction holds, and the pay-link e-mail owed meanwhile still goes out."""
    tenant = TenantFactory()
    waiting = lapsed_hold(tenant)
    earlier = Notification.objects.get(subject=f"booking:{waiting.pk}")
    assert Notification.objects.claim(earlier.pk)  # sent before: this test watches the next booking's mail only
    Notification.objects.mark_sent(earlier.pk)
    worker, output = None, ""
    try:
        with row_locked(Booking.objects.filter(pk=waiting.pk)):
            worker = start_worker("worker-busy", LOCK_TIMEOUT_MS="20000")
            assert wait_until(lambda: "doing" in job_statuses("sweep.expire_holds"))
            booking = lapsed_hold(tenant)  # owes its customer the pay link now
            notification = Notification.objects.get(subject=f"booking:{booking.pk}")
            sent = wait_until(lambda: Notification.objects.get(pk=notification.pk).status == "sent", timeout=15)
            still_waiting = "doing" in job_statuses("sweep.expire_holds")
    finally:
        if worker is not None:
            output = stop(worker)
    assert sent and still_waiting, (sent, still_waiting, output[-2000:])
    assert output.count("To: a@example.com") == 1, output


@pytest.mark.django_db(transaction=True)
def test_a_mail_server_that_refuses_gets_the_job_retried_later():
    booking = lapsed_hold(TenantFactory())
    notification = Notification.objects.get(subject=f"booking:{booking.pk}")

    def rescheduled():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT status::text, attempts, scheduled_at > now() FROM procrastinate_jobs"
                " WHERE task_name = 'notifications.send' AND (args ->> 'notification_id')::bigint = %s",
                [notification.pk],
            )
            return cursor.fetchone()

    worker = start_worker("worker-refused", EMAIL_BACKEND="tests.bookings.providers.RefusingEmailBackend")
    try:
        assert wait_until(lambda: rescheduled() == ("todo", 1, True))  # retried after its backoff
    finally:
        output = stop(worker)
    notification.refresh_from_db()
    assert (notification.status, notification.attempts) == ("pending", 1), output
    assert notification.last_error == "ConnectionRefusedError: no SMTP"


@pytest.mark.django_db(transaction=True)
def test_a_sweep_whose_rows_are_busy_is_left_for_the_next_period():
    booking = lapsed_hold(TenantFactory())
    with row_locked(Booking.objects.filter(pk=booking.pk)):
        assert run_sweep("expire_holds") == EXIT_LOCKED  # not an exception: the job succeeds
    assert Booking.objects.get(pk=booking.pk).status == "held"
    assert run_sweep("expire_holds") == EXIT_OK
    assert Booking.objects.get(pk=booking.pk).status == "expired"


def test_not_ready_without_a_fresh_worker_heartbeat(db, settings):
    assert readiness()["worker"] == {"ok": False, "heartbeat_age_s": None, "max_age_s": 60}
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - interval '5 min')")
    stale = readiness()["worker"]
    assert stale["ok"] is False and stale["heartbeat_age_s"] >= 300
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO procrastinate_workers (last_heartbeat) VALUES (clock_timestamp())")
    assert readiness()["worker"]["ok"] is True


def test_only_a_superuser_is_offered_the_queues_actions(db, client, admin_client, django_user_model):
    """The queue is every tenant's: a staff user allowed to read it may not cancel or retry a job."""
    send_notification.defer(notification_id=0)
    job = ProcrastinateJob.objects.get()
    reader = django_user_model.objects.create_user("reader", password="pw", is_staff=True)
    reader.user_permissions.add(Permission.objects.get(codename="view_procrastinatejob"))
    client.force_login(reader)
    listing = "/admin/procrastinate/procrastinatejob/"
    page = client.get(listing)
    assert page.status_code == 200 and page.context["action_form"] is None
    client.post(listing, {"action": "cancel", "_selected_action": [job.pk]})
    assert ProcrastinateJob.objects.get(pk=job.pk).status == "todo"
    admin_client.post(listing, {"action": "cancel", "_selected_action": [job.pk]})
    assert ProcrastinateJob.objects.get(pk=job.pk).status == "cancelled"


def test_retrying_two_failed_runs_of_one_sweep_queues_one_and_names_the_other(db, admin_client):
    """Regression: a sweep's queueing lock allows one waiting run; procrastinate's Retry queued the first of two
    failed runs, then answered 500 on the second (the unique index), with the first already retried."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, lock, queueing_lock, status) VALUES "
            "('sweeps', 'sweep.expire_holds', 'sweep.expire_holds', 'sweep.expire_holds', 'failed'), "
            "('sweeps', 'sweep.expire_holds', 'sweep.expire_holds', 'sweep.expire_holds', 'failed') RETURNING id"
        )
        first, second = sorted(row[0] for row in cursor.fetchall())
    listing = "/admin/procrastinate/procrastinatejob/"
    answer = admin_client.post(listing, {"action": "retry", "_selected_action": [first, second]}, follow=True)
    assert answer.status_code == 200
    statuses = dict(ProcrastinateJob.objects.filter(pk__in=(first, second)).values_list("pk", "status"))
    assert statuses == {first: "todo", second: "failed"}
    told = [str(message) for message in answer.context["messages"]]
    assert "Retried 1 job." in told
    assert f"Left as they are (a run of the same task already waits, or the job changed meanwhile): #{second}." in told


@pytest.mark.django_db(transaction=True)
def test_a_sweep_slower_than_its_period_keeps_one_run_waiting_not_one_per_period():
    """Regression: each period of a sweep still running queued one more run behind its lock (seven after
    8 s of an every-second schedule): a refund sweep slower than a minute grew the queue by one a minute.
    The queueing lock skips a period that finds a run already waiting."""
    booking = lapsed_hold(TenantFactory())
    worker = None
    try:
        with row_locked(Booking.objects.filter(pk=booking.pk)):
            worker = start_worker("worker-slow", LOCK_TIMEOUT_MS="30000")
            assert wait_until(lambda: "doing" in job_statuses("sweep.expire_holds"))
            time.sleep(5)
            statuses = job_statuses("sweep.expire_holds")
    finally:
        if worker is not None:
            stop(worker)
    assert statuses.count("doing") == 1 and statuses.count("todo") <= 1, statuses


@pytest.mark.django_db(transaction=True)
def test_every_minute_sweep_waiting_on_a_busy_row_at_once_leaves_the_e_mails_their_threads(client, settings):
    """Regression: four workers' threads for four minute sweeps: all four waiting on busy rows took every
    thread, and a customer's pay-link e-mail waited behind them (WORKER_CONCURRENCY was 4). The proposals' and
    the sessions' expiries now skip a busy row without waiting (core.db.update_skipping_locked): they finish,
    and the holds' and the refunds' sweeps still wait on theirs."""
    from contextlib import ExitStack

    from bookings.models import Checkout
    from promos.models import RedemptionSession
    from proposals.models import Proposal
    from tests.bookings.test_payments import paid_then_cancelled
    from tests.promos.factories import RedemptionSessionFactory
    from tests.proposals.factories import make_proposal

    tenant = TenantFactory()
    hold = lapsed_hold(tenant)
    proposal = make_proposal(tenant, expires_in=timedelta(seconds=-1))
    session = RedemptionSessionFactory(tenant=tenant, expires_in=timedelta(seconds=-1))
    refunded = paid_then_cancelled(client, PackageFactory(tenant=tenant), settings, "RefundDownProvider")
    Checkout.objects.filter(booking=refunded).update(next_retry_at=Now())
    busy_rows = [
        Booking.objects.filter(pk=hold.pk),
        Proposal.objects.filter(pk=proposal.pk),
        RedemptionSession.objects.filter(pk=session.pk),
        Checkout.objects.filter(booking=refunded),
    ]
    waiting = ["sweep.expire_holds", "sweep.retry_refunds"]
    skipping = ["sweep.sweep_proposals", "sweep.expire_redemption_sessions"]
    worker = None
    with ExitStack() as busy:
        for rows in busy_rows:
            busy.enter_context(row_locked(rows))
        try:
            worker = start_worker("worker-all-busy", LOCK_TIMEOUT_MS="25000")
            assert wait_until(
                lambda: (
                    all(job_statuses(sweep)[:1] == ["doing"] for sweep in waiting)
                    and all(job_statuses(sweep)[:1] == ["succeeded"] for sweep in skipping)
                )
            ), {sweep: job_statuses(sweep) for sweep in waiting + skipping}
            fresh = lapsed_hold(tenant)  # its pay-link e-mail, owed now
            mail = Notification.objects.get(kind="booking_held", subject=f"booking:{fresh.pk}")
            sent = wait_until(lambda: Notification.objects.get(pk=mail.pk).status == "sent", timeout=12)
            doing = {sweep: job_statuses(sweep) for sweep in waiting}
        finally:
            busy.close()
            if worker is not None:
                stop(worker)
    assert sent, doing


@pytest.mark.django_db(transaction=True)
def test_a_dead_workers_jobs_are_queued_again_or_aborted_where_their_next_run_already_waits():
    """jobs.retry_stalled, on the rows a dead worker left (``doing``, no live worker): an e-mail's job is queued
    again; a sweep's run is queued again when no later run waits, aborted when one does (the queueing lock
    allows one waiting run: queueing this one again would be refused)."""
    import asyncio
    import threading
    from types import SimpleNamespace

    from procrastinate.contrib.django import app

    from core.tasks import retry_stalled_jobs, sweeps

    booking = lapsed_hold(TenantFactory())  # owes an e-mail: its job
    sweeps["expire_holds"].defer(timestamp=1)
    sweeps["sweep_proposals"].defer(timestamp=1)
    with connection.cursor() as cursor:  # what a worker killed mid-job leaves: doing, its worker gone
        cursor.execute("UPDATE procrastinate_jobs SET status = 'doing'")
    sweeps["expire_holds"].defer(timestamp=2)  # the next period's run of one sweep, waiting
    # its own thread and event loop, as in the worker (a loop may already run in this test's thread)
    rescue_once = retry_stalled_jobs.func(SimpleNamespace(app=app), timestamp=3)
    rescue = threading.Thread(target=asyncio.run, args=(rescue_once,))
    rescue.start()
    rescue.join(30)
    assert job_statuses("notifications.send") == ["todo"], booking
    assert job_statuses("sweep.sweep_proposals") == ["todo"]
    assert job_statuses("sweep.expire_holds") == ["aborted", "todo"]


@pytest.mark.django_db  # the queue is emptied before every test here
def test_a_notifications_job_is_retried_until_its_row_is_sent_or_given_up_on():
    """The row counts the mail server's refusals (``MailRefused``, final on the last); the job's own runs do
    not decide, so a last run that met the row busy or the database away (nothing attempted) is retried, not
    left failed with the row pending. Anything else, a bug, fails the job after the usual retries."""
    strategy = send_notification.retry_strategy
    job = send_notification.configure().job

    def waits(exception, runs):
        decision = strategy.get_retry_decision(exception=exception, job=job.evolve(attempts=runs))
        return decision and round((decision.retry_at - datetime.now(UTC)).total_seconds())

    assert waits(notifications.MailRefused("last refusal", final=True), 1) is None
    last_step = 4**NOTIFICATION_RETRIES  # 1024 s
    runs_and_waits = [(0, 4), (1, 16), (NOTIFICATION_RETRIES - 1, last_step), (NOTIFICATION_RETRIES, last_step)]
    nothing_attempted_or_counted = (
        LockContended(),
        DatabaseUnavailable(),  # the database away at a guarded step (database_refusals)
        OperationalError("connection refused"),
        notifications.MailRefused("no SMTP", final=False),
    )
    for runs, wait in [*runs_and_waits, (15, last_step)]:
        for error in nothing_attempted_or_counted:
            assert waits(error, runs) == wait, (error, runs)
    bug = TypeError("a bug before the claim")
    assert waits(bug, 0) == 4 and waits(bug, NOTIFICATION_RETRIES - 1) == last_step
    assert waits(bug, NOTIFICATION_RETRIES) is None  # failed, for an operator to see


def test_retry_job_leaves_a_job_its_live_worker_is_running_and_retries_one_whose_worker_is_gone(db, admin_client):
    """Regression: *Retry Job* put a ``doing`` job back in the queue whoever was running it: a live worker's
    sweep then ran twice at once (a sweep never overlaps its own run), or finished and marked the retry
    succeeded. Only a job whose worker stopped beating (as ``jobs.retry_stalled`` judges) is retried now."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO procrastinate_workers (last_heartbeat) "
            "VALUES (now()), (now() - interval '1 hour') RETURNING id"
        )
        alive, dead = (row[0] for row in cursor.fetchall())
        cursor.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, lock, status, worker_id) VALUES "
            "('sweeps', 'sweep.retry_refunds', 'sweep.retry_refunds', 'doing', %s), "
            "('sweeps', 'sweep.expire_holds', 'sweep.expire_holds', 'doing', %s) RETURNING id",
            [alive, dead],
        )
        running, stalled = (row[0] for row in cursor.fetchall())
    listing = "/admin/procrastinate/procrastinatejob/"
    answer = admin_client.post(listing, {"action": "retry", "_selected_action": [running, stalled]}, follow=True)
    assert answer.status_code == 200
    statuses = dict(ProcrastinateJob.objects.filter(pk__in=(running, stalled)).values_list("pk", "status"))
    assert statuses == {running: "doing", stalled: "todo"}
    told = [str(message) for message in answer.context["messages"]]
    assert "Retried 1 job." in told
    assert f"Still running on a live worker, not retried: #{running}." in told
