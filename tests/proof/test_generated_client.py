"""Every documented flow driven through a client generated from the live OpenAPI schema.

openapi-python-client turns /api/schema/ into a typed Python package (once per module); each test
then drives one flow of docs/api.md against a live server with it: every 2xx body must parse into
the schema's model with the right Python types, every refusal into the ``Error`` model with the
documented code. What the generated client cannot express, or what the server answers outside
its schema, fails here — that is the point: the schema is the contract API consumers build on.

The client authenticates the way generated clients do, with ``Authorization: Bearer <token>``.
"""

import datetime
import re
import sys
import uuid
from datetime import timedelta
from decimal import Decimal

import attrs
import httpx
import pytest
from django.test import Client as DjangoClient
from rest_framework.authtoken.models import Token

from core.guards import database_clock
from tests.bookings.factories import PackageFactory
from tests.proof.generated_client import PACKAGE, generated_client

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = httpx.Timeout(30.0)


@pytest.fixture(scope="module")
def api(tmp_path_factory, django_db_setup, django_db_blocker):
    """The client generated from the schema the server serves (the schema does not depend on data)."""
    with django_db_blocker.unblock():
        response = DjangoClient().get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200, response.content[:500]
    assert "json" in response["Content-Type"], response["Content-Type"]
    with generated_client(response.json(), tmp_path_factory.mktemp("openapi-client")) as client:
        yield client


@pytest.fixture
def public(api, live_server):
    """The generated client without credentials (public endpoints)."""
    with api.Client(base_url=live_server.url, timeout=TIMEOUT, raise_on_unexpected_status=True) as client:
        yield client


@pytest.fixture
def staff(api, live_server, member):
    """The generated client with the token of a member of ``tenant``, sent as ``Bearer``."""
    token = Token.objects.get_or_create(user=member)[0].key
    with api.AuthenticatedClient(
        base_url=live_server.url, token=token, timeout=TIMEOUT, raise_on_unexpected_status=True
    ) as client:
        yield client


def new_key():
    return f"proof-{uuid.uuid4()}"


def describe(response):
    return f"{int(response.status_code)} {response.content[:800].decode(errors='replace')}"


def undocumented_fields(value, where="body"):
    """Fields the server sent that the schema does not declare (they land in ``additional_properties``)."""
    found = []
    if isinstance(value, list):
        for index, item in enumerate(value):
            found += undocumented_fields(item, f"{where}[{index}]")
    elif attrs.has(type(value)):
        declared = [field.name for field in attrs.fields(type(value)) if field.name != "additional_properties"]
        extra = getattr(value, "additional_properties", {})
        if declared and extra:  # a model with no declared fields is a free-form object by design
            found.append(f"{where} ({type(value).__name__}): {sorted(extra)}")
        for name in declared:
            found += undocumented_fields(getattr(value, name), f"{where}.{name}")
    return found


# "Model.field" the server sent although the response schema marks it optional (not "required"):
# the generated attribute is typed "X | Unset", so every consumer must handle a key that never
# goes missing. Collected while a flow runs, asserted at its end (so the flow's own checks run first).
SENT_BUT_OPTIONAL = set()


@pytest.fixture(autouse=True)
def _forget_sent_but_optional():
    SENT_BUT_OPTIONAL.clear()


def optional_fields_sent(value):
    found = set()
    if isinstance(value, list):
        for item in value:
            found |= optional_fields_sent(item)
    elif attrs.has(type(value)):
        unset = sys.modules[f"{PACKAGE}.types"].Unset
        for field in attrs.fields(type(value)):
            if field.name == "additional_properties":
                continue
            sent = getattr(value, field.name)
            if isinstance(field.default, unset) and not isinstance(sent, unset):
                found.add(f"{type(value).__name__}.{field.name}")
            found |= optional_fields_sent(sent)
    return found


def assert_the_schema_requires_every_field_the_server_sent():
    assert not SENT_BUT_OPTIONAL, (
        "response fields always sent but optional in the schema (typed 'X | Unset'): "
        + ", ".join(sorted(SENT_BUT_OPTIONAL))
    )


def ok(response, model, status=200):
    """The typed body of a success: the documented status and the schema's model, nothing undocumented."""
    assert response.status_code == status, f"expected {status}, got {describe(response)}"
    assert isinstance(response.parsed, model), f"{type(response.parsed).__name__} is not {model.__name__}"
    assert not undocumented_fields(response.parsed), undocumented_fields(response.parsed)
    SENT_BUT_OPTIONAL.update(optional_fields_sent(response.parsed))
    return response.parsed


