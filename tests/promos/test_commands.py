import time
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
def test_expire_redemption_sessions_skips_a_locked_row_and_expires_the_others():
    """A due row another transaction holds (a consume, cancel or approve in flight) is skipped, never waited
    for: the others expire now, that one in the next run. Regression: the one UPDATE waited for it, and past
    lock_timeout cancelled the whole run (every run, while the row stayed held); before that, a traceback."""
    tenant = TenantFactory()
    held, other = (RedemptionSessionFactory(tenant=tenant, expires_in=timedelta(seconds=-1)) for _ in range(2))
    with row_locked(RedemptionSession.objects.filter(pk=held.pk)), lock_timeout(200):
        started = time.monotonic()
        assert run("expire_redemption_sessions") == "Expired 1 redemption session(s).\n"
        assert time.monotonic() - started < 0.2  # never waited for the held row
    assert RedemptionSession.objects.get(pk=held.pk).status == "pending"  # still reads as expired (lazily)
    assert RedemptionSession.objects.get(pk=other.pk).status == "expired"
    assert run("expire_redemption_sessions") == "Expired 1 redemption session(s).\n"  # the next run's
