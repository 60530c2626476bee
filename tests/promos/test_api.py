import json
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from core.guards import ClockNow, database_clock
from promos.models import PromoCode, PromoUsage, RedemptionSession
from tests.promos.factories import SECRET, PromoCodeFactory, RedemptionSessionFactory
from tests.promos.helpers import assert_invariant
from tests.refusals import assert_error

pytestmark = pytest.mark.django_db

BASE = "/api/t/acme"


def post(client, path, body=None, **headers):
    return client.post(f"{BASE}/{path}", body or {}, format="json", **headers)


def raw_post(client, path, text):
    return client.post(f"{BASE}/{path}", data=text, content_type="application/json")


@pytest.fixture
def promo(tenant):
    return PromoCodeFactory(
        tenant=tenant,
        code="SPRING15",
        bonus_type="percentage",
        bonus_value=Decimal("15"),
        max_bonus=Decimal("50"),
        total_usage_limit=3,
        per_customer_limit=1,
    )


# --- promo codes CRUD ----------------------------------------------------------------------------


def test_create_list_get_update_delete_code(api_client, tenant):
    created = post(api_client, "promo-codes", {"code": "Welcome10", "bonus_type": "fixed", "bonus_value": "10"})
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["code"] == "Welcome10" and body["bonus_value"] == "10.00" and body["times_used"] == 0
    assert body["is_active"] is True
    listed = api_client.get(f"{BASE}/promo-codes").json()
    assert [c["code"] for c in listed["results"]] == ["Welcome10"]
    pk = body["id"]
    assert api_client.get(f"{BASE}/promo-codes/{pk}").json()["code"] == "Welcome10"
    edit = {"max_bonus": "5.50", "version": body["version"]}
    read_only = api_client.patch(f"{BASE}/promo-codes/{pk}", {**edit, "times_used": 99}, format="json")
    assert_error(read_only, 400, "invalid_input")  # strict input: a read-only field is refused by name
    assert read_only.json()["error"]["fields"] == {"times_used": ["Unknown field."]}
    patched = api_client.patch(f"{BASE}/promo-codes/{pk}", edit, format="json")
    assert patched.status_code == 200, patched.content
    assert patched.json()["max_bonus"] == "5.50" and patched.json()["times_used"] == 0
    stale = api_client.delete(f"{BASE}/promo-codes/{pk}?version={body['version']}")  # the version before the PATCH
    stale = assert_error(stale, 409, "version_conflict")
    assert stale["details"] == {"current": patched.json()["version"]}
    assert_error(api_client.delete(f"{BASE}/promo-codes/{pk}?version=x"), 400, "invalid_input")
    assert api_client.delete(f"{BASE}/promo-codes/{pk}?version={patched.json()['version']}").status_code == 204
    assert_error(api_client.get(f"{BASE}/promo-codes/{pk}"), 404, "promo_not_found")


def test_duplicate_code_any_case_is_409(api_client, promo):
    response = post(api_client, "promo-codes", {"code": "spring15", "bonus_type": "fixed", "bonus_value": "1"})
    assert_error(response, 409, "promo_code_taken")


@pytest.mark.parametrize(
    "body",
    [
        {"code": "P", "bonus_type": "percentage", "bonus_value": "100.01"},
        {"code": "P", "bonus_type": "fixed", "bonus_value": "-1"},
        {"code": "P", "bonus_type": "fixed", "bonus_value": "NaN"},
        {"code": "P", "bonus_type": "free", "bonus_value": "1"},
        {"code": "P", "bonus_type": "\ud800", "bonus_value": "1"},  # regression: echoed in the error, 500
        {"code": "has space", "bonus_type": "fixed", "bonus_value": "1"},
        {"code": "X" * 65, "bonus_type": "fixed", "bonus_value": "1"},
        {"code": "P", "bonus_type": "fixed", "bonus_value": "1", "total_usage_limit": 0},
        {"code": "P", "bonus_type": "fixed", "bonus_value": "1", "per_customer_limit": 10**20},
        {
            "code": "P",
            "bonus_type": "fixed",
            "bonus_value": "1",
            "starts_at": "2030-01-02T00:00:00Z",
            "ends_at": "2030-01-01T00:00:00Z",
        },
        {"code": "P", "bonus_type": "fixed", "bonus_value": "1", "starts_at": "not a date"},
    ],
)
def test_bad_definitions_are_400(api_client, tenant, body):
    assert_error(raw_post(api_client, "promo-codes", json.dumps(body)), 400, "invalid_input")
    assert not PromoCode.objects.exists()


