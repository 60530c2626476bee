"""Operator screens through Django's test client (admin_client: a superuser)."""

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from profiles.models import Profile, ProfileAuditLog
from tests.profiles.factories import ProfileFactory, form_data, fresh
from tests.races import lock_timeout, row_locked

pytestmark = pytest.mark.django_db

AUDIT_LIST = reverse("admin:profiles_profileauditlog_changelist")
PROFILE_LIST = reverse("admin:profiles_profile_changelist")


def texts(response):
    return [str(m) for m in get_messages(response.wsgi_request)]


def moved_entry(tree):
    kid = tree["kid"]
    Profile.objects.update_profile(kid.pk, tenant=kid.tenant, version=1, father=ProfileFactory(tenant=kid.tenant).pk)
    return ProfileAuditLog.objects.get(profile=kid, action="update")


def test_undo_selected_asks_for_a_reason_then_reports_each_result(admin_client, admin_user, tree):
    good = moved_entry(tree)
    other = tree["mum"]
    Profile.objects.update_profile(other.pk, tenant=other.tenant, version=1, first_name="Mother")
    Profile.objects.update_profile(other.pk, tenant=other.tenant, version=2, first_name="Mama")
    stale = ProfileAuditLog.objects.filter(profile=other, action="update").order_by("id").first()
    selected = {"action": "undo_selected", "_selected_action": [good.pk, stale.pk]}

    confirm = admin_client.post(AUDIT_LIST, selected)
    assert confirm.status_code == 200
    assert b'name="reason"' in confirm.content and b'name="apply"' in confirm.content
    assert ProfileAuditLog.objects.filter(undone_at__isnull=False).count() == 0  # nothing done yet

    response = admin_client.post(AUDIT_LIST, {**selected, "apply": "1", "reason": "operator fix"}, follow=True)
    assert response.status_code == 200
    messages = texts(response)
    assert f"#{good.pk}: undone." in messages
    assert any(m.startswith(f"#{stale.pk}: stale_version:") and "first name" in m for m in messages), messages
    good.refresh_from_db()
    assert good.undone_by == admin_user and good.undo_reason == "operator fix"
    assert fresh(tree["kid"]).father_id == tree["dad"].pk
    assert ProfileAuditLog.objects.get(pk=stale.pk).undone_at is None


def test_undo_selected_reports_refusals_in_arabic(admin_client, tree):
    entry = moved_entry(tree)
    Profile.objects.soft_delete(tree["dad"].pk, tenant=tree["dad"].tenant, version=1)
    response = admin_client.post(
        AUDIT_LIST,
        {"action": "undo_selected", "_selected_action": [entry.pk], "apply": "1", "reason": "r"},
        follow=True,
        HTTP_ACCEPT_LANGUAGE="ar",
    )
    [message] = texts(response)
    assert message.startswith(f"#{entry.pk}: parent_deleted: الملف الشخصي للأب محذوف. يجب استعادة الأب أولاً. ")
    # the refusal names the deleted father and links to restoring him
    dad = tree["dad"]
    assert f'<a href="/admin/profiles/profile/?deleted=yes&amp;q={dad.pk}">' in message
    assert f"{dad} (#{dad.pk})" in message
    listing = admin_client.get(f"/admin/profiles/profile/?deleted=yes&q={dad.pk}")
    assert [p.pk for p in listing.context["cl"].result_list] == [dad.pk]


def test_undo_selected_without_reason_shows_the_form_again(admin_client, tree):
    entry = moved_entry(tree)
    response = admin_client.post(
        AUDIT_LIST, {"action": "undo_selected", "_selected_action": [entry.pk], "apply": "1", "reason": ""}
    )
    assert response.status_code == 200 and b"errorlist" in response.content
    assert ProfileAuditLog.objects.get(pk=entry.pk).undone_at is None


def test_a_viewer_has_no_undo_action(client, tree, django_user_model):
    from core.models import Membership

    staff = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    entry = moved_entry(tree)
    Membership.objects.create(tenant=entry.tenant, user=staff, role=Membership.Role.VIEWER)
    client.force_login(staff)
    page = client.get(AUDIT_LIST)
    assert page.status_code == 200 and b"undo_selected" not in page.content
    client.post(AUDIT_LIST, {"action": "undo_selected", "_selected_action": [entry.pk], "apply": "1", "reason": "r"})
    assert ProfileAuditLog.objects.get(pk=entry.pk).undone_at is None


