"""Faults: a process killed while holding a guard's locks; the database restarted under load."""

import json
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest
from django.db import connection, transaction

from core.db import LockNamespace, try_advisory_xact_lock
from core.models import Tenant
from tests.proof.processes import (
    TemporaryPostgres,
    database_url,
    gunicorn,
    manage,
    start_django_child,
    wait_for_line,
)

HOLD_LOCKS_THEN_HANG = """
import time
from django.db import transaction
from core.db import LockNamespace, advisory_xact_lock
from core.models import Tenant
with transaction.atomic():
    advisory_xact_lock(LockNamespace.TEST, "fault")
    Tenant.objects.create(slug="half-made", name="never committed")
    print("READY", flush=True)
    time.sleep(120)
"""


def _lock_is_free():
    with transaction.atomic():
        return try_advisory_xact_lock(LockNamespace.TEST, "fault")


@pytest.mark.django_db(transaction=True)
def test_sigkill_mid_transaction_leaves_nothing_and_frees_the_lock():
    child = start_django_child(HOLD_LOCKS_THEN_HANG, database_url(connection.settings_dict))
    try:
        wait_for_line(child, "READY")
        assert not _lock_is_free()
        assert not Tenant.objects.filter(slug="half-made").exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    deadline = time.monotonic() + 10
    while not _lock_is_free():
        assert time.monotonic() < deadline, "the dead process's lock was never released"
        time.sleep(0.05)
    assert not Tenant.objects.filter(slug="half-made").exists()


def _get(url, token):
    request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        return "connection", str(error).encode()


def test_database_restart_under_load_answers_503_then_recovers(tmp_path):
    postgres = TemporaryPostgres(tmp_path)
    try:
        manage("migrate", "--noinput", database=postgres.url)
        seeded = manage("seed_demo", database=postgres.url)
        token = next(line.split(": ", 1)[1] for line in seeded.splitlines() if line.startswith("API token: "))
        with gunicorn(postgres.url) as base:
            url = f"{base}/api/t/demo/"
            assert _get(url, token)[0] == 200
            answers, stop = [], threading.Event()

            def load():
                while not stop.is_set():
                    answers.append(_get(url, token))

            workers = [threading.Thread(target=load) for _ in range(4)]
            for worker in workers:
                worker.start()
            time.sleep(0.5)
            postgres.restart()
            time.sleep(0.5)
            stop.set()
            for worker in workers:
                worker.join(30)

            statuses = [status for status, _ in answers]
            assert 500 not in statuses
            assert set(statuses) <= {200, 503}, set(statuses)
            assert 503 in statuses, "the restart was never observed; the test proved nothing"
            for status, body in answers:
                if status == 503:
                    assert json.loads(body)["error"]["code"] in {"database_unavailable", "database_timeout"}
            # The app answers again without a restart of its own.
            recovered = [_get(url, token)[0] for _ in range(6)]
            assert recovered == [200] * 6
    finally:
        postgres.stop()
