"""What the worker runs by itself: the sweeps, on a schedule, once per period however many workers run.

Why procrastinate (pinned in requirements.txt): a job queue whose jobs are rows in the
PostgreSQL Lockstep already has — no Redis or RabbitMQ — so a job deferred inside a
transaction (Django's connection) commits or rolls back with the state change that caused it.
Periodic jobs are deferred through a unique row per (task, period), so two workers never run
one period twice; a task ``lock`` keeps a slow sweep from overlapping its next run, and its
``queueing_lock`` keeps at most one run waiting behind it (a period that finds one waiting is
skipped: a sweep slower than its period never piles up a run per period).

Each sweep *is* its management command (one place per rule: the command is what cron ran
before and what an operator runs by hand); the worker calls it and logs what it printed.
A command's exit codes mean the same here: 3 (rows busy past lock_timeout) is left for the
next period, 1 (a refusal an operator must look at) fails the job, so it shows as failed in
the admin's procrastinate jobs and in the metrics.
"""

import functools
import logging
from io import StringIO

from django.conf import settings
from django.core.management import call_command
from django.db import OperationalError, close_old_connections
from procrastinate import RetryStrategy, builtin_tasks, exceptions
from procrastinate.contrib.django import app
from procrastinate.jobs import Status

from core import notifications
from core.exceptions import DatabaseUnavailable, LockContended
from core.management.base import EXIT_LOCKED, EXIT_OK

logger = logging.getLogger("lockstep.worker")

HOURLY = "0 * * * *"

# command -> schedule (crontab). Every sweep is safe to run at any time and any number of times.
SWEEPS = {
    "expire_holds": settings.SWEEP_SCHEDULE,
    "sweep_proposals": settings.SWEEP_SCHEDULE,
    "expire_redemption_sessions": settings.SWEEP_SCHEDULE,
    "retry_refunds": settings.SWEEP_SCHEDULE,  # each refund's own backoff is in its row
    "reconcile_checkouts": HOURLY,  # asks the provider: a lost event is found within the hour
    "prune_idempotency_keys": HOURLY,
}

# Finished jobs kept this long for operators (admin: Procrastinate jobs), then deleted.
KEEP_FINISHED_JOBS_HOURS = 72


class SweepRefused(Exception):
    """The sweep's command exited 1: a row the database would not let go; the job fails."""


def run_sweep(command):
    """Run one sweep's command as cron would; return its exit code (0, or 3: busy, next period)."""
    out, err = StringIO(), StringIO()
    try:
        call_command(command, stdout=out, stderr=err)
        exit_code = EXIT_OK
    except SystemExit as exit:
        exit_code = exit.code
    logger.info("sweep %s exit %s: %s", command, exit_code, out.getvalue().strip(), extra={"sweep": command})
    if exit_code not in (EXIT_OK, EXIT_LOCKED):
        raise SweepRefused(f"{command} exited {exit_code}: {err.getvalue().strip()}")
    if err.getvalue():
        logger.warning("sweep %s: %s", command, err.getvalue().strip(), extra={"sweep": command})
    return exit_code


def _schedule(command, schedule):
    def sweep(timestamp):
        # Worker threads live long: like a request, start and end with no connection past CONN_MAX_AGE.
        close_old_connections()
        try:
            return run_sweep(command)
        finally:
            close_old_connections()

    sweep.__name__ = sweep.__qualname__ = command
    task = app.task(
        name=f"sweep.{command}",
        queue="sweeps",
        lock=f"sweep.{command}",
        queueing_lock=f"sweep.{command}",
        pass_context=False,
    )(sweep)
    return app.periodic(cron=schedule, periodic_id=command)(task)


sweeps = {command: _schedule(command, schedule) for command, schedule in SWEEPS.items()}


@app.periodic(cron=HOURLY, periodic_id="remove_old_jobs")
@app.task(
    name="jobs.remove_old", queue="sweeps", lock="jobs.remove_old", queueing_lock="jobs.remove_old", pass_context=True
)
async def remove_old_jobs(context, timestamp):
    await builtin_tasks.remove_old_jobs(
        context, max_hours=KEEP_FINISHED_JOBS_HOURS, remove_failed=True, remove_aborted=True, remove_cancelled=True
    )


