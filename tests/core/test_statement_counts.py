"""Statements per request and per guarded operation: stable numbers, asserted (issue 16).

Counted with autocommit as in production (``transactional_db``), as round trips to the server:
COMMIT and ROLLBACK count, each being one; a transaction's BEGIN goes in the same query as its
first statement (core/db_backend), which is captured as one entry starting ``BEGIN; ``.
"""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.bookings.conftest import recording_provider  # noqa: F401 - shared fixture
from tests.conftest import token_client
from tests.factories import MembershipFactory, TenantFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


def statements(call):
    with CaptureQueriesContext(connection) as queries:
        result = call()
    return result, [query["sql"] for query in queries]


@pytest.fixture
def acme_member():
    tenant = TenantFactory(slug="acme", name="Acme")
    return MembershipFactory(tenant=tenant, user=UserFactory(username="member")).user


@pytest.mark.parametrize("rate_limited", [False, True])
def test_an_authenticated_tenant_request_resolves_token_user_membership_and_tenant_in_one_statement(
    acme_member, settings, rate_limited
):
    """One read for who and where; the per-user rate limit, when on, adds its one bucket upsert."""
    settings.LOCKSTEP_THROTTLE_RATES = {**settings.LOCKSTEP_THROTTLE_RATES, "tenant_api": "6000/minute"}
    if not rate_limited:
        settings.LOCKSTEP_THROTTLE_RATES = dict.fromkeys(settings.LOCKSTEP_THROTTLE_RATES)
    client = token_client(acme_member)
    response, sql = statements(lambda: client.get("/api/t/acme/"))
    assert response.status_code == 200
    assert response.json() == {"slug": "acme", "name": "Acme", "time_zone": "UTC", "role": "staff"}
    assert len(sql) == 1 + rate_limited, sql
    assert "core_membership" in sql[0] and "authtoken_token" in sql[0] and "core_tenant" in sql[0]


def test_a_non_member_token_still_gets_404_and_an_inactive_users_token_401(acme_member):
    TenantFactory(slug="globex")
    response = token_client(acme_member).get("/api/t/globex/")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    acme_member.is_active = False
    acme_member.save(update_fields=["is_active"])
    response = token_client(acme_member).get("/api/t/acme/")
    assert (response.status_code, response.json()["error"]["code"]) == (401, "authentication_failed")


# --- guarded operations over HTTP: won and refused ------------------------------------------------


@pytest.fixture
def no_rate_limits(settings):
    settings.LOCKSTEP_THROTTLE_RATES = dict.fromkeys(settings.LOCKSTEP_THROTTLE_RATES)


def post(client, path, body):
    return statements(lambda: client.post(path, body, format="json"))


def decide_twice(member, action):
    """POST ``action`` twice on one new proposal: (won, its statements), (refused, its statements)."""
    from tests.proposals.factories import make_proposal

    proposal = make_proposal(member.memberships.get().tenant)
    client = token_client(member)
    path = f"/api/t/acme/proposals/{proposal.pk}/{action}"
    return post(client, path, {"session_id": "chat-1"}), post(client, path, {"session_id": "chat-1"})


@pytest.mark.usefixtures("no_rate_limits")
def test_a_proposal_reject_is_one_statement_after_authentication_won_or_refused(acme_member):
    (won, won_sql), (refused, refused_sql) = decide_twice(acme_member, "reject")
    assert (won.status_code, refused.status_code) == (200, 409)
    assert refused.json()["error"]["code"] == "proposal_already_processed"
    assert (len(won_sql), len(refused_sql)) == (2, 2), (won_sql, refused_sql)


@pytest.mark.usefixtures("no_rate_limits", "recording_provider")
def test_a_proposal_confirm_statements_won_and_refused(acme_member):
    (won, won_sql), (refused, refused_sql) = decide_twice(acme_member, "confirm")
    assert (won.status_code, refused.status_code) == (200, 409)
    # Won: who (1); BEGIN with the decision, the hold (its locks and its read in one query, then the
    # booking, its checkout intent and the execution returning the answer's row in one statement; no
    # savepoint), COMMIT (4); the checkout opened with the customer's e-mail owed, one statement (1).
    # Refused: who, then BEGIN with the deciding statement that names the refusal, ROLLBACK.
    assert (len(won_sql), len(refused_sql)) == (6, 3), "\n".join(s[:120] for s in won_sql)
    for first in (won_sql[1], refused_sql[1]):  # BEGIN, who and which URL (core/history.py), the decision
        assert first.startswith("BEGIN; SELECT set_config('pghistory.context_id'") and "; WITH locked AS" in first


@pytest.mark.usefixtures("no_rate_limits")
def test_a_session_consume_is_one_statement_after_authentication_won_or_refused(acme_member):
    from decimal import Decimal

    from promos.models import RedemptionSession

    tenant = acme_member.memberships.get().tenant
    session, secret = RedemptionSession.objects.create_session(tenant=tenant, customer="c", max_amount=Decimal("100"))
    RedemptionSession.objects.approve(session.session_id, secret=secret)
    client = token_client(acme_member)
    path = f"/api/t/acme/redemption-sessions/{session.session_id}/consume"
    won, won_sql = post(client, path, {"amount": "10.00"})
    refused, refused_sql = post(client, path, {"amount": "10.00"})
    assert (won.status_code, refused.status_code) == (200, 409)
    assert refused.json()["error"]["code"] == "session_already_used"
    assert (len(won_sql), len(refused_sql)) == (2, 2), (won_sql, refused_sql)
    assert won_sql[1].startswith("SELECT set_config('pghistory.context_id'")  # who and which URL, same statement


