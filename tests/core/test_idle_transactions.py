"""A transaction left idle (a stuck worker) is ended by the database, releasing its locks."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import time, django
    django.setup()
    from django.db import connection, transaction, DatabaseError
    from core.db import advisory_xact_lock
    from tests.core.scratch_lock import ScratchLock
    try:
        with transaction.atomic():
            advisory_xact_lock(ScratchLock.TEST, "idle")
            time.sleep(1.0)  # a worker stuck between two statements, holding the lock
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        print("STILL-OPEN")
    except DatabaseError as exc:
        print("ENDED", type(exc.__cause__).__name__)
    """
)


def test_every_connection_carries_the_idle_in_transaction_timeout(db):
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('idle_in_transaction_session_timeout')::interval")
        (effective,) = cursor.fetchone()
    assert effective.total_seconds() * 1000 == settings.IDLE_IN_TRANSACTION_TIMEOUT_MS


@pytest.mark.django_db(transaction=True)
def test_a_transaction_idle_past_the_timeout_is_ended_and_its_locks_freed():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "IDLE_IN_TRANSACTION_TIMEOUT_MS": "300",
    }
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    # PostgreSQL ended the session (SQLSTATE 25P03), so its locks went with it.
    assert "ENDED" in done.stdout, done.stdout + done.stderr
