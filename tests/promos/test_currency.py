"""Promo codes, usages and sessions in their own currency: each currency's minor unit, end to end."""

from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from core.money import TooManyDecimals, UnknownCurrency
from promos import exceptions as errors
from promos.models import PromoCode, PromoUsage, RedemptionSession
from tests.promos.factories import PromoCodeFactory, RedemptionSessionFactory
from tests.promos.helpers import assert_invariant, statements
from tests.refusals import assert_error

pytestmark = pytest.mark.django_db

BASE = "/api/t/acme"


def post(client, path, body=None, **headers):
    return client.post(f"{BASE}/{path}", body or {}, format="json", **headers)


def jpy_percent(tenant, **fields):
    return PromoCode.objects.create_code(
        tenant=tenant, code="YEN15", currency="JPY", bonus_type="percentage", bonus_value=Decimal("15"), **fields
    )


def nothing_written(promo, session=None):
    promo.refresh_from_db()
    assert (promo.times_used, PromoUsage.objects.filter(promo=promo).count()) == (0, 0)
    if session is not None:
        session.refresh_from_db()
        assert (session.status, session.used_at, session.used_amount) == ("approved", None, None)


# --- the manager: places and rounding per currency --------------------------------------------------


def test_a_jpy_percentage_bonus_is_whole_yen_rounded_half_up(tenant):
    promo = jpy_percent(tenant)
    usage = PromoCode.objects.redeem("YEN15", tenant=tenant, customer="a", amount="333")  # 15 % = 49.95 yen
    usage.refresh_from_db()
    assert (usage.bonus_amount, usage.base_amount, usage.currency) == (Decimal("50"), Decimal("333"), "JPY")
    assert PromoCode.objects.validate("YEN15", tenant=tenant, customer="b", amount="329")[1] == Decimal("49")
    assert assert_invariant(promo) == 1


def test_kwd_takes_three_places_and_refuses_a_fourth(tenant):
    PromoCode.objects.create_code(
        tenant=tenant, code="KW", currency="KWD", bonus_type="fixed", bonus_value=Decimal("1.250")
    )
    usage = PromoCode.objects.redeem("KW", tenant=tenant, customer="a", amount="10.125")
    assert (usage.base_amount, usage.bonus_amount) == (Decimal("10.125"), Decimal("1.250"))
    with pytest.raises(errors.InvalidAmount):  # four places: no currency here has them
        PromoCode.objects.redeem("KW", tenant=tenant, customer="b", amount="10.1255")
    with pytest.raises(TooManyDecimals):
        PromoCode.objects.create_code(
            tenant=tenant, code="KW2", currency="KWD", bonus_type="fixed", bonus_value=Decimal("1.2505")
        )
    session, _secret = RedemptionSession.objects.create_session(
        tenant=tenant, customer="a", max_amount="2.345", currency="KWD"
    )
    assert (session.max_amount, session.currency) == (Decimal("2.345"), "KWD")


def test_jpy_fractions_are_refused_as_amount_precision_before_anything_is_written(tenant):
    promo = jpy_percent(tenant)
    for call in (
        lambda: PromoCode.objects.redeem("YEN15", tenant=tenant, customer="a", amount="1.5"),
        lambda: PromoCode.objects.validate("YEN15", tenant=tenant, customer="a", amount="1.5"),
        lambda: RedemptionSession.objects.create_session(tenant=tenant, customer="a", max_amount="1.5", currency="JPY"),
        lambda: PromoCode.objects.create_code(
            tenant=tenant, code="Y2", currency="JPY", bonus_type="fixed", bonus_value=Decimal("0.5")
        ),
    ):
        with pytest.raises(TooManyDecimals) as refused:
            call()
        assert refused.value.code == "amount_precision" and refused.value.params == {"currency": "JPY", "places": 0}
    nothing_written(promo)
    assert RedemptionSession.objects.count() == 0


def test_a_percentage_keeps_two_places_whatever_the_currency(tenant):
    with pytest.raises(errors.PromoInvalid):  # the database's CHECK promo_percentage_places
        PromoCode.objects.create_code(tenant=tenant, code="P", bonus_type="percentage", bonus_value=Decimal("12.345"))
    promo = PromoCode.objects.create_code(
        tenant=tenant, code="P", currency="KWD", bonus_type="percentage", bonus_value=Decimal("12.5")
    )
    assert promo.bonus_value == Decimal("12.5")


def test_an_unknown_currency_is_refused(tenant):
    for code in ("ZZZ", "usd", "XXX", "US", "DEM", "UYW"):  # DEM: withdrawn; UYW: a fund's unit
        with pytest.raises(UnknownCurrency):
            PromoCode.objects.create_code(
                tenant=tenant, code="U", currency=code, bonus_type="fixed", bonus_value=Decimal("1")
            )
        with pytest.raises(UnknownCurrency):
            RedemptionSession.objects.create_session(tenant=tenant, customer="a", max_amount="1", currency=code)
    assert PromoCode.objects.count() == RedemptionSession.objects.count() == 0


