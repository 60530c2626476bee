"""core.guards: the one translator of database refusals, the clock, and commands over guards."""

import io
import threading

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction

from core.db import LockNamespace, advisory_xact_lock
from core.exceptions import Conflict, LockContended, TransitionRefused
from core.guards import ClockNow, constraint_errors, database_clock, database_refusals
from core.management.base import EXIT_LOCKED, EXIT_REFUSED, GuardedCommand
from tests.core.scratch_lock import ScratchLock
from tests.races import advisory_locked, run_concurrently


class WidgetRefused(Conflict):
    code = "widget_refused"


@pytest.fixture
def probe_table(db):
    """A scratch table with a CHECK and a transition-style trigger, inside the test's transaction."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            CREATE TEMP TABLE guard_probe (id int PRIMARY KEY, state text NOT NULL,
                                           n int CONSTRAINT guard_probe_n_positive CHECK (n > 0),
                                           m int CONSTRAINT guard_probe_m_small CHECK (m < 10));
            CREATE FUNCTION pg_temp.guard_probe_machine() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF OLD.state = 'done' AND NEW.state <> 'done' THEN
                    RAISE EXCEPTION USING ERRCODE = 'check_violation', CONSTRAINT = 'guard_probe_transition',
                        MESSAGE = 'refused', DETAIL = OLD.state || '->' || NEW.state;
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER guard_probe_machine BEFORE UPDATE ON guard_probe
                FOR EACH ROW EXECUTE FUNCTION pg_temp.guard_probe_machine();
            INSERT INTO guard_probe VALUES (1, 'done', 1, 1);
            """
        )
    constraint_errors({"guard_probe_n_positive": WidgetRefused})


def _write(sql):
    with database_refusals(), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql)


def test_a_trigger_refusal_becomes_invalid_transition_naming_both_states(probe_table):
    with pytest.raises(TransitionRefused) as refused:
        _write("UPDATE guard_probe SET state = 'open' WHERE id = 1")
    assert refused.value.code == "invalid_transition" and refused.value.status_code == 409
    assert refused.value.params == {"old": "done", "new": "open"}


def test_a_registered_constraint_becomes_its_domain_error(probe_table):
    with pytest.raises(WidgetRefused):
        _write("UPDATE guard_probe SET n = 0 WHERE id = 1")


def test_an_unregistered_constraint_stays_an_integrity_error(probe_table):
    with pytest.raises(IntegrityError):
        _write("UPDATE guard_probe SET m = 99 WHERE id = 1")


@pytest.mark.django_db(transaction=True)
def test_a_lock_held_elsewhere_becomes_resource_locked():
    with advisory_locked(ScratchLock.TEST, "guard"), pytest.raises(LockContended):
        with database_refusals(), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '50ms'")
            advisory_xact_lock(ScratchLock.TEST, "guard")


@pytest.mark.django_db(transaction=True)
def test_the_clock_moves_inside_a_transaction_where_now_does_not():
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        (started,) = cursor.fetchone()
        cursor.execute("SELECT pg_sleep(0.05)")
        assert (database_clock() - started).total_seconds() >= 0.05
        cursor.execute("SELECT now()")
        assert cursor.fetchone()[0] == started
    assert ClockNow().template == "clock_timestamp()"


class _Refusing(GuardedCommand):
    error = None

    def handle(self, *args, **options):
        raise self.error


@pytest.mark.parametrize("error,exit_code", [(WidgetRefused("nope"), EXIT_REFUSED), (LockContended(), EXIT_LOCKED)])
def test_a_command_answers_a_refusal_with_a_message_and_an_exit_code(error, exit_code):
    command, stderr = _Refusing(), io.StringIO()
    command.error = error
    with pytest.raises(SystemExit) as exited:
        call_command(command, stderr=stderr)
    assert exited.value.code == exit_code
    assert stderr.getvalue().startswith(f"{error.code}: ")


@pytest.mark.django_db(transaction=True)
def test_a_deadlock_is_a_lock_conflict_to_retry_never_a_crash(caplog):
    """Two transactions taking two locks in opposite orders: PostgreSQL rolls one back (40P01). Every path
    keeps the one lock order, so this is a slip; still the loser gets resource_locked (409 and Retry-After
    over the API, exit 3 from a command), not a 500 or a traceback, and the log names it."""
    barrier = threading.Barrier(2)

    def attempt(i):
        first, second = ("x", "y") if i == 0 else ("y", "x")
        with database_refusals(), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL deadlock_timeout = '50ms'")
            advisory_xact_lock(LockNamespace.BOOKING_DATE, "deadlock-probe", first)
            barrier.wait(5)
            advisory_xact_lock(LockNamespace.BOOKING_DATE, "deadlock-probe", second)
        return "won"

    outcomes = run_concurrently(attempt, 2)
    assert sorted(outcome.code for outcome in outcomes) == ["ok", "resource_locked"], outcomes
    assert "deadlock: PostgreSQL rolled this transaction back" in caplog.text