def test_audit_list_filters_and_search(admin_client, tree):
    entry = moved_entry(tree)
    ProfileAuditLog.objects.undo(entry.pk, tenant=entry.tenant, actor=None, reason="r")
    for query in ["?action__exact=update", "?undone=yes", "?undone=no", "?q=Kid", "?action__exact=undo&undone=no"]:
        response = admin_client.get(AUDIT_LIST + query)
        assert response.status_code == 200, query
    assert response.context["cl"].result_count == 1
    assert admin_client.get(AUDIT_LIST + "?undone=yes").context["cl"].result_count == 1
    detail = admin_client.get(reverse("admin:profiles_profileauditlog_change", args=[entry.pk]))
    assert detail.status_code == 200


def test_profile_list_search_filter_and_history_inline(admin_client, tree):
    Profile.objects.soft_delete(tree["kid"].pk, tenant=tree["kid"].tenant, version=1)
    assert admin_client.get(PROFILE_LIST + "?deleted=yes").context["cl"].result_count == 1
    assert admin_client.get(PROFILE_LIST + "?deleted=no").context["cl"].result_count == 4
    assert admin_client.get(PROFILE_LIST + "?q=Grandma").context["cl"].result_count == 1
    page = admin_client.get(reverse("admin:profiles_profile_change", args=[tree["kid"].pk]))
    assert page.status_code == 200
    (inline,) = page.context["inline_admin_formsets"]
    shown = [form.original for form in inline]
    assert [entry.action for entry in shown] == ["delete", "create"]  # newest first
    for entry in shown:
        url = reverse("admin:profiles_profileauditlog_change", args=[entry.pk])
        assert f'href="{url}"'.encode() in page.content


def test_admin_add_and_change_go_through_the_manager(admin_client, admin_user, tree):
    tenant = tree["kid"].tenant
    response = admin_client.post(
        reverse("admin:profiles_profile_add"),
        {**form_data(Profile(first_name="New", sex="male", version=1), father=tree["dad"].pk), "tenant": tenant.pk},
    )
    assert response.status_code == 302, response.content
    new = Profile.objects.get(first_name="New")
    assert new.father_id == tree["dad"].pk and new.history.get().action == "create"
    assert new.history.get().actor == admin_user

    change = reverse("admin:profiles_profile_change", args=[new.pk])
    response = admin_client.post(change, form_data(new, first_name="Renamed"))
    assert response.status_code == 302
    new = fresh(new)
    assert new.first_name == "Renamed" and new.version == 2
    assert new.history.order_by("-id").first().new_data == {"first_name": "Renamed"}


def test_admin_change_refusals_come_back_with_the_input_and_the_localized_error(admin_client, tree):
    """Regression: a refusal used to redirect to a freshly loaded (empty of the operator's edits) form."""
    kid = tree["kid"]
    change = reverse("admin:profiles_profile_change", args=[kid.pk])
    stale = form_data(kid, first_name="Stale", last_name="Typed by the operator")
    Profile.objects.update_profile(kid.pk, tenant=kid.tenant, version=1, first_name="Someone else")
    response = admin_client.post(change, stale)
    assert response.status_code == 200  # the form again, not a redirect
    form = response.context["adminform"].form
    assert form["first_name"].value() == "Stale" and form["last_name"].value() == "Typed by the operator"
    assert form.non_field_errors() == [
        "This record was changed by someone else (now version 2). Reload it and try again."
    ]
    assert b'value="Typed by the operator"' in response.content and b"now version 2" in response.content
    assert fresh(kid).first_name == "Someone else" and fresh(kid).version == 2

    response = admin_client.post(
        change, form_data(fresh(kid), first_name="Kept", father=tree["mum"].pk), HTTP_ACCEPT_LANGUAGE="ar"
    )
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert form.errors == {"father": ["يجب أن يكون الأب ذكراً."]}
    assert form["first_name"].value() == "Kept" and str(form["father"].value()) == str(tree["mum"].pk)
    assert fresh(kid).father_id == tree["dad"].pk and fresh(kid).first_name == "Someone else"

    # Fixing the field and saving the same form again goes through.
    response = admin_client.post(change, form_data(fresh(kid), first_name="Kept"))
    assert response.status_code == 302 and fresh(kid).first_name == "Kept"