# No lock of its own: it must run while a dead worker's sweep still holds that sweep's lock.
@app.periodic(cron=settings.SWEEP_SCHEDULE, periodic_id="retry_stalled_jobs")
@app.task(name="jobs.retry_stalled", queue="sweeps", queueing_lock="jobs.retry_stalled", pass_context=True)
async def retry_stalled_jobs(context, timestamp):
    """Put back in the queue every job a dead worker was doing (procrastinate's recipe for stalled jobs).

    A job in ``doing`` keeps its lock, and procrastinate fetches no job whose lock a ``doing`` job
    holds: without this, a sweep whose worker died mid-run would never run again. Safe to re-run:
    every sweep is (any number of times), and a notification is claimed before it is sent (at most once).
    """
    manager = context.app.job_manager
    for job in await manager.get_stalled_jobs(seconds_since_heartbeat=settings.WORKER_STALLED_AFTER_S):
        try:
            await manager.retry_job(job)
        except exceptions.UniqueViolation:
            # A later run of the same sweep already waits (its queueing lock allows one): it runs once this
            # dead run lets go of the sweep's lock, so this one ends ``aborted`` instead of queued again.
            await _abort_stalled(manager, job)
            continue
        except Exception as error:  # noqa: BLE001 - another worker retried it first: nothing to do
            logger.info("stalled job %s (%s) not retried: %s", job.id, job.task_name, error)
            continue
        logger.warning("job %s (%s) of a dead worker put back in the queue", job.id, job.task_name)


async def _abort_stalled(manager, job):
    try:
        await manager.finish_job(job, status=Status.ABORTED, delete_job=False)
    except Exception as error:  # noqa: BLE001 - another worker settled it first: nothing to do
        logger.info("stalled job %s (%s) not aborted: %s", job.id, job.task_name, error)
        return
    logger.warning("job %s (%s) of a dead worker aborted: its next run already waits", job.id, job.task_name)


@functools.cache  # a task's job is the same every time: made once per process
def job_to_defer(task, args_sql):
    """SQL deferring one job of ``task`` (as ``task.defer()`` would) whose arguments are ``args_sql``, a jsonb
    expression of the enclosing statement, and its parameters: procrastinate's own ``procrastinate_defer_jobs_v1``
    with the job ``task.configure()`` makes. For a job that must be queued in the same statement as the row
    it names (``Notification.objects.owe``): one round trip, no second statement per write."""
    job = task.configure().job
    return (
        f"procrastinate_defer_jobs_v1(ARRAY[ROW(%s, %s, %s, %s, %s, {args_sql}, %s)::procrastinate_job_to_defer_v1])",
        (job.queue, job.task_name, job.priority, job.lock, job.queueing_lock, job.scheduled_at),
    )


class NotificationRetry(RetryStrategy):
    """A notification's job is retried until its row is sent or given up on, as the row counts the mail
    server's refusals (``MailRefused``, ``final`` after the last); a run that attempted nothing (its row busy
    at the claim, ``LockContended``, or the database unreachable) is retried however often that happens, as
    its notification is still owed. Counting the job's runs left a notification ``pending`` with no job for
    good when its last run met the row busy. Anything else (a bug) fails the job after ``max_attempts``
    retries, for an operator to see. The wait grows as procrastinate's exponential one, up to its last step."""

    def get_retry_decision(self, *, exception, job):
        if isinstance(exception, notifications.MailRefused) and exception.final:
            return None
        if isinstance(exception, notifications.MailRefused | LockContended | DatabaseUnavailable | OperationalError):
            job = job.evolve(attempts=min(job.attempts, self.max_attempts - 1))  # past the budget: its last wait
        return super().get_retry_decision(exception=exception, job=job)


@app.task(
    name="notifications.send",
    queue="notifications",
    retry=NotificationRetry(max_attempts=notifications.NOTIFICATION_RETRIES, exponential_wait=4),
)
def send_notification(notification_id):
    close_old_connections()
    try:
        return notifications.send(notification_id)
    finally:
        close_old_connections()
