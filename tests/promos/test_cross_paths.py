"""Every writer of one row at once: API, the admin change form (a real POST), admin actions, the sweep.

Each test fires the paths on separate connections (threads lined up on a barrier, or one
path held mid-transaction from a second connection while the other runs), then asserts
the outcome of every path and the invariants (the autouse fixture runs check_invariants
after each of these transactional tests).
"""

import random
import re
import threading
import time
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.core.management import call_command
from django.db import connections
from django.db.models import Value
from django.test import Client
from django.urls import reverse

from core.guards import ClockNow
from promos.admin import shown_state
from promos.models import PromoCode, PromoUsage, RedemptionSession
from tests.conftest import token_client
from tests.promos.factories import SECRET, PromoCodeFactory, RedemptionSessionFactory
from tests.promos.helpers import assert_invariant
from tests.races import attempted_while_held, run_concurrently
from tests.refusals import assert_error

pytestmark = pytest.mark.django_db(transaction=True)

BASE = "/api/t/acme"
LOCKED = "resource_locked"


def clock():
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser("root", "root@example.com", "pw")


def admin_browser(superuser):
    client = Client()
    client.force_login(superuser)
    return client


def form_version(client, promo):
    page = client.get(reverse("admin:promos_promocode_change", args=[promo.pk]))
    assert page.status_code == 200
    return page.context["adminform"].form["expected_version"].value()


def form_outcome(response):
    """'saved' on a redirect; else the refusal code the re-rendered form shows."""
    if response.status_code == 302:
        return "saved"
    assert response.status_code == 200, response.status_code
    errors = str(response.context["adminform"].form.errors)
    for code, text in [
        ("version_conflict", "changed by someone else"),
        ("promo_limit_below_usage", "cannot be lower"),
        (LOCKED, "being changed by another request"),
    ]:
        if text in errors:
            return code
    raise AssertionError(errors)


def message_codes(response):
    """Admin action messages as codes: each refusal's code (in parentheses), and 'ok' once if any row was done."""
    codes, done = [], False
    for message in get_messages(response.wsgi_request):
        found = re.search(r"\((\w+)\)$", str(message))
        if found:
            codes.append(found.group(1))
        else:
            done = True  # the per-row reports and the summary of the rows done
    return codes + ["ok"] * done


def api_code(response):
    if response.status_code in (200, 201):
        return "ok"
    assert response.status_code in (400, 404, 409), (response.status_code, response.content)
    return response.json()["error"]["code"]


def retry_locked(call, attempts=8):
    """A client's answer to 409 resource_locked + Retry-After: back off, try again."""
    for _ in range(attempts):
        code = call()
        if code != LOCKED:
            return code
        time.sleep(0.05 + random.random() * 0.1)
    return code


def change_form(promo, **changes):
    """The POST body of the promo code change form, as the page renders it, with ``changes``."""
    data = {
        "code": promo.code,
        "bonus_type": promo.bonus_type,
        "bonus_value": f"{promo.bonus_value:.2f}",
        "max_bonus": "" if promo.max_bonus is None else f"{promo.max_bonus:.2f}",
        "total_usage_limit": promo.total_usage_limit or "",
        "per_customer_limit": promo.per_customer_limit or "",
    }
    return {**data, **changes}


# --- promo code: every writer at once ---------------------------------------------------------------