def ok_list(response, model, status=200):
    assert response.status_code == status, f"expected {status}, got {describe(response)}"
    assert isinstance(response.parsed, list), f"{type(response.parsed).__name__} is not a list"
    assert all(isinstance(item, model) for item in response.parsed), response.parsed
    assert not undocumented_fields(response.parsed), undocumented_fields(response.parsed)
    SENT_BUT_OPTIONAL.update(optional_fields_sent(response.parsed))
    return response.parsed


def refused(api, response, status, code):
    """The typed ``Error`` of a refusal, with the documented status and code and a message."""
    assert response.status_code == status, f"expected {status} {code}, got {describe(response)}"
    error = response.parsed
    assert isinstance(error, api.models.Error), f"{type(error).__name__} is not Error: {describe(response)}"
    assert isinstance(error.error, api.models.ErrorError)
    assert error.error.code == code, f"expected {code}, got {describe(response)}"
    assert isinstance(error.error.message, str) and error.error.message
    return error.error


def replayed(response, first):
    """A retry with the same Idempotency-Key: the first answer again, marked as a replay."""
    assert response.headers.get("Idempotent-Replayed") == "true", dict(response.headers)
    assert response.status_code == first.status_code
    assert response.parsed == first.parsed


def exactly_once(api, operation, *args, model, refusal, **kwargs):
    """``operation`` succeeds (its typed ``model`` answer is returned); sent again with the same
    Idempotency-Key, that answer is replayed; with a new key, it is refused 409 ``refusal``."""

    def send(key):
        return operation.sync_detailed(*args, **kwargs, idempotency_key=key)

    key = new_key()
    first = send(key)
    answer = ok(first, model)
    replayed(send(key), first)
    refused(api, send(new_key()), 409, refusal)
    return answer


def is_aware(moment):
    return isinstance(moment, datetime.datetime) and moment.utcoffset() is not None


def pay_on_the_sandbox_page(url):
    """What the customer does on the sandbox provider's hosted page: open it, press Pay (a CSRF-protected form)."""
    with httpx.Client(timeout=TIMEOUT) as browser:
        page = browser.get(url)
        assert page.status_code == 200, page.text[:500]
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert token, "no CSRF token on the sandbox page"
        paid = browser.post(f"{url}/pay", data={"csrfmiddlewaretoken": token[1]}, headers={"Referer": url})
        assert paid.status_code == 200, paid.text[:1000]
        assert 'id="result"' in paid.text, paid.text[:1000]


def test_the_client_is_generated_from_the_served_schema_and_authenticates_with_bearer(api, live_server, staff, tenant):
    """The schema the client was generated from is the one served; the token goes as a Bearer token."""
    with httpx.Client(timeout=TIMEOUT) as http:
        served = http.get(f"{live_server.url}/api/schema/", params={"format": "json"})
    assert served.status_code == 200
    assert served.json() == api.schema

    # Documented auth, as generated clients send it: Authorization: Bearer <token>.
    me = ok(api.operation("GET", "/api/t/{tenant}/").sync_detailed(tenant.slug, client=staff), api.models.Tenant)
    assert (me.slug, me.name, me.role) == ("acme", "Acme", api.models.RoleEnum("staff"))
    schemes = api.schema["components"]["securitySchemes"]
    assert any(s.get("type") == "http" and s.get("scheme", "").lower() == "bearer" for s in schemes.values()), schemes

    with api.AuthenticatedClient(base_url=live_server.url, token="not-a-token", timeout=TIMEOUT) as stranger:
        response = api.operation("GET", "/api/t/{tenant}/").sync_detailed(tenant.slug, client=stranger)
    refused(api, response, 401, "authentication_failed")