def test_a_consume_without_a_currency_is_judged_in_the_sessions_in_one_statement(tenant):
    jpy = RedemptionSessionFactory(tenant=tenant, status="approved", currency="JPY", max_amount=Decimal("1000"))
    with CaptureQueriesContext(connection) as queries:
        with pytest.raises(TooManyDecimals):
            RedemptionSession.objects.consume(jpy.session_id, tenant=tenant, amount="1.5")
    assert len(statements(queries)) == 1
    used = RedemptionSession.objects.consume(jpy.session_id, tenant=tenant, amount="150")
    assert (used.status, used.used_amount, used.currency) == ("used", Decimal("150"), "JPY")
    kwd = RedemptionSessionFactory(tenant=tenant, status="approved", currency="KWD", max_amount=Decimal("10"))
    assert RedemptionSession.objects.consume(kwd.session_id, tenant=tenant, amount="1.255").used_amount == Decimal(
        "1.255"
    )


def test_a_named_currency_other_than_the_rows_is_refused_and_nothing_is_written(tenant):
    promo = jpy_percent(tenant)
    session = RedemptionSessionFactory(tenant=tenant, status="approved", currency="JPY", max_amount=Decimal("1000"))
    with pytest.raises(errors.CurrencyMismatch) as refused:
        PromoCode.objects.redeem("YEN15", tenant=tenant, customer="a", amount="100", currency="USD")
    assert refused.value.params == {"currency": "USD", "expected": "JPY"}
    with pytest.raises(errors.CurrencyMismatch):
        PromoCode.objects.validate("YEN15", tenant=tenant, customer="a", amount="100", currency="USD")
    with CaptureQueriesContext(connection) as queries:
        with pytest.raises(errors.CurrencyMismatch):
            RedemptionSession.objects.consume(session.session_id, tenant=tenant, amount="100", currency="USD")
    assert len(statements(queries)) == 1  # judged in consume's one statement
    nothing_written(promo, session)
    usage = PromoCode.objects.redeem("YEN15", tenant=tenant, customer="a", amount="100", currency="JPY")
    assert usage.currency == "JPY"
    assert RedemptionSession.objects.consume(session.session_id, tenant=tenant, amount="100", currency="JPY")


def test_a_redeem_still_sends_the_same_statements_in_another_currency(tenant):
    jpy_percent(tenant)
    with CaptureQueriesContext(connection) as won:
        PromoCode.objects.redeem("YEN15", tenant=tenant, customer="a", amount="333", currency="JPY")
    PromoCodeFactory(tenant=tenant, code="USD5")
    with CaptureQueriesContext(connection) as usd:
        PromoCode.objects.redeem("USD5", tenant=tenant, customer="a", amount="10")
    assert len(statements(won)) == len(statements(usd))


# --- a used code's currency is frozen -----------------------------------------------------------------


def test_the_currency_changes_before_the_first_use_and_never_after(tenant):
    promo = PromoCodeFactory(tenant=tenant, code="C", bonus_value=Decimal("10"))
    changed = PromoCode.objects.update_code(promo.pk, tenant=tenant, version=promo.version, currency="JPY")
    assert (changed.currency, changed.version) == ("JPY", promo.version + 1)
    with pytest.raises(TooManyDecimals):  # the kept bonus is judged in the new currency
        PromoCode.objects.update_code(promo.pk, tenant=tenant, bonus_value=Decimal("10.50"))
    usage = PromoCode.objects.redeem("C", tenant=tenant, customer="a", amount="100")
    assert usage.currency == "JPY"
    with pytest.raises(errors.PromoCurrencyFrozen):
        PromoCode.objects.update_code(promo.pk, tenant=tenant, currency="USD")
    PromoUsage.objects.void(usage.pk, tenant=tenant)  # times_used back to 0, the usage stays
    with pytest.raises(errors.PromoCurrencyFrozen):
        PromoCode.objects.update_code(promo.pk, tenant=tenant, currency="USD")
    promo.refresh_from_db()
    assert promo.currency == "JPY"
    # the same currency again is no change
    assert PromoCode.objects.update_code(promo.pk, tenant=tenant, currency="JPY").currency == "JPY"


def test_the_database_refuses_a_currency_change_of_a_used_code_from_any_writer(tenant):
    promo = PromoCodeFactory(tenant=tenant, code="C")
    PromoCode.objects.redeem("C", tenant=tenant, customer="a", amount="100")
    with pytest.raises(IntegrityError) as refused, transaction.atomic():
        PromoCode.objects.filter(pk=promo.pk).update(currency="EUR")
    assert refused.value.__cause__.diag.constraint_name == "promo_currency_frozen"
    unused = PromoCodeFactory(tenant=tenant, code="D")
    PromoCode.objects.filter(pk=unused.pk).update(currency="EUR")  # never used: free to change