def test_lowering_limit_below_uses_is_409(api_client, promo):
    PromoCode.objects.redeem(promo.code, tenant=promo.tenant, customer="a", amount="10")
    PromoCode.objects.redeem(promo.code, tenant=promo.tenant, customer="b", amount="10")
    body = {"total_usage_limit": 1, "version": promo.version}
    response = api_client.patch(f"{BASE}/promo-codes/{promo.pk}", body, format="json")
    assert_error(response, 409, "promo_limit_below_usage")
    assert_error(api_client.delete(f"{BASE}/promo-codes/{promo.pk}"), 409, "promo_in_use")


def test_lowering_the_per_customer_limit_below_a_customers_uses_is_409(api_client, tenant):
    promo = PromoCodeFactory(tenant=tenant, code="TWICE", per_customer_limit=None, total_usage_limit=None)
    for _ in range(2):
        PromoCode.objects.redeem("TWICE", tenant=tenant, customer="alice", amount="10")
    PromoCode.objects.redeem("TWICE", tenant=tenant, customer="bob", amount="10")
    cut = {"per_customer_limit": 1, "version": promo.version}
    assert_error(
        api_client.patch(f"{BASE}/promo-codes/{promo.pk}", cut, format="json"), 409, "promo_customer_limit_below_usage"
    )
    promo.refresh_from_db()
    assert promo.per_customer_limit is None
    kept = api_client.patch(f"{BASE}/promo-codes/{promo.pk}", {**cut, "per_customer_limit": 2}, format="json")
    assert kept.status_code == 200 and kept.json()["per_customer_limit"] == 2, kept.content
    assert_invariant(promo)


def test_codes_of_another_tenant_and_non_members_are_404(api_client, outsider_client, other_tenant, promo):
    theirs = PromoCodeFactory(tenant=other_tenant)
    assert_error(api_client.get(f"{BASE}/promo-codes/{theirs.pk}"), 404, "promo_not_found")
    assert_error(post(api_client, f"promo-codes/{theirs.pk}/deactivate"), 404, "promo_not_found")
    assert_error(outsider_client.get(f"{BASE}/promo-codes"), 404, "not_found")
    assert_error(
        post(outsider_client, "promo-codes/redeem", {"code": "SPRING15", "customer": "a", "amount": "1"}),
        404,
        "not_found",
    )


def test_malformed_code_ids_are_404(api_client, tenant):
    for pk in ["abc", "0", "-1", "99999999999999999999999", "1.5"]:
        assert_error(api_client.get(f"{BASE}/promo-codes/{pk}"), 404, "promo_not_found")
        assert_error(post(api_client, f"promo-codes/{pk}/deactivate"), 404, "promo_not_found")
        assert_error(post(api_client, f"promo-usages/{pk}/void"), 404, "usage_not_found")


# --- validate / redeem ---------------------------------------------------------------------------


def test_validate_previews_without_reserving(api_client, promo):
    response = post(api_client, "promo-codes/validate", {"code": "spring15", "customer": "alice", "amount": "33.33"})
    assert response.status_code == 200
    assert response.json() == {
        "valid": True,
        "bonus_amount": "5.00",
        "currency": "USD",
        "code": "SPRING15",
        "reason": None,
    }
    assert assert_invariant(promo) == 0


def test_validate_answers_with_the_redeem_error_codes(api_client, promo):
    body = {"code": "SPRING15", "customer": "alice", "amount": "10"}
    assert post(api_client, "promo-codes/redeem", body).status_code == 201
    preview = post(api_client, "promo-codes/validate", body).json()
    assert preview["valid"] is False and preview["bonus_amount"] is None
    assert preview["reason"]["code"] == "promo_customer_limit" and preview["reason"]["message"]
    assert_error(post(api_client, "promo-codes/redeem", body), 409, "promo_customer_limit")
    unknown = post(api_client, "promo-codes/validate", {**body, "code": "NOPE"}).json()
    assert unknown["reason"]["code"] == "promo_not_found"


def test_redeem_returns_201_with_usage_and_is_idempotent(api_client, promo):
    body = {"code": "SPRING15", "customer": "alice", "amount": "400", "reference": "order-7"}
    first = post(api_client, "promo-codes/redeem", body, HTTP_IDEMPOTENCY_KEY="k1")
    assert first.status_code == 201, first.content
    data = first.json()
    assert data["bonus_amount"] == "50.00" and data["base_amount"] == "400.00" and data["code"] == "SPRING15"
    assert data["reference"] == "order-7" and data["usage_id"]
    again = post(api_client, "promo-codes/redeem", body, HTTP_IDEMPOTENCY_KEY="k1")
    assert again.status_code == 201 and again.json() == data and again["Idempotent-Replayed"] == "true"
    assert_error(
        post(api_client, "promo-codes/redeem", {**body, "amount": "5"}, HTTP_IDEMPOTENCY_KEY="k1"),
        422,
        "idempotency_key_reused",
    )
    assert assert_invariant(promo) == 1