def test_a_customer_books_and_pays_a_date(api, live_server, public, staff, tenant, settings):
    """public packages -> availability -> checkout -> sandbox pay -> the booking is confirmed."""
    settings.PUBLIC_BASE_URL = live_server.url  # the checkout URL points at the server the test talks to
    m = api.models
    package = PackageFactory(tenant=tenant, name="Garden wedding", price=Decimal("450.00"), daily_capacity=1)
    PackageFactory(tenant=tenant, name="Retired", is_active=False)
    day = database_clock().date() + timedelta(days=30)

    packages = ok_list(
        api.operation("GET", "/api/public/{tenant}/packages").sync_detailed(tenant.slug, client=public), m.PublicPackage
    )
    assert [(p.id, p.name, p.price, p.currency, p.daily_capacity) for p in packages] == [
        (package.pk, "Garden wedding", "450.00", "USD", 1)
    ]

    availability = api.operation("GET", "/api/public/{tenant}/availability")
    days = ok_list(
        availability.sync_detailed(
            tenant.slug, client=public, package=package.pk, start=day, end=day + timedelta(days=1)
        ),
        m.Availability,
    )
    assert [(d.date, d.remaining) for d in days] == [(day, 1), (day + timedelta(days=1), 1)]
    assert all(type(d.date) is datetime.date and type(d.remaining) is int for d in days)

    checkout = api.operation("POST", "/api/public/{tenant}/checkouts")
    body = m.CheckoutCreateInputRequest(
        package=package.pk, date=day, customer=m.CustomerRequest(name="Maya", email="maya@example.com")
    )
    key = new_key()
    first = checkout.sync_detailed(tenant.slug, client=public, body=body, idempotency_key=key)
    created = ok(first, m.CheckoutCreated, 201)
    assert type(created.booking.id) is int
    assert created.booking.status == m.BookingStatusEnum.HELD
    assert is_aware(created.booking.hold_expires_at)
    assert created.checkout.id.startswith("cs_sandbox_")
    assert created.checkout.url == f"{live_server.url}/sandbox/checkout/{created.checkout.id}"
    replayed(checkout.sync_detailed(tenant.slug, client=public, body=body, idempotency_key=key), first)

    held = ok_list(
        availability.sync_detailed(tenant.slug, client=public, package=package.pk, start=day, end=day), m.Availability
    )
    assert [(d.date, d.remaining) for d in held] == [(day, 0)]

    pay_on_the_sandbox_page(created.checkout.url)

    booking = ok(
        api.operation("GET", "/api/t/{tenant}/bookings/{id}").sync_detailed(
            tenant.slug, created.booking.id, client=staff
        ),
        m.Booking,
    )
    assert booking.id == created.booking.id
    assert booking.status == m.BookingStatusEnum.CONFIRMED
    assert (booking.package, booking.date, booking.customer_name, booking.customer_email) == (
        package.pk,
        day,
        "Maya",
        "maya@example.com",
    )
    assert (booking.amount, booking.currency) == ("450.00", "USD")
    assert Decimal(booking.amount) == package.price
    assert is_aware(booking.confirmed_at) and is_aware(booking.created_at)
    assert booking.cancelled_at is None and booking.refunded_at is None
    assert isinstance(booking.checkout, m.BookingCheckout)
    assert (booking.checkout.id, booking.checkout.provider) == (created.checkout.id, "sandbox")
    assert booking.checkout.state == m.StateEnum.COMPLETED

    # The date is taken: a second customer is refused at once, before any payment page exists.
    second = m.CheckoutCreateInputRequest(
        package=package.pk, date=day, customer=m.CustomerRequest(name="Omar", email="omar@example.com")
    )
    refused(
        api,
        checkout.sync_detailed(tenant.slug, client=public, body=second, idempotency_key=new_key()),
        409,
        "date_unavailable",
    )

    assert_the_schema_requires_every_field_the_server_sent()