def test_the_database_checks_and_freezes_a_usages_currency(tenant):
    promo = PromoCodeFactory(tenant=tenant, code="C")
    usage = PromoCode.objects.redeem("C", tenant=tenant, customer="a", amount="100")
    with pytest.raises(IntegrityError) as refused, transaction.atomic():
        PromoUsage.objects.filter(pk=usage.pk).update(currency="EUR")
    assert refused.value.__cause__.diag.constraint_name == "promo_usage_transition"
    with pytest.raises(IntegrityError) as refused, transaction.atomic():
        PromoUsage.objects.create(
            tenant=tenant, promo=promo, customer="b", base_amount=Decimal("5"), bonus_amount=0, currency="EUR"
        )
    assert refused.value.__cause__.diag.constraint_name == "promo_usage_transition"
    with pytest.raises(IntegrityError), transaction.atomic():
        PromoCode.objects.filter(pk=promo.pk).update(currency="usd")  # CHECK ^[A-Z]{3}$ (and frozen)


# --- the API ------------------------------------------------------------------------------------------


def test_a_code_is_created_read_and_answered_in_its_currency(api_client, tenant):
    created = post(
        api_client,
        "promo-codes",
        {"code": "YEN", "currency": "JPY", "bonus_type": "fixed", "bonus_value": "500", "max_bonus": "800"},
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["currency"], body["bonus_value"], body["max_bonus"]) == ("JPY", "500", "800")
    assert api_client.get(f"{BASE}/promo-codes/{body['id']}").json()["bonus_value"] == "500"
    percent = post(
        api_client, "promo-codes", {"code": "KW", "currency": "KWD", "bonus_type": "percentage", "bonus_value": "15"}
    )
    assert percent.json()["bonus_value"] == "15.00"  # a rate, not money
    redeemed = post(api_client, "promo-codes/redeem", {"code": "KW", "customer": "a", "amount": "33.333"})
    assert redeemed.status_code == 201, redeemed.content
    assert redeemed.json()["base_amount"] == "33.333" and redeemed.json()["bonus_amount"] == "5.000"
    assert redeemed.json()["currency"] == "KWD"
    usd = post(api_client, "promo-codes", {"code": "USD", "bonus_type": "fixed", "bonus_value": "12.5"})
    assert (usd.json()["currency"], usd.json()["bonus_value"]) == ("USD", "12.50")  # the default, as before


def test_a_jpy_redeem_and_preview_answer_whole_yen(api_client, tenant):
    jpy_percent(tenant)
    preview = post(api_client, "promo-codes/validate", {"code": "YEN15", "customer": "a", "amount": "333"})
    assert preview.json() == {"valid": True, "bonus_amount": "50", "currency": "JPY", "code": "YEN15", "reason": None}
    redeemed = post(api_client, "promo-codes/redeem", {"code": "YEN15", "customer": "a", "amount": "333"})
    assert (redeemed.json()["base_amount"], redeemed.json()["bonus_amount"]) == ("333", "50")


def test_unknown_currency_and_jpy_fractions_are_400(api_client, tenant):
    promo = jpy_percent(tenant)
    bad = {"code": "X", "currency": "ZZZ", "bonus_type": "fixed", "bonus_value": "5"}
    assert_error(post(api_client, "promo-codes", bad), 400, "unknown_currency")
    assert_error(
        post(api_client, "redemption-sessions", {"customer": "a", "max_amount": "5", "currency": "ZZZ"}),
        400,
        "unknown_currency",
    )
    for path in ("promo-codes/redeem", "promo-codes/validate"):
        error = assert_error(
            post(api_client, path, {"code": "YEN15", "customer": "a", "amount": "1.5"}), 400, "amount_precision"
        )
        assert error["details"] == {"currency": "JPY", "places": 0}
    created = post(api_client, "redemption-sessions", {"customer": "a", "max_amount": "1.5", "currency": "JPY"})
    assert_error(created, 400, "amount_precision")
    session = RedemptionSessionFactory(tenant=tenant, status="approved", currency="JPY", max_amount=Decimal("1000"))
    consumed = post(api_client, f"redemption-sessions/{session.session_id}/consume", {"amount": "1.5"})
    assert_error(consumed, 400, "amount_precision")
    assert_error(
        post(api_client, "promo-codes/redeem", {"code": "YEN15", "customer": "a", "amount": "12.345"}),
        400,
        "amount_precision",
    )
    nothing_written(promo, session)