def test_a_request_refused_before_it_acted_leaves_its_idempotency_key_for_the_corrected_body(api_client, promo):
    """As Stripe does: a body that does not validate (400 invalid_input) keeps no answer under its key, so the
    client's corrected retry with the same key goes through (it was 422 idempotency_key_reused for 24 h). An
    answer the endpoint gave after it acted (a refusal: 409) is kept and replayed, as before."""
    body = {"code": "SPRING15", "customer": "alice", "amount": "400"}
    assert_error(
        post(api_client, "promo-codes/redeem", {**body, "amount": "4x"}, HTTP_IDEMPOTENCY_KEY="k2"),
        400,
        "invalid_input",
    )
    corrected = post(api_client, "promo-codes/redeem", body, HTTP_IDEMPOTENCY_KEY="k2")
    assert corrected.status_code == 201, corrected.content
    assert "Idempotent-Replayed" not in corrected
    refused = post(api_client, "promo-codes/redeem", {**body, "code": "NOPE"}, HTTP_IDEMPOTENCY_KEY="k3")
    assert_error(refused, 404, "promo_not_found")
    replayed = post(api_client, "promo-codes/redeem", {**body, "code": "NOPE"}, HTTP_IDEMPOTENCY_KEY="k3")
    assert replayed.status_code == 404 and replayed["Idempotent-Replayed"] == "true"
    assert assert_invariant(promo) == 1


@pytest.mark.parametrize(
    ("setup", "status", "code"),
    [
        (dict(is_active=False), 409, "promo_inactive"),
        (dict(starts_at=timedelta(days=1)), 409, "promo_not_started"),
        (dict(ends_at=timedelta(seconds=-1)), 409, "promo_expired"),
    ],
)
def test_redeem_refusals(api_client, tenant, setup, status, code):
    now = database_clock()
    fields = {k: (now + v if isinstance(v, timedelta) else v) for k, v in setup.items()}
    if "ends_at" in fields:
        fields["starts_at"] = now - timedelta(days=2)
    PromoCodeFactory(tenant=tenant, code="C", **fields)
    assert_error(post(api_client, "promo-codes/redeem", {"code": "C", "customer": "a", "amount": "5"}), status, code)


def test_exhausted_and_not_found(api_client, promo, other_tenant):
    for customer in ["a", "b", "c"]:
        assert (
            post(
                api_client, "promo-codes/redeem", {"code": "SPRING15", "customer": customer, "amount": "5"}
            ).status_code
            == 201
        )
    assert_error(
        post(api_client, "promo-codes/redeem", {"code": "SPRING15", "customer": "d", "amount": "5"}),
        409,
        "promo_exhausted",
    )
    PromoCodeFactory(tenant=other_tenant, code="GLOBEX")
    assert_error(
        post(api_client, "promo-codes/redeem", {"code": "GLOBEX", "customer": "d", "amount": "5"}),
        404,
        "promo_not_found",
    )


BAD_AMOUNTS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-5",
    "0",
    "12.3456",  # more places than any currency here (finer than the code's: amount_precision, below)
    "abc",
    "",
    None,
    True,
    [],
    {"a": 1},
    "100000000",  # nine digits: above any currency's ceiling
    "10000000.5",  # eight digits with a fraction: no currency charged in fractions goes that high
    "9" * 100,
]


@pytest.mark.parametrize("path", ["promo-codes/validate", "promo-codes/redeem"])
def test_bad_amounts_are_400(api_client, promo, path):
    for amount in BAD_AMOUNTS:
        response = post(api_client, path, {"code": "SPRING15", "customer": "alice", "amount": amount})
        error = assert_error(response, 400, "invalid_input")
        assert "amount" in error["fields"], amount
    assert assert_invariant(promo) == 0


