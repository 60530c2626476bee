"""Statements per request and per guarded operation: stable numbers, asserted (issue 16).

Counted with autocommit as in production (``transactional_db``): BEGIN, COMMIT and
ROLLBACK count, as each is a round trip to the server.
"""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

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
    assert response.json() == {"slug": "acme", "name": "Acme", "role": "staff"}
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