def test_currency_mismatch_over_the_api_writes_nothing(api_client, tenant):
    promo = jpy_percent(tenant)
    session = RedemptionSessionFactory(tenant=tenant, status="approved", currency="JPY", max_amount=Decimal("1000"))
    body = {"code": "YEN15", "customer": "a", "amount": "100", "currency": "USD"}
    for path in ("promo-codes/redeem", "promo-codes/validate"):
        error = assert_error(post(api_client, path, body), 400, "currency_mismatch")
        assert error["details"] == {"currency": "USD", "expected": "JPY"}
    consumed = post(
        api_client, f"redemption-sessions/{session.session_id}/consume", {"amount": "100", "currency": "EUR"}
    )
    assert_error(consumed, 400, "currency_mismatch")
    nothing_written(promo, session)
    consumed = post(
        api_client, f"redemption-sessions/{session.session_id}/consume", {"amount": "100", "currency": "JPY"}
    )
    assert consumed.json()["used_amount"] == "100" and consumed.json()["currency"] == "JPY"


def test_a_session_is_created_and_read_in_its_currency(api_client, tenant):
    created = post(api_client, "redemption-sessions", {"customer": "a", "max_amount": "1500", "currency": "JPY"})
    assert created.status_code == 201, created.content
    assert (created.json()["currency"], created.json()["max_amount"]) == ("JPY", "1500")
    read = api_client.get(f"{BASE}/redemption-sessions/{created.json()['session_id']}").json()
    assert (read["currency"], read["max_amount"], read["used_amount"]) == ("JPY", "1500", None)
    usd = post(api_client, "redemption-sessions", {"customer": "a", "max_amount": "80"})
    assert (usd.json()["currency"], usd.json()["max_amount"]) == ("USD", "80.00")


def test_patching_the_currency_of_a_used_code_is_409(api_client, tenant):
    promo = PromoCodeFactory(tenant=tenant, code="C")
    PromoCode.objects.redeem("C", tenant=tenant, customer="a", amount="10")
    promo.refresh_from_db()
    patched = api_client.patch(
        f"{BASE}/promo-codes/{promo.pk}", {"currency": "EUR", "version": promo.version}, format="json"
    )
    assert_error(patched, 409, "promo_currency_frozen")
    promo.refresh_from_db()
    assert promo.currency == "USD"


# --- the admin ----------------------------------------------------------------------------------------


def test_the_admin_shows_and_edits_the_currency_with_its_places(admin_client, tenant):
    promo = PromoCode.objects.create_code(
        tenant=tenant, code="YEN", currency="JPY", bonus_type="fixed", bonus_value=Decimal("500")
    )
    url = reverse("admin:promos_promocode_change", args=[promo.pk])
    page = admin_client.get(url)
    form = page.context["adminform"].form
    assert (form["currency"].value(), form["bonus_value"].value()) == ("JPY", "500")
    listing = admin_client.get(reverse("admin:promos_promocode_changelist")).content.decode()
    assert "500 JPY" in listing
    version = form["expected_version"].value()
    edit = {"code": "YEN", "bonus_type": "fixed", "bonus_value": "7", "currency": "KWD", "expected_version": version}
    assert admin_client.post(url, edit).status_code == 302
    promo.refresh_from_db()
    assert (promo.currency, promo.bonus_value) == ("KWD", Decimal("7"))
    PromoCode.objects.redeem("YEN", tenant=tenant, customer="a", amount="1.250")
    refused = admin_client.post(url, {**edit, "currency": "JPY", "expected_version": promo.version})
    assert refused.status_code == 200
    assert "currency" in refused.context["adminform"].form.errors
    usages = admin_client.get(reverse("admin:promos_promousage_changelist")).content.decode()
    assert "1.250 KWD" in usages


def test_the_session_admin_shows_amounts_in_their_currency(admin_client, tenant):
    session = RedemptionSessionFactory(tenant=tenant, currency="JPY", max_amount=Decimal("1500"))
    listing = admin_client.get(reverse("admin:promos_redemptionsession_changelist")).content.decode()
    assert "1500 JPY" in listing
    detail = admin_client.get(reverse("admin:promos_redemptionsession_change", args=[session.pk])).content.decode()
    assert "1500 JPY" in detail and "1500.000" not in detail


def test_the_usage_admin_shows_amounts_in_their_currency(admin_client, tenant):
    PromoCode.objects.create_code(tenant=tenant, code="YEN", currency="JPY", bonus_type="fixed", bonus_value=5)
    usage = PromoCode.objects.redeem("YEN", tenant=tenant, customer="a", amount="1500")
    detail = admin_client.get(reverse("admin:promos_promousage_change", args=[usage.pk])).content.decode()
    assert "1500 JPY" in detail and "1500.000" not in detail
