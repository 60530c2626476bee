"""Faults: a process killed while holding a guard's locks; the database restarted under load."""

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection, transaction

from bookings.models import Booking, Package
from core.db import set_local_lock_timeout
from core.exceptions import LockContended
from core.guards import database_clock, database_refusals
from core.invariants import assert_invariants
from promos.models import PromoCode, PromoUsage
from tests.factories import TenantFactory
from tests.proof.processes import (
    TemporaryPostgres,
    database_url,
    gunicorn,
    manage,
    start_django_child,
    wait_for_line,
)

# Each child opens a transaction, runs a real guarded operation inside it (so the
# guard's locks are taken and its rows written), announces READY and hangs before
# COMMIT until it is killed.
CHILD = """
import time
from decimal import Decimal
from datetime import date
from django.db import transaction
{imports}
with transaction.atomic():
    {operation}
    print("READY", flush=True)
    time.sleep(120)
"""

GUARDS = {
    "booking hold (advisory lock)": (
        "from bookings.models import Booking, Package",
        "Booking.objects.hold(Package.objects.get(pk={package}), date.fromisoformat('{date}'), "
        "customer_name='Killed', customer_email='killed@example.com')",
    ),
    "promo redeem (row lock)": (
        "from core.models import Tenant\nfrom promos.models import PromoCode",
        "PromoCode.objects.redeem('KILL1', tenant=Tenant.objects.get(pk={tenant}), customer='killed', "
        "amount=Decimal('10.00'))",
    ),
}


def _attempt(guard, tenant, package, day):
    """The same guarded operation from this (the surviving) process, committed."""
    if guard.startswith("booking"):
        with transaction.atomic():
            return Booking.objects.hold(package, day, customer_name="Next", customer_email="next@example.com")
    return PromoCode.objects.redeem("KILL1", tenant=tenant, customer="next", amount=Decimal("10.00"))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("guard", list(GUARDS))
def test_sigkill_mid_transaction_leaves_nothing_and_frees_the_locks(guard):
    tenant = TenantFactory(slug="faults")
    package = Package.objects.create(tenant=tenant, name="Hall", price=Decimal("10.00"), daily_capacity=1)
    PromoCode.objects.create_code(
        tenant=tenant, code="KILL1", bonus_type="fixed", bonus_value=Decimal("1.00"), total_usage_limit=1
    )
    day = database_clock().date() + timedelta(days=10)
    imports, operation = GUARDS[guard]
    code = CHILD.format(imports=imports, operation=operation.format(package=package.pk, date=day, tenant=tenant.pk))
    child = start_django_child(code, database_url(connection.settings_dict))
    try:
        wait_for_line(child, "READY")
        # While the child holds the guard, nothing it wrote is visible and the guard refuses us.
        assert not Booking.objects.filter(customer_name="Killed").exists()
        assert not PromoUsage.objects.filter(customer="killed").exists()
        with pytest.raises(LockContended):
            with database_refusals(), transaction.atomic():
                set_local_lock_timeout(200)
                _attempt(guard, tenant, package, day)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    # PostgreSQL notices the dead client, rolls its transaction back and frees its locks.
    deadline = time.monotonic() + 10
    while True:
        try:
            won = _attempt(guard, tenant, package, day)
            break
        except LockContended:
            assert time.monotonic() < deadline, "the killed process's locks were never released"
            time.sleep(0.05)
    assert won is not None
    assert not Booking.objects.filter(customer_name="Killed").exists()
    assert not PromoUsage.objects.filter(customer="killed").exists()
    assert_invariants()


def _call(url, token, body=None):
    """GET (or POST ``body`` as JSON); return (status or "connection", raw body)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if body else "GET")
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
        with gunicorn(postgres.url, tmp_path / "gunicorn.log") as base:
            read_url, redeem_url = f"{base}/api/t/demo/", f"{base}/api/t/demo/promo-codes/redeem"
            assert _call(read_url, token)[0] == 200
            reads, writes, stop = [], [], threading.Event()

            def read_load():
                while not stop.is_set():
                    reads.append(_call(read_url, token))

            def write_load(worker):
                n = 0
                while not stop.is_set():
                    n += 1
                    body = {"code": "SPRING15", "customer": f"load-{worker}-{n}", "amount": "40.00"}
                    writes.append(_call(redeem_url, token, body))

            threads = [threading.Thread(target=read_load) for _ in range(2)]
            threads += [threading.Thread(target=write_load, args=(i,)) for i in range(2)]
            for thread in threads:
                thread.start()
            time.sleep(0.5)
            postgres.restart()
            time.sleep(0.5)
            stop.set()
            for thread in threads:
                thread.join(30)

            read_statuses = [status for status, _ in reads]
            write_statuses = [status for status, _ in writes]
            assert set(read_statuses) <= {200, 503}, [a for a in reads if a[0] not in (200, 503)][:3]
            # A redeem either commits (201), is refused by the code's limits (409), or meets the outage (503).
            assert set(write_statuses) <= {201, 409, 503}, set(write_statuses)
            assert 201 in write_statuses, "no redeem committed around the restart"
            assert 503 in read_statuses + write_statuses, "the restart was never observed; the test proved nothing"
            for status, body in reads + writes:
                if status == 503:
                    assert json.loads(body)["error"]["code"] in {"database_unavailable", "database_timeout"}
            # The app answers again without a restart of its own.
            assert [_call(read_url, token)[0] for _ in range(6)] == [200] * 6
        # Nothing half-written: every counter still matches its rows.
        assert "All" in manage("check_invariants", database=postgres.url)
    finally:
        postgres.stop()