def test_every_writer_of_a_promo_code_at_once(tenant, member, superuser):
    promo = PromoCodeFactory(tenant=tenant, code="STORM", total_usage_limit=20)
    original_max_bonus = promo.max_bonus
    old = [PromoCode.objects.redeem("STORM", tenant=tenant, customer=f"old{i}", amount="10") for i in range(6)]
    redeems, voids = 24, 3
    api = [token_client(member) for _ in range(redeems + voids + 2)]
    admin_form, admin_action = admin_browser(superuser), admin_browser(superuser)
    opened_at = form_version(admin_form, promo)  # the operator opened the form before the storm
    read_at = promo.version  # and an API client read the code
    form = change_form(promo, total_usage_limit=12, expected_version=opened_at)
    started, deactivated = {}, {}

    def attempt(i):
        time.sleep(random.random() * 0.05)
        if i < redeems:
            started[i] = clock()
            body = {"code": "STORM", "customer": f"new{i}", "amount": "10"}
            return retry_locked(lambda: api_code(api[i].post(f"{BASE}/promo-codes/redeem", body, format="json")))
        if i < redeems + voids:
            k = i - redeems
            return retry_locked(lambda: api_code(api[i].post(f"{BASE}/promo-usages/{old[k].pk}/void")))
        if i == redeems + voids:  # PUT without is_active, at the version read before the storm
            body = {"code": "STORM", "bonus_type": "fixed", "bonus_value": "11", "version": read_at}
            return retry_locked(lambda: api_code(api[i].put(f"{BASE}/promo-codes/{promo.pk}", body, format="json")))
        if i == redeems + voids + 1:  # PATCH, at the version read before the storm
            body = {"max_bonus": "8", "version": read_at}
            return retry_locked(lambda: api_code(api[i].patch(f"{BASE}/promo-codes/{promo.pk}", body, format="json")))
        if i == redeems + voids + 2:  # the admin change form cutting the limit
            url = reverse("admin:promos_promocode_change", args=[promo.pk])
            return form_outcome(admin_form.post(url, form))
        # the admin deactivate action, confirmed as its page showed the code (active): the storm's edits of
        # its terms do not stand in its way, a busy row is tried again
        url = reverse("admin:promos_promocode_changelist")
        body = {"action": "deactivate_selected", "apply": "1", "_selected_action": [str(promo.pk)]}
        codes = ["resource_locked"]
        for _ in range(8):
            shown = {f"seen_{promo.pk}": shown_state(PromoCode.objects.get(pk=promo.pk))}
            codes = message_codes(admin_action.post(url, {**body, **shown}, follow=True))
            if LOCKED not in codes:
                break
            time.sleep(0.1)
        deactivated["at"] = clock()  # after its commit: an upper bound of the instant it took effect
        return codes

    outcomes = run_concurrently(attempt, redeems + voids + 4)
    assert all(o.ok for o in outcomes), [repr(o.error) for o in outcomes if not o.ok]
    values = [o.value for o in outcomes]
    redeemed, voided = values[:redeems], values[redeems : redeems + voids]
    put, patch, admin_save, action = values[redeems + voids :]
    assert action == ["ok"], action
    assert {put, patch} <= {"ok", "version_conflict"}, (put, patch)
    # All three edits carry the version read before the storm: at most one of them is written
    assert [put, patch].count("ok") + (admin_save == "saved") <= 1, (put, patch, admin_save)
    assert voided == ["ok"] * voids
    assert set(redeemed) <= {"ok", "promo_inactive", "promo_exhausted"}, redeemed
    assert admin_save in {"saved", "version_conflict", "promo_limit_below_usage"}, admin_save

    promo.refresh_from_db()
    assert promo.is_active is False  # the PUT without is_active resurrected nothing
    late = [code for i, code in enumerate(redeemed) if started[i] > deactivated["at"]]
    assert all(code == "promo_inactive" for code in late), late
    usages = PromoUsage.objects.filter(promo=promo)
    assert all(u.created_at < deactivated["at"] for u in usages)
    assert usages.filter(voided_at__isnull=True).count() == 6 - voids + redeemed.count("ok")
    expected_limit = 12 if admin_save == "saved" else 20
    assert promo.total_usage_limit == expected_limit
    assert promo.max_bonus == (8 if patch == "ok" else original_max_bonus)
    assert assert_invariant(promo) <= promo.total_usage_limit


# --- the admin form read before an API edit commits and saved after --------------------------------


