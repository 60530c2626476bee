from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from core.guards import database_clock
from promos import managers
from promos.admin import shown_state
from promos.exceptions import InvalidAmount, PromoInactive
from promos.models import PromoCode, PromoUsage, RedemptionSession
from tests.core.test_admin_scope import confirm_delete
from tests.factories import TenantFactory
from tests.promos.factories import PromoCodeFactory, RedemptionSessionFactory
from tests.promos.helpers import assert_invariant
from tests.races import lock_timeout, row_locked, statement_timeout

pytestmark = pytest.mark.django_db


def action(admin_client, model, name, objects):
    """Confirm ``name`` on ``objects``, each as its page would show it now (a code's state)."""
    url = reverse(f"admin:promos_{model}_changelist")
    # a code's activation carries the version the page showed, its deactivation the state
    seen = (lambda code: code.version) if name == "activate_selected" else shown_state
    shown = {f"seen_{o.pk}": seen(type(o).objects.get(pk=o.pk)) for o in objects if isinstance(o, PromoCode)}
    return admin_client.post(
        url, {"action": name, "apply": "1", "_selected_action": [str(o.pk) for o in objects], **shown}, follow=True
    )


def texts(response):
    return [str(m) for m in get_messages(response.wsgi_request)]


def opened_version(admin_client, url):
    """Open the change form as the operator would; return the hidden expected_version it carries."""
    page = admin_client.get(url)
    assert page.status_code == 200
    assert 'name="expected_version"' in page.content.decode()
    return page.context["adminform"].form["expected_version"].value()


def test_code_list_shows_live_usage_and_filters(admin_client, tenant):
    now = database_clock()
    live = PromoCodeFactory(tenant=tenant, code="LIVE", total_usage_limit=4)
    PromoCode.objects.redeem("LIVE", tenant=tenant, customer="a", amount="10")
    exhausted = PromoCodeFactory(tenant=tenant, code="FULL", total_usage_limit=1)
    PromoCode.objects.redeem("FULL", tenant=tenant, customer="a", amount="10")
    expired = PromoCodeFactory(tenant=tenant, code="OLD", starts_at=now - timedelta(days=2), ends_at=now)
    url = reverse("admin:promos_promocode_changelist")
    page = admin_client.get(url)
    assert page.status_code == 200
    assert "1 / 4" in page.content.decode()
    for state, expected in [("live", live), ("exhausted", exhausted), ("expired", expired)]:
        listed = admin_client.get(url, {"state": state}).context["cl"].result_list
        assert list(listed) == [expected], state
    assert list(admin_client.get(url, {"q": "ful"}).context["cl"].result_list) == [exhausted]
    assert admin_client.get(url, {"is_active__exact": "0"}).status_code == 200


def test_deactivate_and_activate_actions_use_the_manager(admin_client, tenant):
    codes = [PromoCodeFactory(tenant=tenant, code=c) for c in ("A", "B")]
    response = action(admin_client, "promocode", "deactivate_selected", codes)
    assert "Deactivated 2 promo codes." in texts(response)
    assert not PromoCode.objects.filter(is_active=True).exists()
    response = action(admin_client, "promocode", "activate_selected", codes[:1])
    assert "Activated 1 promo code." in texts(response)
    assert PromoCode.objects.get(pk=codes[0].pk).is_active


def test_add_code_form_refuses_a_duplicate_in_other_case(admin_client, tenant):
    PromoCodeFactory(tenant=tenant, code="Summer")
    response = admin_client.post(
        reverse("admin:promos_promocode_add"),
        {"tenant": tenant.pk, "code": "SUMMER", "bonus_type": "fixed", "bonus_value": "5"},
    )
    assert response.status_code == 200  # the form comes back with the error
    assert PromoCode.objects.count() == 1
    change = admin_client.get(reverse("admin:promos_promocode_change", args=[PromoCode.objects.get().pk]))
    assert change.status_code == 200


def test_void_action_reports_each_row(admin_client, tenant):
    promo = PromoCodeFactory(tenant=tenant, code="V")
    first = PromoCode.objects.redeem("V", tenant=tenant, customer="a", amount=Decimal("10"))
    second = PromoCode.objects.redeem("V", tenant=tenant, customer="b", amount=Decimal("10"))
    PromoUsage.objects.void(second.pk, tenant=tenant)
    response = action(admin_client, "promousage", "void_selected", [first, second])
    messages = texts(response)
    assert "Voided 1 usage." in messages
    assert any("usage_already_voided" in m for m in messages)
    assert assert_invariant(promo) == 0
    page = admin_client.get(reverse("admin:promos_promousage_changelist"), {"voided": "yes", "q": "v"})
    assert len(page.context["cl"].result_list) == 2