def test_an_assistant_proposal_is_confirmed_once(api, staff, tenant):
    """proposal create -> confirm (booking + checkout) -> the same confirm replayed -> confirm again refused."""
    m = api.models
    package = PackageFactory(tenant=tenant, name="Boat trip", price=Decimal("120.00"))
    day = database_clock().date() + timedelta(days=40)

    create = api.operation("POST", "/api/t/{tenant}/proposals")
    body = m.ProposalCreateInputRequest(
        session_id="chat-42",
        package=package.pk,
        date=day,
        customer=m.CustomerRequest(name="Ann", email="ann@example.com"),
        expires_in=900,
    )
    proposal = ok(
        create.sync_detailed(tenant.slug, client=staff, body=body, idempotency_key=new_key()), m.Proposal, 201
    )
    assert type(proposal.id) is int
    assert (proposal.session_id, proposal.package, proposal.date) == ("chat-42", package.pk, day)
    assert (proposal.customer.name, proposal.customer.email) == ("Ann", "ann@example.com")
    assert proposal.status == m.ProposalStatusEnum.PENDING
    assert proposal.booking is None
    assert is_aware(proposal.expires_at) and proposal.expires_at > proposal.created_at

    confirm = api.operation("POST", "/api/t/{tenant}/proposals/{id}/confirm")
    decision = m.ProposalDecisionInputRequest(session_id="chat-42")
    confirmed = exactly_once(
        api,
        confirm,
        tenant.slug,
        proposal.id,
        client=staff,
        body=decision,
        model=m.ProposalConfirmed,
        refusal="proposal_already_processed",
    )
    assert confirmed.proposal.id == proposal.id
    assert confirmed.proposal.status == m.ProposalStatusEnum.EXECUTED
    assert confirmed.proposal.booking == confirmed.booking.id
    assert is_aware(confirmed.proposal.confirmed_at) and is_aware(confirmed.proposal.executed_at)
    assert type(confirmed.booking.id) is int and confirmed.booking.status == m.BookingStatusEnum.HELD
    assert is_aware(confirmed.booking.hold_expires_at)
    assert confirmed.checkout.id.startswith("cs_sandbox_") and confirmed.checkout.url
    other_chat = m.ProposalDecisionInputRequest(session_id="chat-other")
    refused(
        api,
        confirm.sync_detailed(tenant.slug, proposal.id, client=staff, body=other_chat, idempotency_key=new_key()),
        404,
        "proposal_not_found",
    )

    read = ok(
        api.operation("GET", "/api/t/{tenant}/proposals/{id}").sync_detailed(tenant.slug, proposal.id, client=staff),
        m.Proposal,
    )
    assert (read.status, read.booking) == (m.ProposalStatusEnum.EXECUTED, confirmed.booking.id)
    booking = ok(
        api.operation("GET", "/api/t/{tenant}/bookings/{id}").sync_detailed(
            tenant.slug, confirmed.booking.id, client=staff
        ),
        m.Booking,
    )
    assert (booking.status, booking.date, booking.customer_name) == (m.BookingStatusEnum.HELD, day, "Ann")

    assert_the_schema_requires_every_field_the_server_sent()


def test_a_promo_code_is_validated_redeemed_within_its_limit_and_voided(api, staff, tenant):
    """promo create -> validate -> redeem -> redeem past the limit refused -> void -> void again refused."""
    m = api.models
    create = api.operation("POST", "/api/t/{tenant}/promo-codes")
    definition = m.PromoCodeInputRequest(
        code="SPRING15", bonus_type=m.BonusTypeEnum.PERCENTAGE, bonus_value="15", max_bonus="20.00", total_usage_limit=1
    )
    code = ok(
        create.sync_detailed(tenant.slug, client=staff, body=definition, idempotency_key=new_key()), m.PromoCode, 201
    )
    assert type(code.id) is int
    assert (code.code, code.bonus_type, code.bonus_value, code.max_bonus) == (
        "SPRING15",
        m.BonusTypeEnum.PERCENTAGE,
        "15.00",
        "20.00",
    )
    assert (code.total_usage_limit, code.times_used, code.is_active, code.version) == (1, 0, True, 1)
    assert is_aware(code.created_at) and code.starts_at is None and code.ends_at is None

    validate = api.operation("POST", "/api/t/{tenant}/promo-codes/validate")
    preview = ok(
        validate.sync_detailed(
            tenant.slug,
            client=staff,
            body=m.PromoCodeCheckInputRequest(code="spring15", customer="alice", amount="33.33"),
        ),
        m.PromoCodeValidation,
    )
    assert (preview.valid, preview.bonus_amount, preview.code, preview.reason) == (True, "5.00", "SPRING15", None)

    redeem = api.operation("POST", "/api/t/{tenant}/promo-codes/redeem")
    order = m.PromoCodeRedeemInputRequest(code="spring15", customer="alice", amount="33.33", reference="order-1001")
    key = new_key()
    first = redeem.sync_detailed(tenant.slug, client=staff, body=order, idempotency_key=key)
    usage = ok(first, m.PromoUsage, 201)
    assert type(usage.usage_id) is int
    assert (usage.code, usage.customer, usage.base_amount, usage.bonus_amount, usage.reference) == (
        "SPRING15",
        "alice",
        "33.33",
        "5.00",
        "order-1001",
    )
    assert is_aware(usage.created_at) and usage.voided_at is None
    replayed(redeem.sync_detailed(tenant.slug, client=staff, body=order, idempotency_key=key), first)

    # The one use is taken: the preview says why, the redeem is refused with the same code.
    bob = m.PromoCodeCheckInputRequest(code="SPRING15", customer="bob", amount="50.00")
    exhausted = ok(validate.sync_detailed(tenant.slug, client=staff, body=bob), m.PromoCodeValidation)
    assert (exhausted.valid, exhausted.bonus_amount) == (False, None)
    assert isinstance(exhausted.reason, m.PromoRefusal) and exhausted.reason.code == "promo_exhausted"
    bob_order = m.PromoCodeRedeemInputRequest(code="SPRING15", customer="bob", amount="50.00")
    refused(
        api,
        redeem.sync_detailed(tenant.slug, client=staff, body=bob_order, idempotency_key=new_key()),
        409,
        "promo_exhausted",
    )

    void = api.operation("POST", "/api/t/{tenant}/promo-usages/{id}/void")
    voided = ok(void.sync_detailed(tenant.slug, usage.usage_id, client=staff, idempotency_key=new_key()), m.PromoUsage)
    assert voided.usage_id == usage.usage_id and is_aware(voided.voided_at)
    refused(
        api,
        void.sync_detailed(tenant.slug, usage.usage_id, client=staff, idempotency_key=new_key()),
        409,
        "usage_already_voided",
    )

    after = ok(
        api.operation("GET", "/api/t/{tenant}/promo-codes/{id}").sync_detailed(tenant.slug, code.id, client=staff),
        m.PromoCode,
    )
    assert after.times_used == 0
    # The use given back can be taken again.
    ok(redeem.sync_detailed(tenant.slug, client=staff, body=bob_order, idempotency_key=new_key()), m.PromoUsage, 201)

    assert_the_schema_requires_every_field_the_server_sent()


