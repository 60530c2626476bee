"""race_demo and check_invariants, as an operator runs them."""

import io
import re
from importlib import import_module
from pathlib import Path

import pgtrigger
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from bookings.payments.stripe import StripeProvider
from core.models import Tenant
from core.race_demo import leftover_throwaway_databases, scenarios
from promos.models import PromoCode
from tests.factories import TenantFactory

ROW = re.compile(r"^(?P<name>[a-z ]+?)\s+(?P<attempts>\d+)\s+(?P<winners>\d+)\s+(?P<expected>\d+)\s+(?P<held>\S+)")


def run(*args):
    out = io.StringIO()
    call_command("race_demo", *args, stdout=out)
    rows = {m["name"]: m.groupdict() for m in map(ROW.match, out.getvalue().splitlines()) if m}
    return rows, out.getvalue()


def throwaway_databases():
    return set(leftover_throwaway_databases())


@pytest.mark.django_db(transaction=True)
def test_race_demo_shows_exact_winners_for_every_guarded_operation():
    before = throwaway_databases()  # a run killed mid-storm elsewhere may have left its own
    rows, output = run()
    assert set(rows) == {"date checkout hold", "proposal confirm", "promo redeem", "session consume", "profile undo"}
    for row in rows.values():
        assert row["winners"] == row["expected"], output
        assert row["held"] == "held", output
    assert_nothing_left_behind(before)


def assert_nothing_left_behind(before):
    """The storms ran in a database of their own, dropped after: this one was never written."""
    assert not Tenant.objects.exists()
    assert throwaway_databases() == before
    call_command("check_invariants", stdout=io.StringIO())


@pytest.mark.django_db(transaction=True)
def test_race_demo_naive_shows_what_breaks():
    before = throwaway_databases()
    rows, output = run("--naive")
    for name in ("promo redeem", "session consume", "proposal confirm"):
        assert int(rows[name]["winners"]) > int(rows[name]["expected"]), output
    assert rows["promo redeem"]["held"] == "BROKEN"
    assert_nothing_left_behind(before)  # the broken rows went with the throwaway database


@pytest.mark.django_db(transaction=True)
def test_race_demo_names_a_throwaway_database_another_run_left(settings):
    left = connection.settings_dict["NAME"] + "_race_killed00"
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{left}"')
    try:
        out, err = io.StringIO(), io.StringIO()
        call_command("race_demo", "--only", "promo", stdout=out, stderr=err)
        assert f"{left} is another run's throwaway database" in err.getvalue()
        assert f'DROP DATABASE "{left}" WITH (FORCE)' in err.getvalue()
        assert left in leftover_throwaway_databases()  # named, never dropped: it may be a run going on now
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{left}" WITH (FORCE)')


@pytest.mark.django_db(transaction=True)
def test_race_demo_pays_through_the_sandbox_on_a_server_that_pays_through_stripe(settings, monkeypatch):
    """Its winning holds call the provider: against Stripe each would open a real checkout session."""
    settings.PAYMENT_PROVIDER, settings.STRIPE_API_KEY = "stripe", "sk_live_not_for_storms"
    called = []
    monkeypatch.setattr(StripeProvider, "create_checkout", lambda provider, *args: called.append(args))
    before = throwaway_databases()
    rows, output = run("--only", "c")  # the checkout hold and the proposal confirm (and the consume)
    assert {"date checkout hold", "proposal confirm"} <= set(rows), output
    for row in rows.values():
        assert row["winners"] == row["expected"] != "0", output
    assert called == []
    assert_nothing_left_behind(before)


def test_every_race_scenario_has_a_control():
    """Each guarded operation's anomaly without its guard is shown by a test marked ``control("<scenario>")``."""
    shown = set()
    for path in Path(__file__).parents[1].glob("*/test_races.py"):
        module = import_module(f"tests.{path.parent.name}.test_races")
        for test in vars(module).values():
            marks = getattr(test, "pytestmark", [])
            shown.update(arg for mark in marks if mark.name == "control" for arg in mark.args)
    assert {scenario.name for scenario in scenarios()} <= shown


@pytest.mark.django_db
def test_check_invariants_names_the_drift_and_exits_1():
    tenant = TenantFactory(slug="audit")
    code = PromoCode.objects.create_code(tenant=tenant, code="DRIFT", bonus_type="fixed", bonus_value="5.00")
    out = io.StringIO()
    call_command("check_invariants", stdout=out)
    assert "All" in out.getvalue() and "FAIL" not in out.getvalue()

    with pgtrigger.ignore("promos.PromoCode:promo_times_used_transition"):  # the database refuses it: planted
        PromoCode.objects.filter(pk=code.pk).update(times_used=3)  # counter without usages: drift
    out = io.StringIO()
    with pytest.raises(CommandError) as drift:
        call_command("check_invariants", "--tenant", "audit", stdout=out)
    assert drift.value.returncode == 1
    assert "code 'DRIFT': times_used=3, live usages=0" in out.getvalue()


@pytest.mark.django_db
def test_check_invariants_unknown_tenant_is_bad_usage():
    with pytest.raises(CommandError) as bad:
        call_command("check_invariants", "--tenant", "nope", stdout=io.StringIO())
    assert bad.value.returncode == 2