def test_session_list_filters_and_cancel_action(admin_client, tenant):
    pending = RedemptionSessionFactory(tenant=tenant, customer="alice")
    used = RedemptionSessionFactory(tenant=tenant, status="approved", customer="bob")
    RedemptionSession.objects.consume(used.session_id, tenant=tenant, amount="1")
    url = reverse("admin:promos_redemptionsession_changelist")
    assert list(admin_client.get(url, {"status__exact": "pending"}).context["cl"].result_list) == [pending]
    assert list(admin_client.get(url, {"expiry": "open"}).context["cl"].result_list) == [pending]
    assert list(admin_client.get(url, {"q": "alice"}).context["cl"].result_list) == [pending]
    response = action(admin_client, "redemptionsession", "cancel_selected", [pending, used])
    messages = texts(response)
    assert "Cancelled 1 session." in messages
    assert any("session_already_used" in m for m in messages)
    assert RedemptionSession.objects.get(pk=pending.pk).status == "cancelled"
    detail = admin_client.get(reverse("admin:promos_redemptionsession_change", args=[pending.pk]))
    assert detail.status_code == 200 and "secret_hash" not in detail.content.decode()


def test_editing_a_code_in_the_admin_never_rewinds_times_used(admin_client, tenant):
    promo = PromoCodeFactory(tenant=tenant, code="EDIT", total_usage_limit=10)
    url = reverse("admin:promos_promocode_change", args=[promo.pk])
    version = opened_version(admin_client, url)  # the operator opens the form...
    PromoCode.objects.redeem("EDIT", tenant=tenant, customer="a", amount="10")  # ...a customer redeems meanwhile
    form = {"code": "EDIT", "bonus_type": "fixed", "bonus_value": "7.00", "total_usage_limit": 10}
    response = admin_client.post(url, {**form, "expected_version": version})
    assert response.status_code == 302, response.content
    promo.refresh_from_db()
    # a redeem does not make the form stale (times_used is not a definition field)
    assert (promo.bonus_value, promo.version) == (Decimal("7.00"), version + 1)
    assert assert_invariant(promo) == 1


def test_admin_add_creates_through_the_manager(admin_client, tenant):
    response = admin_client.post(
        reverse("admin:promos_promocode_add"),
        {"tenant": tenant.pk, "code": "NEW", "bonus_type": "percentage", "bonus_value": "12.5"},
    )
    assert response.status_code == 302, response.content
    assert PromoCode.objects.get(code="NEW").bonus_value == Decimal("12.50")


def test_refused_change_keeps_the_form_and_claims_no_success(admin_client, tenant):
    """Regression: a manager refusal was shown *and* followed by "changed successfully" and a redirect."""
    promo = PromoCodeFactory(tenant=tenant, code="EDIT", total_usage_limit=10)
    for customer in ("a", "b"):
        PromoCode.objects.redeem("EDIT", tenant=tenant, customer=customer, amount="10")
    url = reverse("admin:promos_promocode_change", args=[promo.pk])
    form = {"code": "EDIT", "bonus_type": "fixed", "bonus_value": "7.00", "total_usage_limit": 1}
    response = admin_client.post(url, {**form, "expected_version": opened_version(admin_client, url)})
    assert response.status_code == 200  # the form again, not a redirect
    errors = response.context["adminform"].form.errors
    assert "total_usage_limit" in errors and "cannot be lower" in str(errors["total_usage_limit"])
    assert 'value="7.00"' in response.content.decode()  # the operator's input is kept
    assert not any("successfully" in m for m in texts(response))
    promo.refresh_from_db()
    assert (promo.bonus_value, promo.total_usage_limit) == (Decimal("10.00"), 10)
    assert assert_invariant(promo) == 2


@pytest.mark.django_db(transaction=True)
def test_cancel_action_reports_a_locked_row_instead_of_failing(admin_client):
    """Regression: a session row locked past lock_timeout made the cancel action a 500."""
    tenant = TenantFactory()
    locked = RedemptionSessionFactory(tenant=tenant, customer="locked")
    free = RedemptionSessionFactory(tenant=tenant, customer="free")
    with row_locked(RedemptionSession.objects.filter(pk=locked.pk)), lock_timeout(200):
        response = action(admin_client, "redemptionsession", "cancel_selected", [locked, free])
    assert response.status_code == 200
    messages = texts(response)
    assert "Cancelled 1 session." in messages
    assert any(m.startswith(str(locked)) and "resource_locked" in m for m in messages), messages
    statuses = dict(RedemptionSession.objects.values_list("customer", "status"))
    assert statuses == {"locked": "pending", "free": "cancelled"}