def test_a_redemption_session_is_approved_by_the_customer_and_consumed_once(api, public, staff, tenant):
    """session create -> early consume refused -> approve (public, secret) -> consume -> consume again refused."""
    m = api.models
    create = api.operation("POST", "/api/t/{tenant}/redemption-sessions")
    body = m.RedemptionSessionCreateInputRequest(customer="alice", max_amount="80.00", expires_in=600)
    session = ok(
        create.sync_detailed(tenant.slug, client=staff, body=body, idempotency_key=new_key()),
        m.RedemptionSessionCreated,
        201,
    )
    assert isinstance(session.session_id, uuid.UUID)
    assert isinstance(session.approval_secret, str) and session.approval_secret
    assert (session.customer, session.max_amount, session.status, session.used_amount) == (
        "alice",
        "80.00",
        m.RedemptionSessionStatusEnum.PENDING,
        None,
    )
    assert is_aware(session.expires_at) and session.expires_at > session.created_at

    consume = api.operation("POST", "/api/t/{tenant}/redemption-sessions/{session_id}/consume")
    amount = m.RedemptionSessionConsumeInputRequest(amount="80.00")
    refused(
        api,
        consume.sync_detailed(tenant.slug, session.session_id, client=staff, body=amount, idempotency_key=new_key()),
        409,
        "session_not_approved",
    )

    approve = api.operation("POST", "/api/public/redemption-sessions/{session_id}/approve")
    wrong = m.RedemptionSessionAnswerInputRequest(approval_secret="not-the-secret")
    refused(
        api,
        approve.sync_detailed(session.session_id, client=public, body=wrong, idempotency_key=new_key()),
        404,
        "session_not_found",
    )
    answer = m.RedemptionSessionAnswerInputRequest(approval_secret=session.approval_secret)
    approved = ok(
        approve.sync_detailed(session.session_id, client=public, body=answer, idempotency_key=new_key()),
        m.RedemptionSession,
    )
    assert approved.session_id == session.session_id
    assert approved.status == m.RedemptionSessionStatusEnum.APPROVED and is_aware(approved.approved_at)

    used = exactly_once(
        api,
        consume,
        tenant.slug,
        session.session_id,
        client=staff,
        body=amount,
        model=m.RedemptionSessionConsumed,
        refusal="session_already_used",
    )
    assert (used.session_id, used.status, used.used_amount) == (
        session.session_id,
        m.RedemptionSessionStatusEnum.USED,
        "80.00",
    )

    read = ok(
        api.operation("GET", "/api/t/{tenant}/redemption-sessions/{session_id}").sync_detailed(
            tenant.slug, session.session_id, client=staff
        ),
        m.RedemptionSession,
    )
    assert (read.status, read.used_amount) == (m.RedemptionSessionStatusEnum.USED, "80.00")
    assert is_aware(read.used_at) and read.used_at < read.expires_at

    assert_the_schema_requires_every_field_the_server_sent()