def test_an_amount_is_judged_against_its_codes_currency_ceiling(api_client, tenant):
    """What a card processor charges at once: 999999.99 USD, 99999999 JPY (core.money.max_amount). Above the
    largest ceiling the field itself refuses the amount; above its code's, the code's currency does."""
    for currency, largest, above, code in (
        ("USD", "999999.99", "1000000", "invalid_amount"),
        ("JPY", "99999999", "100000000", "invalid_input"),
    ):
        PromoCodeFactory(tenant=tenant, code=f"BIG{currency}", currency=currency, bonus_value=Decimal("10"))
        body = {"code": f"BIG{currency}", "customer": "alice", "amount": largest}
        fine = post(api_client, "promo-codes/validate", body)
        assert fine.status_code == 200 and fine.json()["valid"], fine.content
        error = assert_error(post(api_client, "promo-codes/validate", {**body, "amount": above}), 400, code)
        if code == "invalid_amount":
            assert error["details"] == {"maximum": largest}


def test_non_standard_json_numbers_are_400(api_client, promo):
    for literal in ["NaN", "Infinity", "-Infinity", "1e400", "1E+999999"]:
        text = f'{{"code": "SPRING15", "customer": "a", "amount": {literal}}}'
        response = raw_post(api_client, "promo-codes/redeem", text)
        assert response.status_code == 400, (literal, response.content)
        assert response.json()["error"]["code"] in {"malformed_request", "invalid_input"}
    assert assert_invariant(promo) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"code": "X" * 5000, "customer": "a", "amount": "5"},
        {"code": "SPRING15", "customer": "c" * 300, "amount": "5"},
        {"code": ["SPRING15"], "customer": "a", "amount": "5"},
        {"code": "SPRING15", "customer": {"id": 1}, "amount": "5"},
        {"code": "SPRING15", "amount": "5"},
        {"code": "SPRING15", "customer": "a", "amount": "5", "reference": "r" * 300},
    ],
)
def test_bad_redeem_bodies_are_400(api_client, promo, body):
    assert_error(post(api_client, "promo-codes/redeem", body), 400, "invalid_input")


def test_a_number_where_the_schema_says_string_is_refused_per_field(api_client, promo):
    response = post(api_client, "promo-codes/redeem", {"code": 12, "customer": 7, "amount": 5})
    assert_error(response, 400, "invalid_input")
    assert response.json()["error"]["fields"] == {
        "code": ["Must be a string."],
        "customer": ["Must be a string."],
        "amount": ["Must be a string."],
    }


def test_non_object_body_is_400(api_client, promo):
    assert raw_post(api_client, "promo-codes/redeem", "[1, 2]").status_code == 400
    assert_error(raw_post(api_client, "promo-codes/redeem", "{nope"), 400, "malformed_request")


# --- deactivate / void ---------------------------------------------------------------------------


def test_deactivate_then_redeem_is_refused_and_activate_restores(api_client, promo):
    response = post(api_client, f"promo-codes/{promo.pk}/deactivate")
    assert response.status_code == 200 and response.json()["is_active"] is False
    body = {"code": "SPRING15", "customer": "a", "amount": "5"}
    assert_error(post(api_client, "promo-codes/redeem", body), 409, "promo_inactive")
    assert post(api_client, f"promo-codes/{promo.pk}/activate").json()["is_active"] is True
    assert post(api_client, "promo-codes/redeem", body).status_code == 201


def test_void_once_then_409_and_list_usages(api_client, promo):
    usage_id = post(api_client, "promo-codes/redeem", {"code": "SPRING15", "customer": "a", "amount": "5"}).json()[
        "usage_id"
    ]
    listed = api_client.get(f"{BASE}/promo-usages?code=spring15").json()["results"]
    assert [u["usage_id"] for u in listed] == [usage_id]
    voided = post(api_client, f"promo-usages/{usage_id}/void", HTTP_IDEMPOTENCY_KEY="v1")
    assert voided.status_code == 200 and voided.json()["voided_at"]
    replay = post(api_client, f"promo-usages/{usage_id}/void", HTTP_IDEMPOTENCY_KEY="v1")
    assert replay.status_code == 200 and replay["Idempotent-Replayed"] == "true"
    assert_error(post(api_client, f"promo-usages/{usage_id}/void"), 409, "usage_already_voided")
    assert_error(post(api_client, f"promo-usages/{usage_id + 1000}/void"), 404, "usage_not_found")
    assert assert_invariant(promo) == 0


def test_void_of_another_tenants_usage_is_404(api_client, other_tenant):
    theirs = PromoCodeFactory(tenant=other_tenant)
    usage = PromoCode.objects.redeem(theirs.code, tenant=other_tenant, customer="a", amount="5")
    assert_error(post(api_client, f"promo-usages/{usage.pk}/void"), 404, "usage_not_found")
    assert PromoUsage.objects.get(pk=usage.pk).voided_at is None


# --- redemption sessions ---------------------------------------------------------------------------