@pytest.mark.django_db(transaction=True)
def test_an_action_whose_statement_runs_past_statement_timeout_reports_the_row_instead_of_failing(admin_client):
    """Regression: only a lock refusal was translated; a statement cancelled by statement_timeout (57014) made
    the action a 500 page, the rows after it not attempted."""
    tenant = TenantFactory()
    locked = RedemptionSessionFactory(tenant=tenant, customer="locked")
    free = RedemptionSessionFactory(tenant=tenant, customer="free")
    with row_locked(RedemptionSession.objects.filter(pk=locked.pk)), lock_timeout(10_000), statement_timeout(300):
        response = action(admin_client, "redemptionsession", "cancel_selected", [locked, free])
    assert response.status_code == 200
    messages = texts(response)
    assert "Cancelled 1 session." in messages
    assert any(m.startswith(str(locked)) and "database_timeout" in m for m in messages), messages
    statuses = dict(RedemptionSession.objects.values_list("customer", "status"))
    assert statuses == {"locked": "pending", "free": "cancelled"}


def test_usage_and_session_pages_are_view_only(admin_client, tenant):
    """Regression: their Save button was a full-row save() outside the managers, able to write back a
    voided_at or status read a moment earlier (un-voiding a usage, un-using a session)."""
    promo = PromoCodeFactory(tenant=tenant, code="V")
    usage = PromoCode.objects.redeem("V", tenant=tenant, customer="a", amount="10")
    session = RedemptionSessionFactory(tenant=tenant)
    for model, pk in [("promousage", usage.pk), ("redemptionsession", session.pk)]:
        url = reverse(f"admin:promos_{model}_change", args=[pk])
        page = admin_client.get(url)
        assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
        assert admin_client.post(url, {}).status_code == 403
    assert assert_invariant(promo) == 1


def test_code_delete_goes_through_the_manager(admin_client, tenant):
    unused, used = PromoCodeFactory(tenant=tenant, code="UNUSED"), PromoCodeFactory(tenant=tenant, code="USED")
    PromoCode.objects.redeem("USED", tenant=tenant, customer="a", amount="10")
    changelist = admin_client.get(reverse("admin:promos_promocode_changelist"))
    assert "delete_selected" not in changelist.content.decode()  # the unlocked bulk delete is gone
    _page, deleted = confirm_delete(admin_client, PromoCode, unused.pk)
    assert deleted.status_code == 200 and not PromoCode.objects.filter(pk=unused.pk).exists()
    page = admin_client.get(reverse("admin:promos_promocode_delete", args=[used.pk]))
    assert page.status_code == 200 and "Cannot delete" in page.content.decode()  # Django lists the usages
    assert PromoCode.objects.filter(pk=used.pk).exists()