def test_a_profile_update_is_undone_once(api, staff, tenant):
    """profile create -> update (PATCH with version) -> stale PATCH refused -> history -> undo -> undo again refused."""
    m = api.models
    create = api.operation("POST", "/api/t/{tenant}/profiles")
    body = m.ProfileCreateInputRequest(
        first_name="Sara", last_name="Haddad", sex=m.SexEnum.FEMALE, birth_date=datetime.date(1990, 5, 17)
    )
    profile = ok(create.sync_detailed(tenant.slug, client=staff, body=body, idempotency_key=new_key()), m.Profile, 201)
    assert type(profile.id) is int
    assert (profile.first_name, profile.last_name, profile.sex, profile.birth_date) == (
        "Sara",
        "Haddad",
        m.SexEnum.FEMALE,
        datetime.date(1990, 5, 17),
    )
    assert (profile.death_date, profile.father, profile.mother, profile.deleted_at, profile.version) == (
        None,
        None,
        None,
        None,
        1,
    )
    assert is_aware(profile.created_at)

    patch = api.operation("PATCH", "/api/t/{tenant}/profiles/{id}")
    renamed = ok(
        patch.sync_detailed(
            tenant.slug,
            profile.id,
            client=staff,
            body=m.PatchedProfileUpdateInputRequest(version=1, last_name="Khalil"),
        ),
        m.Profile,
    )
    assert (renamed.last_name, renamed.version, renamed.first_name) == ("Khalil", 2, "Sara")
    stale = patch.sync_detailed(
        tenant.slug, profile.id, client=staff, body=m.PatchedProfileUpdateInputRequest(version=1, first_name="Sarah")
    )
    conflict = refused(api, stale, 409, "version_conflict")
    assert isinstance(conflict.details, m.ErrorErrorDetails) and conflict.details.additional_properties == {
        "current": 2
    }

    history = ok_list(
        api.operation("GET", "/api/t/{tenant}/profiles/{id}/history").sync_detailed(
            tenant.slug, profile.id, client=staff
        ),
        m.AuditEntry,
    )
    assert [(entry.action, entry.profile) for entry in history] == [
        (m.ActionEnum.CREATE, profile.id),
        (m.ActionEnum.UPDATE, profile.id),
    ]
    update = history[1]
    assert type(update.id) is int and is_aware(update.created_at)
    assert (update.old_data, update.new_data) == ({"last_name": "Haddad"}, {"last_name": "Khalil"})
    assert update.actor == "member"
    assert update.undone_at is None and update.undone_by is None and update.undo_entry is None

    undo = api.operation("POST", "/api/t/{tenant}/audit-log/{id}/undo")
    reason = m.UndoInputRequest(reason="wrong family name")
    result = exactly_once(
        api, undo, tenant.slug, update.id, client=staff, body=reason, model=m.UndoResult, refusal="already_undone"
    )
    assert result.undone.id == update.id and is_aware(result.undone.undone_at)
    assert (result.undone.undone_by, result.undone.undo_reason, result.undone.undo_entry) == (
        "member",
        "wrong family name",
        result.undo_entry.id,
    )
    assert (result.undo_entry.action, result.undo_entry.profile) == (m.ActionEnum.UNDO, profile.id)
    assert (result.profile.id, result.profile.last_name, result.profile.version) == (profile.id, "Haddad", 3)

    entry = ok(
        api.operation("GET", "/api/t/{tenant}/audit-log/{id}").sync_detailed(tenant.slug, update.id, client=staff),
        m.AuditEntry,
    )
    assert (entry.undo_entry, entry.undo_reason) == (result.undo_entry.id, "wrong family name")
    read = ok(
        api.operation("GET", "/api/t/{tenant}/profiles/{id}").sync_detailed(tenant.slug, profile.id, client=staff),
        m.Profile,
    )
    assert (read.last_name, read.version) == ("Haddad", 3)

    assert_the_schema_requires_every_field_the_server_sent()