def public(client, session_id, verb, body):
    return client.post(f"/api/public/redemption-sessions/{session_id}/{verb}", body, format="json")


def test_an_idempotent_session_creation_keeps_its_secret_encrypted_and_replays_it(api_client, anon_client, settings):
    """The session row keeps only the secret's hash: the idempotency record must not keep it in clear."""
    from core.models import IdempotencyKey

    body, key = {"customer": "alice", "max_amount": "80", "expires_in": 600}, {"HTTP_IDEMPOTENCY_KEY": "sess-1"}
    first = post(api_client, "redemption-sessions", body, **key)
    assert first.status_code == 201, first.content
    secret = first.json()["approval_secret"]
    record = IdempotencyKey.objects.get(key="sess-1")
    assert secret not in json.dumps(record.response_body) and set(record.response_body["approval_secret"]) == {"sealed"}
    replayed = post(api_client, "redemption-sessions", body, **key)
    assert replayed["Idempotent-Replayed"] == "true" and replayed.json() == first.json()
    settings.SECRET_KEY_FALLBACKS, settings.SECRET_KEY = [settings.SECRET_KEY], "a-new-key-" + "x" * 50
    assert post(api_client, "redemption-sessions", body, **key).json()["approval_secret"] == secret  # rotated
    settings.SECRET_KEY_FALLBACKS = []
    assert post(api_client, "redemption-sessions", body, **key).json()["approval_secret"] is None  # key gone
    approved = public(anon_client, first.json()["session_id"], "approve", {"approval_secret": secret})
    assert approved.status_code == 200, approved.content


def test_session_lifecycle_over_the_api(api_client, anon_client, tenant):
    created = post(api_client, "redemption-sessions", {"customer": "alice", "max_amount": "80", "expires_in": 600})
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["status"] == "pending" and body["max_amount"] == "80.00" and body["approval_secret"]
    session_id, secret = body["session_id"], body["approval_secret"]
    stored = RedemptionSession.objects.get(session_id=session_id)
    assert secret not in stored.secret_hash
    listed = api_client.get(f"{BASE}/redemption-sessions").json()["results"]
    assert "approval_secret" not in listed[0] and "secret_hash" not in listed[0]

    assert_error(
        post(api_client, f"redemption-sessions/{session_id}/consume", {"amount": "10"}), 409, "session_not_approved"
    )
    assert_error(public(anon_client, session_id, "approve", {"approval_secret": "wrong"}), 404, "session_not_found")
    approved = public(anon_client, session_id, "approve", {"approval_secret": secret})
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    assert_error(public(anon_client, session_id, "reject", {"approval_secret": secret}), 409, "session_not_pending")

    assert_error(
        post(api_client, f"redemption-sessions/{session_id}/consume", {"amount": "80.01"}), 409, "amount_exceeds_limit"
    )
    consumed = post(
        api_client, f"redemption-sessions/{session_id}/consume", {"amount": "80"}, HTTP_IDEMPOTENCY_KEY="c1"
    )
    assert consumed.status_code == 200
    assert consumed.json() == {"session_id": session_id, "status": "used", "used_amount": "80.00", "currency": "USD"}
    replay = post(api_client, f"redemption-sessions/{session_id}/consume", {"amount": "80"}, HTTP_IDEMPOTENCY_KEY="c1")
    assert replay.json() == consumed.json() and replay["Idempotent-Replayed"] == "true"
    assert_error(
        post(api_client, f"redemption-sessions/{session_id}/consume", {"amount": "1"}), 409, "session_already_used"
    )
    detail = api_client.get(f"{BASE}/redemption-sessions/{session_id}").json()
    assert detail["status"] == "used" and detail["used_amount"] == "80.00"


def test_a_session_past_its_expiry_reads_expired_before_the_sweep_writes_it(api_client, tenant):
    """Regression: the API answered a session's stored status: past its expiry, before the sweep, it read
    ``approved`` (and was listed under ?status=approved, not ?status=expired), though every consume refused it."""
    earlier = ClockNow() - timedelta(minutes=1)  # approved before it lapsed
    lapsed, live = (RedemptionSessionFactory(tenant=tenant, status="approved", approved_at=earlier) for _ in "ab")
    RedemptionSession.objects.filter(pk=lapsed.pk).update(expires_at=ClockNow() - timedelta(seconds=1))
    assert api_client.get(f"{BASE}/redemption-sessions/{lapsed.session_id}").json()["status"] == "expired"
    assert api_client.get(f"{BASE}/redemption-sessions/{live.session_id}").json()["status"] == "approved"

    def listed(status):
        return [
            row["session_id"] for row in api_client.get(f"{BASE}/redemption-sessions?status={status}").json()["results"]
        ]

    assert listed("expired") == [str(lapsed.session_id)]
    assert listed("approved") == [str(live.session_id)]
    assert_error(
        post(api_client, f"redemption-sessions/{lapsed.session_id}/consume", {"amount": "1"}), 409, "session_expired"
    )
    assert RedemptionSession.objects.get(pk=lapsed.pk).status == "approved"  # nothing written: the sweep will