def test_admin_form_opened_before_an_api_limit_cut_is_refused_with_the_input_kept(tenant, member, superuser):
    promo = PromoCodeFactory(tenant=tenant, code="CUT", total_usage_limit=20)
    browser = admin_browser(superuser)
    opened_at = form_version(browser, promo)
    cut = token_client(member).patch(
        f"{BASE}/promo-codes/{promo.pk}", {"total_usage_limit": 8, "version": opened_at}, format="json"
    )
    assert cut.status_code == 200 and cut.json()["version"] == opened_at + 1
    url = reverse("admin:promos_promocode_change", args=[promo.pk])
    response = browser.post(url, change_form(promo, bonus_value="7.00", expected_version=opened_at))
    assert form_outcome(response) == "version_conflict"
    assert 'value="7.00"' in response.content.decode()  # the operator's input is kept
    assert not any("successfully" in str(m) for m in get_messages(response.wsgi_request))
    promo.refresh_from_db()
    assert (promo.total_usage_limit, promo.bonus_value, promo.version) == (8, 10, opened_at + 1)


def test_admin_save_waiting_on_an_uncommitted_api_edit_sees_it_and_is_refused(tenant, member, superuser):
    """The worst order: the API's limit cut holds the code's row lock, uncommitted, while the admin saves.

    The save waits for the lock (update_code locks the row, then reads the version): when the
    cut commits, the save sees version 2 and is refused. Without the row lock in update_code the
    save read version 1 beside the uncommitted cut and wrote over it.
    """
    promo = PromoCodeFactory(tenant=tenant, code="HELD", total_usage_limit=20)
    browser = admin_browser(superuser)
    opened_at = form_version(browser, promo)
    url = reverse("admin:promos_promocode_change", args=[promo.pk])
    form = change_form(promo, bonus_value="7.00", per_customer_limit=2, expected_version=opened_at)
    outcome = attempted_while_held(  # the cut commits while the admin save waits on the row
        lambda: PromoCode.objects.update_code(promo.pk, tenant=tenant, total_usage_limit=8),
        lambda i: form_outcome(browser.post(url, form)),
    )
    assert outcome.value == "version_conflict", repr(outcome.error) if outcome.error else outcome.value
    promo.refresh_from_db()
    assert (promo.total_usage_limit, promo.bonus_value, promo.per_customer_limit) == (8, 10, None)


def test_a_per_customer_limit_cut_waiting_on_a_redeem_counts_the_use_it_commits(tenant):
    """The cut waits for the code's row lock the redeem holds, then counts the customer's live uses:
    the use committed meanwhile puts alice at 2, so a limit of 1 is refused and nothing is written."""
    from promos.exceptions import PromoCustomerLimitBelowUsage

    promo = PromoCodeFactory(tenant=tenant, code="CUT1", per_customer_limit=None, total_usage_limit=None)
    PromoCode.objects.redeem("CUT1", tenant=tenant, customer="alice", amount="10")
    outcome = attempted_while_held(
        lambda: PromoCode.objects.redeem("CUT1", tenant=tenant, customer="alice", amount="10"),
        lambda i: PromoCode.objects.update_code(promo.pk, tenant=tenant, per_customer_limit=1),
    )
    assert isinstance(outcome.error, PromoCustomerLimitBelowUsage), repr(outcome.error)
    promo.refresh_from_db()
    assert promo.per_customer_limit is None and assert_invariant(promo) == 2