def test_the_delete_page_deletes_the_code_at_the_version_it_showed(admin_client, tenant):
    """A code raised to 50 after the operator opened its delete page is refused ``version_conflict``."""
    promo = PromoCodeFactory(tenant=tenant, code="SPRING")

    def raised_meanwhile():
        PromoCode.objects.update_code(promo.pk, tenant=tenant, version=promo.version, bonus_value=Decimal("50.00"))

    _page, refused = confirm_delete(admin_client, PromoCode, promo.pk, meanwhile=raised_meanwhile)
    assert any("version_conflict" in m for m in texts(refused)), texts(refused)
    assert PromoCode.objects.get(pk=promo.pk).bonus_value == Decimal("50.00")
    without = admin_client.post(reverse("admin:promos_promocode_delete", args=[promo.pk]), {"post": "yes"})
    assert without.status_code == 302 and PromoCode.objects.filter(pk=promo.pk).exists()
    _page, deleted = confirm_delete(admin_client, PromoCode, promo.pk)
    assert not PromoCode.objects.filter(pk=promo.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_code_screens_report_a_locked_row_instead_of_failing(admin_client, monkeypatch):
    """Deactivate action, change form and delete on a code whose row another transaction holds."""
    monkeypatch.setattr(managers, "REDEEM_LOCK_TIMEOUT_MS", 100)
    tenant = TenantFactory()
    locked, free = PromoCodeFactory(tenant=tenant, code="LOCKED"), PromoCodeFactory(tenant=tenant, code="FREE")
    change_url = reverse("admin:promos_promocode_change", args=[locked.pk])
    form = {"code": "LOCKED", "bonus_type": "fixed", "bonus_value": "7.00"}
    form["expected_version"] = opened_version(admin_client, change_url)
    with row_locked(PromoCode.objects.filter(pk=locked.pk)):
        deactivated = texts(action(admin_client, "promocode", "deactivate_selected", [locked, free]))
        changed = admin_client.post(change_url, form)
        deleted = admin_client.post(reverse("admin:promos_promocode_delete", args=[locked.pk]), {"post": "yes"})
    assert "Deactivated 1 promo code." in deactivated
    assert any(m.startswith("LOCKED") and "resource_locked" in m for m in deactivated), deactivated
    assert changed.status_code == 200 and changed.context["adminform"].form.non_field_errors()
    assert "being changed by another request" in str(changed.context["adminform"].form.non_field_errors())
    assert deleted.status_code == 302 and any("resource_locked" in m for m in texts(deleted))
    locked.refresh_from_db()
    assert (locked.is_active, locked.bonus_value) == (True, Decimal("10.00"))
    assert not PromoCode.objects.get(pk=free.pk).is_active


def test_a_code_deactivated_after_the_activate_page_showed_it_active_stays_inactive(admin_client, tenant):
    """Regression: the confirming POST switched each code as it then stood: a code a colleague took off (it
    leaked) after the page said "nothing: already active" was put back in customers' hands. Each code is
    acted on at the version the page showed; one changed since is refused, and left as it is."""
    leaked, other = PromoCodeFactory(tenant=tenant, code="LEAKED"), PromoCodeFactory(tenant=tenant, code="OTHER")
    url = reverse("admin:promos_promocode_changelist")
    chosen = {"action": "activate_selected", "_selected_action": [leaked.pk, other.pk]}
    page = admin_client.post(url, chosen)
    assert [str(effect) for _cells, effect in page.context["rows"]] == ["nothing: already active"] * 2
    assert f'name="seen_{leaked.pk}" value="{leaked.version}"' in page.content.decode()
    PromoCode.objects.set_active(leaked.pk, tenant=tenant, active=False)  # a colleague, meanwhile
    shown = {f"seen_{pk}": version for pk, version in page.context["selected"]}
    reported = texts(admin_client.post(url, {**chosen, "apply": "1", **shown}, follow=True))
    assert any(m.startswith("LEAKED") and "version_conflict" in m for m in reported), reported
    assert not PromoCode.objects.get(pk=leaked.pk).is_active
    with pytest.raises(PromoInactive):
        PromoCode.objects.redeem("LEAKED", tenant=tenant, customer="mallory", amount="10")
    assert PromoCode.objects.get(pk=other.pk).is_active
    without = texts(admin_client.post(url, {**chosen, "apply": "1"}, follow=True))  # a page from before
    assert sum("version_conflict" in m for m in without) == 2, without


def test_a_leaked_code_switched_on_and_off_again_after_the_activate_page_showed_it_stays_off(admin_client, tenant):
    """An activation carries the version the page showed, not only the state: a code a colleague activated,
    then took off again (it leaked), reads inactive as the page showed it, and is still refused."""
    leaked = PromoCodeFactory(tenant=tenant, code="LEAKED", is_active=False)
    url = reverse("admin:promos_promocode_changelist")
    chosen = {"action": "activate_selected", "_selected_action": [leaked.pk]}
    page = admin_client.post(url, chosen)
    PromoCode.objects.set_active(leaked.pk, tenant=tenant, active=True)  # a colleague, meanwhile,
    PromoCode.objects.set_active(leaked.pk, tenant=tenant, active=False)  # then takes it off: it leaked
    shown = {f"seen_{pk}": version for pk, version in page.context["selected"]}
    reported = texts(admin_client.post(url, {**chosen, "apply": "1", **shown}, follow=True))
    assert any(m.startswith("LEAKED") and "version_conflict" in m for m in reported), reported
    assert not PromoCode.objects.get(pk=leaked.pk).is_active


def test_a_code_whose_dates_were_changed_after_the_deactivate_page_showed_it_is_still_deactivated(admin_client, tenant):
    """Only a switch of the code's state since the page showed it refuses the action: a leaked code is taken
    off even when a colleague changed its dates or bonus meanwhile (its version moved)."""
    leaked = PromoCodeFactory(tenant=tenant, code="LEAKED")
    url = reverse("admin:promos_promocode_changelist")
    chosen = {"action": "deactivate_selected", "_selected_action": [leaked.pk]}
    page = admin_client.post(url, chosen)
    PromoCode.objects.update_code(leaked.pk, tenant=tenant, bonus_value=Decimal("5.00"))  # a colleague, meanwhile
    shown = {f"seen_{pk}": state for pk, state in page.context["selected"]}
    reported = texts(admin_client.post(url, {**chosen, "apply": "1", **shown}, follow=True))
    assert "Deactivated 1 promo code." in reported, reported
    assert not PromoCode.objects.get(pk=leaked.pk).is_active


def test_money_and_irreversible_actions_ask_first(admin_client, tenant):
    """Without the confirming POST nothing changes; the page says what will happen to each row."""
    promo = PromoCodeFactory(tenant=tenant, code="ASKME")
    leaked = PromoCodeFactory(tenant=tenant, code="LEAKED", is_active=False)  # a colleague took it off
    session = RedemptionSessionFactory(tenant=tenant, customer="carol")
    for model, name, obj, effect in [
        ("promocode", "deactivate_selected", promo, "deactivated"),
        ("promocode", "activate_selected", leaked, "activated"),
        ("redemptionsession", "cancel_selected", session, "cancelled"),
    ]:
        page = admin_client.post(
            reverse(f"admin:promos_{model}_changelist"), {"action": name, "_selected_action": [str(obj.pk)]}
        )
        assert page.status_code == 200 and [str(e) for _cells, e in page.context["rows"]] == [effect]
    assert PromoCode.objects.get(pk=promo.pk).is_active
    assert not PromoCode.objects.get(pk=leaked.pk).is_active
    assert RedemptionSession.objects.get(pk=session.pk).status == "pending"


def test_a_code_page_lists_its_usages(admin_client, tenant):
    promo = PromoCodeFactory(tenant=tenant, code="SHOWME")
    PromoCode.objects.redeem("SHOWME", tenant=tenant, customer="dana", amount="10")
    page = admin_client.get(reverse("admin:promos_promocode_change", args=[promo.pk]))
    assert page.status_code == 200 and "dana" in page.content.decode()
    listing = admin_client.get(reverse("admin:promos_promousage_changelist"), {"q": "SHOWME"})
    assert listing.context["cl"].result_count == 1


def test_a_fixed_bonus_above_what_its_currency_charges_is_a_form_error_as_in_the_api(admin_client, tenant, api_client):
    """Regression: the admin's form took a fixed bonus up to its column's 9,999,999,999.999, the API's PUT refused
    above 99,999,999: a code saved in the admin could not be PUT back as read. Both now refuse above what a redeem
    in the code's currency may name (``invalid_amount``, as a redeem's amount), and the largest such bonus goes
    round the API."""
    form = {"tenant": tenant.pk, "code": "BIG", "bonus_type": "fixed", "currency": "JPY"}
    refused = admin_client.post(reverse("admin:promos_promocode_add"), {**form, "bonus_value": "5000000000"})
    assert refused.status_code == 200 and "up to 99999999" in str(refused.context["adminform"].form.errors)
    assert not PromoCode.objects.filter(code="BIG").exists()
    largest = admin_client.post(reverse("admin:promos_promocode_add"), {**form, "bonus_value": "99999999"})
    assert largest.status_code == 302, largest.content
    promo = PromoCode.objects.get(code="BIG")
    path = f"/api/t/{tenant.slug}/promo-codes/{promo.pk}"
    read = api_client.get(path).json()
    written = {key: read[key] for key in ("code", "bonus_type", "bonus_value", "currency", "version")}
    assert api_client.put(path, written, format="json").status_code == 200
    with pytest.raises(InvalidAmount) as too_large:  # a dollar code's ceiling is the dollar's
        PromoCode.objects.create_code(tenant=tenant, code="USD", bonus_type="fixed", bonus_value=Decimal("1000000"))
    assert too_large.value.params == {"maximum": "999999.99"}
    percentage = PromoCode.objects.create_code(
        tenant=tenant, code="PCT", bonus_type="percentage", bonus_value=Decimal("10"), max_bonus=Decimal("999999.99")
    )
    with pytest.raises(InvalidAmount):  # the cap of a percentage is an amount too
        PromoCode.objects.update_code(percentage.pk, tenant=tenant, max_bonus=Decimal("1000000"))