def test_admin_add_refusal_comes_back_with_the_input(admin_client, tree):
    tenant = tree["kid"].tenant
    body = {
        **form_data(
            Profile(first_name="Newborn", sex="male", version=1), birth_date="2000-01-02", death_date="1999-01-01"
        ),
        "tenant": tenant.pk,
    }
    response = admin_client.post(reverse("admin:profiles_profile_add"), body)
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert form.errors == {"death_date": ["The date of death cannot be before the date of birth."]}
    assert form["first_name"].value() == "Newborn"
    assert not Profile.objects.filter(first_name="Newborn").exists()


def test_admin_cannot_hard_delete_and_soft_delete_action_reports_each(admin_client, tree):
    assert admin_client.get(reverse("admin:profiles_profile_delete", args=[tree["kid"].pk])).status_code == 403
    response = admin_client.post(
        PROFILE_LIST,
        {
            "action": "soft_delete_selected",
            "apply": "1",
            "_selected_action": [tree["kid"].pk, tree["dad"].pk],
            **{f"seen_{p.pk}": fresh(p).version for p in (tree["kid"], tree["dad"])},
        },
        follow=True,
    )
    messages = texts(response)
    assert any("deleted" in m and f"#{tree['kid'].pk}" in m for m in messages), messages
    assert any("profile_has_children" in m and f"#{tree['dad'].pk}" in m for m in messages), messages
    assert fresh(tree["kid"]).deleted_at is not None and fresh(tree["dad"]).deleted_at is None
    response = admin_client.post(
        PROFILE_LIST,
        {
            "action": "restore_selected",
            "apply": "1",
            "_selected_action": [tree["kid"].pk],
            f"seen_{tree['kid'].pk}": fresh(tree["kid"]).version,
        },
        follow=True,
    )
    assert fresh(tree["kid"]).deleted_at is None


def test_the_soft_delete_confirmation_acts_at_the_version_the_operator_was_shown(admin_client, tree):
    """The page carries each row's version: a profile changed between the page and Confirm is refused."""
    kid = tree["kid"]
    page = admin_client.post(PROFILE_LIST, {"action": "soft_delete_selected", "_selected_action": [kid.pk]})
    assert f'name="seen_{kid.pk}" value="{kid.version}"' in page.content.decode()
    Profile.objects.update_profile(kid.pk, tenant=kid.tenant, version=kid.version, actor=None, first_name="Renamed")
    confirm = {
        "action": "soft_delete_selected",
        "apply": "1",
        "_selected_action": [kid.pk],
        f"seen_{kid.pk}": kid.version,
    }
    messages = texts(admin_client.post(PROFILE_LIST, confirm, follow=True))
    assert any("version_conflict" in m and f"#{kid.pk}" in m for m in messages), messages
    assert fresh(kid).deleted_at is None and fresh(kid).first_name == "Renamed"
    confirm[f"seen_{kid.pk}"] = fresh(kid).version  # shown again, confirmed at what it is now
    admin_client.post(PROFILE_LIST, confirm, follow=True)
    assert fresh(kid).deleted_at is not None


def test_the_restore_confirmation_acts_at_the_version_the_operator_was_shown(admin_client, tree):
    """Restored and deleted again between the page and Confirm: refused, not restored at a state not shown."""
    kid, tenant = tree["kid"], tree["kid"].tenant
    Profile.objects.soft_delete(kid.pk, tenant=tenant, version=1)
    page = admin_client.post(PROFILE_LIST, {"action": "restore_selected", "_selected_action": [kid.pk]})
    assert f'name="seen_{kid.pk}" value="2"' in page.content.decode()
    Profile.objects.restore(kid.pk, tenant=tenant, version=2)
    Profile.objects.soft_delete(kid.pk, tenant=tenant, version=3)
    confirm = {"action": "restore_selected", "apply": "1", "_selected_action": [kid.pk], f"seen_{kid.pk}": 2}
    messages = texts(admin_client.post(PROFILE_LIST, confirm, follow=True))
    assert any("version_conflict" in m and f"#{kid.pk}" in m for m in messages), messages
    assert fresh(kid).deleted_at is not None and fresh(kid).version == 4