def test_reject_and_cancel_over_the_api(api_client, anon_client, tenant):
    pending = RedemptionSessionFactory(tenant=tenant)
    assert public(anon_client, pending.session_id, "reject", {"approval_secret": SECRET}).json()["status"] == "rejected"
    approved = RedemptionSessionFactory(tenant=tenant, status="approved")
    cancelled = post(api_client, f"redemption-sessions/{approved.session_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert_error(post(api_client, f"redemption-sessions/{approved.session_id}/cancel"), 409, "session_not_cancellable")
    assert_error(
        post(api_client, f"redemption-sessions/{approved.session_id}/consume", {"amount": "1"}),
        409,
        "session_not_approved",
    )


def test_expired_session_is_409(api_client, anon_client, tenant):
    pending = RedemptionSessionFactory(tenant=tenant, expires_in=timedelta(seconds=-1))
    approved = RedemptionSessionFactory(tenant=tenant, status="approved", expires_in=timedelta(seconds=-1))
    assert_error(
        public(anon_client, pending.session_id, "approve", {"approval_secret": SECRET}), 409, "session_expired"
    )
    assert_error(
        post(api_client, f"redemption-sessions/{approved.session_id}/consume", {"amount": "1"}), 409, "session_expired"
    )


def test_other_tenants_session_is_404(api_client, other_tenant):
    theirs = RedemptionSessionFactory(tenant=other_tenant, status="approved")
    assert_error(
        post(api_client, f"redemption-sessions/{theirs.session_id}/consume", {"amount": "1"}), 404, "session_not_found"
    )
    assert_error(post(api_client, f"redemption-sessions/{theirs.session_id}/cancel"), 404, "session_not_found")
    assert_error(api_client.get(f"{BASE}/redemption-sessions/{theirs.session_id}"), 404, "session_not_found")
    assert RedemptionSession.objects.get(pk=theirs.pk).status == "approved"


def test_malformed_session_ids_are_404(api_client, anon_client, tenant):
    for session_id in ["not-a-uuid", "123", "0" * 40, "%00", "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"]:
        consume = post(api_client, f"redemption-sessions/{session_id}/consume", {"amount": "1"})
        assert_error(consume, 404, "session_not_found")
        assert_error(post(api_client, f"redemption-sessions/{session_id}/cancel"), 404, "session_not_found")
        assert_error(api_client.get(f"{BASE}/redemption-sessions/{session_id}"), 404, "session_not_found")
        assert_error(public(anon_client, session_id, "approve", {"approval_secret": "x"}), 404, "session_not_found")
        assert_error(public(anon_client, session_id, "reject", {"approval_secret": "x"}), 404, "session_not_found")


def test_unknown_session_is_404(api_client, anon_client, tenant):
    assert_error(public(anon_client, uuid.uuid4(), "approve", {"approval_secret": "x"}), 404, "session_not_found")
    assert_error(
        post(api_client, f"redemption-sessions/{uuid.uuid4()}/consume", {"amount": "1"}), 404, "session_not_found"
    )


def test_bad_session_amounts_are_400(api_client, tenant):
    session = RedemptionSessionFactory(tenant=tenant, status="approved")
    for amount in BAD_AMOUNTS:
        created = post(api_client, "redemption-sessions", {"customer": "a", "max_amount": amount})
        assert_error(created, 400, "invalid_input")
        consumed = post(api_client, f"redemption-sessions/{session.session_id}/consume", {"amount": amount})
        assert_error(consumed, 400, "invalid_input")
    assert RedemptionSession.objects.get(pk=session.pk).status == "approved"
    assert RedemptionSession.objects.count() == 1


def test_messages_follow_accept_language(api_client, promo):
    body = {"code": "NOPE", "customer": "a", "amount": "5"}
    english = assert_error(post(api_client, "promo-codes/redeem", body), 404, "promo_not_found")
    arabic = assert_error(
        post(api_client, "promo-codes/redeem", body, HTTP_ACCEPT_LANGUAGE="ar"), 404, "promo_not_found"
    )
    assert english["message"] == "This promo code does not exist."
    assert arabic["message"] == "رمز الخصم هذا غير موجود."


def test_bad_session_ttl_is_400(api_client, tenant):
    for expires_in in [0, -5, 10**9, "soon", 1.5, None]:
        body = {"customer": "a", "max_amount": "5", "expires_in": expires_in}
        assert_error(post(api_client, "redemption-sessions", body), 400, "invalid_input")


def test_bad_secret_bodies_are_400(anon_client, tenant):
    session = RedemptionSessionFactory(tenant=tenant)
    for body in [{}, {"approval_secret": ""}, {"approval_secret": "s" * 500}, {"approval_secret": ["x"]}]:
        assert_error(public(anon_client, session.session_id, "approve", body), 400, "invalid_input")


ODD_VALUES = [None, [], {}, [1], True, -1, 10**30, 1.5, "", "\x00", "a\x00b", "\ud800", "é" * 70, "x" * 5000, "٣٣"]


def test_odd_values_in_any_field_are_never_a_500(api_client, anon_client, tenant):
    """Every field of every promo POST, one odd JSON value at a time: 2xx/400/404/409, never 500."""
    api_client.raise_request_exception = anon_client.raise_request_exception = False
    session = RedemptionSessionFactory(tenant=tenant, status="approved", max_amount=Decimal("1000000"))
    pending = RedemptionSessionFactory(tenant=tenant)
    PromoCodeFactory(tenant=tenant, code="SPRING15")
    targets = [
        (api_client, f"{BASE}/promo-codes/validate", {"code": "SPRING15", "customer": "a", "amount": "5"}),
        (
            api_client,
            f"{BASE}/promo-codes/redeem",
            {"code": "SPRING15", "customer": "a", "amount": "5", "reference": ""},
        ),
        (
            api_client,
            f"{BASE}/promo-codes",
            {
                "code": "NEW",
                "bonus_type": "fixed",
                "bonus_value": "5",
                "max_bonus": "3",
                "starts_at": "2020-01-01T00:00:00Z",
                "ends_at": "2030-01-01T00:00:00Z",
                "total_usage_limit": 5,
                "per_customer_limit": 1,
                "is_active": True,
            },
        ),
        (api_client, f"{BASE}/redemption-sessions", {"customer": "a", "max_amount": "5", "expires_in": 60}),
        (api_client, f"{BASE}/redemption-sessions/{session.session_id}/consume", {"amount": "1"}),
        (anon_client, f"/api/public/redemption-sessions/{pending.session_id}/reject", {"approval_secret": "x"}),
    ]
    failures = []
    for client, path, good in targets:
        for field in good:
            for value in ODD_VALUES:
                text = json.dumps({**good, field: value})  # ASCII escapes: a lone surrogate survives
                response = client.post(path, data=text, content_type="application/json")
                if response.status_code not in (200, 201, 400, 404, 409):
                    failures.append((path, field, repr(value)[:20], response.status_code))
                PromoCode.objects.filter(code="NEW").delete()
    assert not failures, failures


# --- edits: PUT/PATCH write only what the body carries, under the row lock, optionally versioned ---


def test_put_without_is_active_never_reactivates_a_deactivated_code(api_client, promo):
    """Regression: the input serializer's default=True re-activated a deactivated code on PUT (and it redeemed)."""
    deactivated = post(api_client, f"promo-codes/{promo.pk}/deactivate").json()
    assert deactivated["is_active"] is False
    body = {"code": "SPRING15", "bonus_type": "percentage", "bonus_value": "20", "version": deactivated["version"]}
    # no is_active, no limits
    response = api_client.put(f"{BASE}/promo-codes/{promo.pk}", body, format="json")
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["is_active"] is False and data["bonus_value"] == "20.00"
    assert (data["max_bonus"], data["total_usage_limit"], data["per_customer_limit"]) == ("50.00", 3, 1)  # kept
    assert_error(
        post(api_client, "promo-codes/redeem", {"code": "SPRING15", "customer": "a", "amount": "5"}),
        409,
        "promo_inactive",
    )


def test_edits_answer_the_version_and_a_stale_one_is_409(api_client, promo):
    read = api_client.get(f"{BASE}/promo-codes/{promo.pk}").json()
    assert read["version"] == 1
    PromoCode.objects.redeem(promo.code, tenant=promo.tenant, customer="a", amount="10")  # does not stale it
    first = api_client.patch(f"{BASE}/promo-codes/{promo.pk}", {"max_bonus": "9", "version": 1}, format="json")
    assert first.status_code == 200 and first.json()["version"] == 2, first.content
    stale = api_client.patch(f"{BASE}/promo-codes/{promo.pk}", {"total_usage_limit": 30, "version": 1}, format="json")
    error = assert_error(stale, 409, "version_conflict")
    assert error["details"] == {"current": 2}
    body = {"code": "SPRING15", "bonus_type": "fixed", "bonus_value": "1", "version": 1}
    assert_error(api_client.put(f"{BASE}/promo-codes/{promo.pk}", body, format="json"), 409, "version_conflict")
    promo.refresh_from_db()
    assert (promo.max_bonus, promo.total_usage_limit, promo.bonus_type, promo.version) == (
        Decimal("9.00"),
        3,
        "percentage",
        2,
    )
    assert_error(
        api_client.patch(f"{BASE}/promo-codes/{promo.pk}", {"version": 0}, format="json"), 400, "invalid_input"
    )


@pytest.mark.parametrize("method", ["put", "patch"])
def test_an_edit_without_the_version_it_was_read_at_is_refused(api_client, promo, method):
    """Unversioned, a body echoed from a read wrote back what changed since: a deactivation, say."""
    read = api_client.get(f"{BASE}/promo-codes/{promo.pk}").json()
    assert post(api_client, f"promo-codes/{promo.pk}/deactivate").json()["is_active"] is False
    echoed = {name: read[name] for name in ("code", "bonus_type", "bonus_value", "is_active")}
    unversioned = getattr(api_client, method)(f"{BASE}/promo-codes/{promo.pk}", echoed, format="json")
    assert assert_error(unversioned, 400, "invalid_input")["fields"] == {"version": ["This field is required."]}
    stale = getattr(api_client, method)(
        f"{BASE}/promo-codes/{promo.pk}", {**echoed, "version": read["version"]}, format="json"
    )
    assert_error(stale, 409, "version_conflict")
    promo.refresh_from_db()
    assert promo.is_active is False


def test_patch_is_active_is_a_deactivation(api_client, promo):
    response = api_client.patch(f"{BASE}/promo-codes/{promo.pk}", {"is_active": False, "version": 1}, format="json")
    assert response.status_code == 200 and response.json()["is_active"] is False
    assert_error(
        post(api_client, "promo-codes/redeem", {"code": "SPRING15", "customer": "a", "amount": "5"}),
        409,
        "promo_inactive",
    )
    again = {"is_active": True, "version": response.json()["version"]}
    assert api_client.patch(f"{BASE}/promo-codes/{promo.pk}", again, format="json").json()["is_active"]
    assert (
        post(api_client, "promo-codes/redeem", {"code": "SPRING15", "customer": "a", "amount": "5"}).status_code == 201
    )


def test_create_ignores_a_version_and_defaults_to_active(api_client, tenant):
    created = post(api_client, "promo-codes", {"code": "NEW", "bonus_type": "fixed", "bonus_value": "1", "version": 9})
    assert created.status_code == 201, created.content
    assert (created.json()["version"], created.json()["is_active"]) == (1, True)


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("redemption-sessions/%00/consume", "session_not_found"),
        ("redemption-sessions/%00/cancel", "session_not_found"),
        ("promo-codes/%00/deactivate", "promo_not_found"),
    ],
)
def test_a_nul_in_the_id_is_not_found_with_or_without_an_idempotency_key(api_client, path, code):
    """Regression: with an Idempotency-Key, the key's record kept the path, NUL and all, which PostgreSQL's
    text refuses: 400 value_out_of_range instead of the 404 a malformed id gets."""
    for headers in ({}, {"HTTP_IDEMPOTENCY_KEY": "k-nul"}):
        assert_error(post(api_client, path, {"amount": "1"}, **headers), 404, code)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_a_wrong_secret_is_not_found_without_waiting_for_the_sessions_lock(anon_client, tenant, verb):
    """Regression: approve and reject locked the session row before judging the secret: anyone with a session's
    public id could queue for its lock, holding up the customer's own answer and the shop's consume, and read 409
    resource_locked (the session exists, and is busy) while it was held. Without the secret no lock is taken now:
    404 at once, whoever holds it."""
    from tests.races import lock_timeout, row_locked

    session = RedemptionSessionFactory(tenant=tenant)
    with row_locked(RedemptionSession.objects.filter(pk=session.pk)), lock_timeout(300):
        answer = public(anon_client, session.session_id, verb, {"approval_secret": "not-the-secret"})
    assert_error(answer, 404, "session_not_found")
    assert RedemptionSession.objects.get(pk=session.pk).status == "pending"
    assert public(anon_client, session.session_id, verb, {"approval_secret": SECRET}).status_code == 200
