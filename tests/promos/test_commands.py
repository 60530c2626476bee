from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from core.models import Tenant
from promos.models import PromoCode, RedemptionSession
from tests.factories import TenantFactory
from tests.promos.factories import RedemptionSessionFactory
from tests.races import lock_timeout, row_locked

pytestmark = pytest.mark.django_db


def run(*args):
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_expire_redemption_sessions(tenant, other_tenant):
    due = RedemptionSessionFactory(tenant=tenant, expires_in=timedelta(seconds=-1))
    due_approved = RedemptionSessionFactory(tenant=tenant, status="approved", expires_in=timedelta(seconds=-1))
    theirs = RedemptionSessionFactory(tenant=other_tenant, expires_in=timedelta(seconds=-1))
    live = RedemptionSessionFactory(tenant=tenant)
    assert run("expire_redemption_sessions", "--tenant", "acme") == "Expired 2 redemption session(s).\n"
    assert run("expire_redemption_sessions") == "Expired 1 redemption session(s).\n"
    assert run("expire_redemption_sessions") == "Expired 0 redemption session(s).\n"
    statuses = dict(RedemptionSession.objects.values_list("pk", "status"))
    assert statuses == {due.pk: "expired", due_approved.pk: "expired", theirs.pk: "expired", live.pk: "pending"}


def test_expire_redemption_sessions_unknown_tenant():
    with pytest.raises(CommandError) as bad:
        run("expire_redemption_sessions", "--tenant", "nope")
    assert bad.value.returncode == 2


def test_seed_demo_adds_codes_and_a_session_idempotently():
    out = run("seed_demo")
    assert "API token:" in out
    run("seed_demo")
    demo = Tenant.objects.get(slug="demo")
    codes = dict(PromoCode.objects.for_tenant(demo).values_list("code", "bonus_type"))
    assert codes == {"WELCOME10": "fixed", "SPRING15": "percentage"}
    assert RedemptionSession.objects.for_tenant(demo).count() == 1


@pytest.mark.django_db(transaction=True)
def test_expire_redemption_sessions_reports_a_locked_row():
    """Regression: a due row locked past lock_timeout ended the command with an OperationalError traceback.

    Another connection holds the row lock a consume/cancel/approve in flight holds; the sweep
    (with a short lock_timeout) says resource_locked on stderr and exits 3, nothing changed.
    """
    due = RedemptionSessionFactory(tenant=TenantFactory(), expires_in=timedelta(seconds=-1))
    out, err = StringIO(), StringIO()
    with row_locked(RedemptionSession.objects.filter(pk=due.pk)), lock_timeout(200):
        with pytest.raises(SystemExit) as exit:
            call_command("expire_redemption_sessions", stdout=out, stderr=err)
    assert exit.value.code == 3  # core.management.base.EXIT_LOCKED: run again shortly
    assert err.getvalue().startswith("resource_locked: ") and "Traceback" not in err.getvalue()
    assert out.getvalue() == ""
    assert RedemptionSession.objects.get(pk=due.pk).status == "pending"
    assert run("expire_redemption_sessions") == "Expired 1 redemption session(s).\n"