@pytest.mark.django_db(transaction=True)
def test_admin_save_whose_commit_hits_a_lock_comes_back_as_a_refusal_not_a_500(admin_client, django_user_model):
    """Regression: the admin commits after the manager returned, so a lock timeout at that COMMIT
    (Django's foreign keys are checked there: the audit row's tenant is held FOR UPDATE elsewhere)
    escaped the manager's lock translation and was a 500."""
    from core.models import Tenant
    from tests.factories import TenantFactory

    tenant = TenantFactory(slug="locked")
    kid = ProfileFactory(tenant=tenant, first_name="Kid")
    with row_locked(Tenant.objects.filter(pk=tenant.pk)), lock_timeout(200):
        response = admin_client.post(
            reverse("admin:profiles_profile_change", args=[kid.pk]), form_data(kid, first_name="Typed")
        )
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert form.non_field_errors() == ["This resource is being changed by another request. Try again shortly."]
    assert form["first_name"].value() == "Typed" and fresh(kid).first_name == "Kid"


def test_the_change_form_carries_the_version_it_was_opened_at(admin_client, tree):
    kid = tree["kid"]
    Profile.objects.update_profile(kid.pk, tenant=kid.tenant, version=1, first_name="Kiddo")
    page = admin_client.get(reverse("admin:profiles_profile_change", args=[kid.pk]))
    assert b'<input type="hidden" name="expected_version" value="2"' in page.content


def test_a_change_form_without_its_version_is_refused_with_the_input_kept(admin_client, tree):
    """Regression: a form without expected_version was checked against the version at POST time."""
    kid = tree["kid"]
    body = form_data(kid, first_name="Typed")
    del body["expected_version"]
    response = admin_client.post(reverse("admin:profiles_profile_change", args=[kid.pk]), body)
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert form.non_field_errors() == [
        "This record was changed by someone else (now version 1). Reload it and try again."
    ]
    assert form["first_name"].value() == "Typed"
    assert fresh(kid).first_name == "Kid" and fresh(kid).version == 1
    assert ProfileAuditLog.objects.filter(profile=kid).count() == 1


def test_the_change_form_writes_only_the_fields_the_operator_changed(admin_client, tree):
    kid = tree["kid"]
    response = admin_client.post(
        reverse("admin:profiles_profile_change", args=[kid.pk]), form_data(kid, last_name="Changed")
    )
    assert response.status_code == 302
    assert ProfileAuditLog.objects.filter(profile=kid).latest("pk").new_data == {"last_name": "Changed"}
    kid = fresh(kid)
    assert (kid.first_name, kid.father_id, kid.mother_id, kid.version) == ("Kid", tree["dad"].pk, tree["mum"].pk, 2)


def test_a_mother_refusal_goes_on_the_mother_field(admin_client, tree):
    kid = tree["kid"]
    response = admin_client.post(
        reverse("admin:profiles_profile_change", args=[kid.pk]), form_data(kid, mother=tree["dad"].pk)
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {"mother": ["The mother must be female."]}
    assert fresh(kid).mother_id == tree["mum"].pk


def test_a_profiles_history_page_shows_its_changes_and_its_audit_entries(admin_client, tree):
    entry = moved_entry(tree)
    page = admin_client.get(f"/admin/profiles/profile/{tree['kid'].pk}/history/")
    assert page.status_code == 200
    assert page.context["entries"][0].what == "changed"  # the row's own history, newest first
    assert [e.pk for e in page.context["audit_entries"]][0] == entry.pk
    assert f'href="/admin/profiles/profileauditlog/{entry.pk}/change/"' in page.content.decode()
    assert admin_client.get("/admin/profiles/profile/abc/history/").status_code == 404


@pytest.mark.parametrize("object_id", ["%C2%B2", "99999999999999999999", "%00"])
def test_a_profiles_history_page_with_a_garbled_id_is_404_not_500(admin_client, tree, object_id):
    # "²" is str.isdigit(), yet no integer: filtering the audit entries on it raised ValueError (a 500)
    assert admin_client.get(f"/admin/profiles/profile/{object_id}/history/").status_code == 404