@pytest.mark.usefixtures("no_rate_limits")
def test_a_promo_redeem_and_void_statements_won_and_refused(acme_member):
    from promos.models import PromoUsage
    from tests.promos.factories import PromoCodeFactory

    tenant = acme_member.memberships.get().tenant
    PromoCodeFactory(tenant=tenant, code="ONCE", per_customer_limit=1)
    client = token_client(acme_member)
    body = {"code": "ONCE", "customer": "c", "amount": "10.00"}
    won, won_sql = post(client, "/api/t/acme/promo-codes/redeem", body)
    refused, refused_sql = post(client, "/api/t/acme/promo-codes/redeem", body)
    assert (won.status_code, refused.status_code) == (201, 409)
    assert refused.json()["error"]["code"] == "promo_customer_limit"
    # who; BEGIN, the lock timeout and the code row's lock in one round trip, then one statement that
    # re-reads under it, judges and writes the usage (which counts itself on the code); COMMIT. Refused: the same,
    # ROLLBACK for COMMIT.
    assert (len(won_sql), len(refused_sql)) == (4, 4), "\n".join(s[:120] for s in won_sql)
    PromoCodeFactory(tenant=tenant, code="LAST", total_usage_limit=1)
    body = {"code": "LAST", "customer": "c", "amount": "10.00"}
    assert post(client, "/api/t/acme/promo-codes/redeem", body)[0].status_code == 201
    used_up, used_up_sql = post(client, "/api/t/acme/promo-codes/redeem", {**body, "customer": "d"})
    assert (used_up.status_code, used_up.json()["error"]["code"]) == (409, "promo_exhausted")
    # A code the locked row refuses (used up, inactive, outside its window): who; BEGIN with the lock and the
    # clock read above it; ROLLBACK. No judging statement: the lock is let go one round trip sooner.
    assert len(used_up_sql) == 3, "\n".join(s[:120] for s in used_up_sql)
    path = f"/api/t/acme/promo-usages/{PromoUsage.objects.get(promo__code='ONCE').pk}/void"
    won, won_sql = post(client, path, {})
    refused, refused_sql = post(client, path, {})
    assert (won.status_code, refused.status_code) == (200, 409)
    assert refused.json()["error"]["code"] == "usage_already_voided"
    # who; BEGIN with the deciding statement (core.decide; the stamp counts the use back on the code, a
    # trigger), the code for the answer; COMMIT. Refused: who; BEGIN with the deciding statement that names
    # the refusal, ROLLBACK.
    assert (len(won_sql), len(refused_sql)) == (4, 3), "\n".join(s[:120] for s in won_sql)


@pytest.mark.usefixtures("no_rate_limits")
def test_a_profile_undo_statements_won_and_refused(acme_member):
    from profiles.models import Profile

    tenant = acme_member.memberships.get().tenant
    profile = Profile.objects.create_profile(tenant=tenant, first_name="A", sex="male")
    Profile.objects.update_profile(
        profile.pk, tenant=tenant, version=profile.version, actor=acme_member, first_name="B"
    )
    entry = profile.history.get(action="update")
    client = token_client(acme_member)
    path = f"/api/t/acme/audit-log/{entry.pk}/undo"
    (won, won_sql), (refused, refused_sql) = (
        statements(lambda: client.post(path, {"reason": "typo"}, format="json")) for _ in range(2)
    )
    assert (won.status_code, refused.status_code) == (200, 409)
    assert refused.json()["error"]["code"] == "already_undone"
    assert won.json()["undone"]["actor"] == won.json()["undone"]["undone_by"] == "member"
    # Won: who (1); BEGIN with one statement taking the try-lock and the entry (with its actor, for the
    # answer), the profile, one statement writing its change, the undo entry and the entry marked
    # undone, COMMIT (4): nothing read after the commit. Refused: who, BEGIN with the try-lock and the
    # entry (already undone), ROLLBACK.
    assert (len(won_sql), len(refused_sql)) == (5, 3), "\n".join(s[:120] for s in won_sql)


@pytest.mark.usefixtures("no_rate_limits", "recording_provider")
def test_a_public_checkout_reads_its_tenant_in_one_statement(acme_member):
    from rest_framework.test import APIClient

    from bookings.models import Package

    package = Package.objects.create(
        tenant=acme_member.memberships.get().tenant, name="Day", price="100.00", currency="USD", daily_capacity=1
    )
    body = {"package": package.pk, "date": "2099-01-01", "customer": {"name": "C", "email": "c@example.com"}}
    response, sql = statements(lambda: APIClient().post("/api/public/acme/checkouts", body, format="json"))
    assert response.status_code == 201, response.content
    assert sql[0].startswith('SELECT "core_tenant"."id"')
    # The tenant (1); the hold: BEGIN, its two locks and the place read after them in one query, the
    # booking and its checkout in one statement, COMMIT (3); the checkout opened with the customer's
    # e-mail and its job owed, one statement (1).
    assert len(sql) == 5, "\n".join(s[:120] for s in sql)