def test_put_read_before_a_held_deactivation_waits_and_is_refused_resurrecting_nothing(tenant, member):
    """The PUT echoes what its client read (``is_active`` true, the version then): it waits for the
    deactivation's row lock, then finds the version moved on, and writes nothing back."""
    promo = PromoCodeFactory(tenant=tenant, code="OFF")
    client = token_client(member)
    read = client.get(f"{BASE}/promo-codes/{promo.pk}").json()
    body = {name: read[name] for name in ("code", "bonus_type", "is_active", "version")} | {"bonus_value": "3"}
    outcome = attempted_while_held(
        lambda: PromoCode.objects.deactivate(promo.pk, tenant=tenant),
        lambda i: client.put(f"{BASE}/promo-codes/{promo.pk}", body, format="json"),
    )
    assert_error(outcome.value, 409, "version_conflict")
    promo.refresh_from_db()
    assert (promo.is_active, promo.bonus_value) == (False, 10)


# --- redemption session: consume vs admin cancel vs sweep vs approve --------------------------------


def test_consume_cancel_sweep_and_approve_at_once_leave_exactly_one_terminal_outcome(tenant, member, superuser):
    n = 12
    sessions = [RedemptionSessionFactory(tenant=tenant, status="approved" if k % 2 else "pending") for k in range(n)]
    shops = [token_client(member) for _ in range(n)]
    customers = [Client() for _ in range(n)]
    admins = [admin_browser(superuser) for _ in range(n)]
    armed = threading.Event()
    swept = []

    def attempt(i):
        if i == 3 * n:  # arm expiry once everyone is connected, then sweep until well past it
            RedemptionSession.objects.filter(tenant=tenant).update(
                expires_at=ClockNow() + Value(timedelta(milliseconds=300))
            )
            armed.set()
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                out = StringIO()
                try:
                    call_command("expire_redemption_sessions", stdout=out, stderr=StringIO())
                except SystemExit as exit:  # resource_locked: a session row was busy; sweep again
                    assert exit.code == 3
                    continue
                swept.append(int(re.match(r"Expired (\d+)", out.getvalue()).group(1)))
                time.sleep(0.01)
            return "swept"
        assert armed.wait(10)
        time.sleep(random.random() * 0.5)
        k, path = divmod(i, 3)
        session = sessions[k]
        if path == 0:
            url = f"{BASE}/redemption-sessions/{session.session_id}/consume"
            return api_code(shops[k].post(url, {"amount": "5"}, format="json"))
        if path == 1:
            url = reverse("admin:promos_redemptionsession_changelist")
            body = {"action": "cancel_selected", "apply": "1", "_selected_action": [str(session.pk)]}
            (code,) = message_codes(admins[k].post(url, body, follow=True))
            return code
        url = f"/api/public/redemption-sessions/{session.session_id}/approve"
        return api_code(customers[k].post(url, {"approval_secret": SECRET}, content_type="application/json"))

    outcomes = run_concurrently(attempt, 3 * n + 1)
    assert all(o.ok for o in outcomes), [repr(o.error) for o in outcomes if not o.ok]
    expired = 0
    for k, session in enumerate(sessions):
        consumed, cancelled, approved = (outcomes[3 * k + p].value for p in range(3))
        was_pending = session.status == "pending"
        session.refresh_from_db()
        winners = [consumed == "ok", cancelled == "ok", session.status == "expired"]
        assert sum(winners) == 1, (k, consumed, cancelled, approved, session.status)
        assert session.status in {"used", "cancelled", "expired"}
        if consumed == "ok":
            assert session.status == "used" and session.used_at < session.expires_at
        if cancelled == "ok":
            assert session.status == "cancelled" and session.cancelled_at < session.expires_at
        if approved == "ok":
            assert was_pending and session.approved_at < session.expires_at
        else:
            assert approved in {"session_not_pending", "session_expired"}, approved
        assert consumed in {"ok", "session_not_approved", "session_expired", "session_already_used", LOCKED}
        assert cancelled in {"ok", "session_already_used", "session_expired", "session_not_cancellable", LOCKED}
        expired += session.status == "expired"
    assert sum(swept) == expired  # the sweep expired exactly the sessions nobody else ended
    assert not RedemptionSession.objects.filter(tenant=tenant, status__in=["pending", "approved"]).exists()
