"""The admin is scoped by membership: a staff user of another tenant sees and changes none of the demo's rows.

Every registered model admin is tried with the demo tenant's rows (``seed_demo``: packages,
bookings with checkouts, promo codes and usages, sessions, profiles and their history, proposals).
"""

import html
import io
import json
import re

import pytest
from django import forms
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from procrastinate.contrib.django.models import ProcrastinateJob
from rest_framework.authtoken.models import Token, TokenProxy

from bookings.models import Booking, Package, PaymentEvent
from bookings.services import start_checkout
from core.admin_actions import BadInputMixin
from core.admin_forms import ShownChoicesInput
from core.admin_scope import TenantScopedAdminMixin
from core.models import IdempotencyKey, Membership, Notification, Tenant
from profiles.models import Profile
from tests.bookings.factories import future
from tests.factories import TenantFactory
from tests.races import Background, row_locked, wait_until_blocked

REGISTERED = sorted(admin.site._registry.items(), key=lambda item: item[0]._meta.label)


@pytest.fixture
def demo(db):
    call_command("seed_demo", "--without-admin", stdout=io.StringIO())
    tenant = Tenant.objects.get(slug="demo")
    package = Package.objects.filter(tenant=tenant).first()
    for days in (20, 21):  # held bookings with their checkouts
        start_checkout(
            tenant=tenant, package_id=package.pk, date=future(days), customer_name="C", customer_email="c@d.co"
        )
    return tenant


def staff_of(tenant, role, django_user_model, client):
    user = django_user_model.objects.create_user(f"{tenant.slug}-{role}", password="pw", is_staff=True)
    Membership.objects.create(tenant=tenant, user=user, role=role)
    client.force_login(user)
    return user


def demo_rows(model_admin, demo):
    """The demo tenant's rows of this admin's model (None: the admin is not tenant-scoped)."""
    if not isinstance(model_admin, TenantScopedAdminMixin):
        return None
    lookup = model_admin.tenant_path or "pk"
    return model_admin.model._default_manager.filter(**{lookup: demo.pk})


def url(model, view, *args):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.mark.parametrize(("model", "model_admin"), REGISTERED, ids=[m._meta.label for m, _ in REGISTERED])
def test_a_staff_user_of_another_tenant_sees_none_of_its_rows(model, model_admin, demo, client, django_user_model):
    staff_of(TenantFactory(slug="other"), Membership.Role.STAFF, django_user_model, client)
    rows = demo_rows(model_admin, demo)
    listing = client.get(url(model, "changelist"))
    if rows is None:  # not a tenant's rows (users, jobs, keys…): Django's own permissions, none given
        assert listing.status_code == 403
        for pk in model._default_manager.values_list("pk", flat=True)[:3]:
            assert client.get(url(model, "change", pk)).status_code == 403
        return
    assert listing.status_code == 200
    shown = {obj.pk for obj in listing.context["cl"].result_list}
    assert not shown & set(rows.values_list("pk", flat=True))
    for pk in rows.values_list("pk", flat=True)[:3]:  # guessing its URL: as if it did not exist
        assert client.get(url(model, "change", pk)).status_code == 404
        assert client.get(url(model, "history", pk)).status_code == 404
        assert client.post(url(model, "delete", pk), {"post": "yes"}).status_code == 404


@pytest.mark.parametrize(
    ("model", "model_admin"),
    [(m, a) for m, a in REGISTERED if isinstance(a, TenantScopedAdminMixin)],
    ids=[m._meta.label for m, a in REGISTERED if isinstance(a, TenantScopedAdminMixin)],
)
def test_a_member_sees_the_tenants_rows(model, model_admin, demo, client, django_user_model):
    """The control: the same pages show the rows to the demo tenant's own viewer."""
    staff_of(demo, Membership.Role.VIEWER, django_user_model, client)
    rows = demo_rows(model_admin, demo)
    listing = client.get(url(model, "changelist"))
    assert listing.status_code == 200
    assert {obj.pk for obj in listing.context["cl"].result_list} == set(rows.values_list("pk", flat=True)[:100])
    for pk in rows.values_list("pk", flat=True)[:1]:
        assert client.get(url(model, "change", pk)).status_code == 200


def test_filters_autocomplete_and_forms_offer_only_the_users_tenants(demo, client, django_user_model):
    other = TenantFactory(slug="other")
    mine = Package.objects.create_package(tenant=other, name="Mine", price="10.00", currency="USD", daily_capacity=1)
    staff_of(other, Membership.Role.STAFF, django_user_model, client)
    page = client.get(url(Booking, "changelist"))
    filters = " ".join(
        str(spec.lookup_choices) for spec in page.context["cl"].filter_specs if hasattr(spec, "lookup_choices")
    )
    assert "demo" not in filters.lower() and "Demo" not in filters
    choices = client.get(
        "/admin/autocomplete/",
        {"app_label": "proposals", "model_name": "proposal", "field_name": "package", "term": ""},
    ).json()["results"]
    assert [choice["id"] for choice in choices] == [str(mine.pk)]
    form = client.get(url(Package, "add")).context["adminform"].form
    assert list(form.fields["tenant"].queryset) == [other]


def test_a_viewer_reads_but_cannot_change_or_run_actions(demo, client, django_user_model):
    staff_of(demo, Membership.Role.VIEWER, django_user_model, client)
    booking = Booking.objects.filter(tenant=demo).first()
    page = client.get(url(Booking, "changelist"))
    assert page.status_code == 200 and page.context["action_form"] is None  # no action at all
    detail = client.get(url(Booking, "change", booking.pk))
    assert detail.status_code == 200 and not detail.context["has_change_permission"]
    status = booking.status
    client.post(url(Booking, "changelist"), {"action": "cancel_selected", "_selected_action": [booking.pk]})
    assert Booking.objects.get(pk=booking.pk).status == status
    assert client.get(url(Package, "add")).status_code == 403


@pytest.mark.parametrize("model, model_admin", REGISTERED, ids=lambda item: getattr(item, "__name__", ""))
def test_a_viewer_is_offered_no_action_on_any_list(model, model_admin, demo, client, django_user_model):
    """Every action writes, so each must declare the permission it needs: an undeclared one is
    offered to a viewer (it once sat on a display column instead of the cancel action)."""
    staff_of(demo, Membership.Role.VIEWER, django_user_model, client)
    page = client.get(url(model, "changelist"))
    assert page.status_code in (200, 403)
    if page.status_code == 200:
        assert page.context["action_form"] is None, (model._meta.label, page.context["action_form"])
    undeclared = [
        name
        for function, name, _description in model_admin._get_base_actions()
        if name != "delete_selected" and not getattr(function, "allowed_permissions", ())
    ]
    assert not undeclared, (model._meta.label, undeclared)


def test_a_manager_of_one_tenant_and_viewer_of_another_acts_only_where_allowed(demo, client, django_user_model):
    other = TenantFactory(slug="other")
    user = staff_of(other, Membership.Role.STAFF, django_user_model, client)
    Membership.objects.create(tenant=demo, user=user, role=Membership.Role.VIEWER)
    held = Booking.objects.filter(tenant=demo, status__in=["held", "confirmed"])
    assert held.exists()
    before = list(held.values_list("pk", "status"))
    response = client.post(
        url(Booking, "changelist"),
        {"action": "cancel_selected", "_selected_action": [pk for pk, _ in before]},
        follow=True,
    )
    assert "tenant you may only view" in response.content.decode() or "tenants you may only view" in (
        response.content.decode()
    )
    assert list(Booking.objects.filter(pk__in=[pk for pk, _ in before]).values_list("pk", "status")) == before
    assert "no longer match the list" not in response.content.decode()  # said once, for what it is


def belongs_to_a_tenant(model):
    """It has a tenant, or a foreign key to something that has one (a checkout's booking)."""
    if model is Tenant:
        return True
    fields = [field for field in model._meta.fields if field.is_relation and field.related_model]
    return any(
        field.related_model is Tenant or any(f.name == "tenant" for f in field.related_model._meta.fields)
        for field in fields
    )


def test_every_admin_of_a_tenants_rows_is_scoped():
    """A new model admin of tenant data cannot be registered unscoped (a staff user would see every tenant)."""
    unscoped = [
        model._meta.label
        for model, model_admin in REGISTERED
        if belongs_to_a_tenant(model) and not isinstance(model_admin, TenantScopedAdminMixin)
    ]
    inlines = [
        inline.__name__
        for _model, model_admin in REGISTERED
        for inline in model_admin.inlines
        if belongs_to_a_tenant(inline.model) and not issubclass(inline, TenantScopedAdminMixin)
    ]
    assert not unscoped and not inlines, (unscoped, inlines)


def test_the_admin_switches_to_arabic_and_back(admin_client):
    page = admin_client.get("/admin/")
    assert 'id="language-switch"' in page.content.decode()
    admin_client.post("/i18n/setlang/", {"language": "ar", "next": "/admin/"})
    arabic = admin_client.get("/admin/").content.decode()
    assert 'dir="rtl"' in arabic and 'lang="ar"' in arabic
    admin_client.post("/i18n/setlang/", {"language": "en", "next": "/admin/"})
    assert 'dir="rtl"' not in admin_client.get("/admin/").content.decode()


def test_an_owner_adds_a_colleague_by_user_name_to_their_tenant_only(demo, client, django_user_model):
    owner = staff_of(demo, Membership.Role.OWNER, django_user_model, client)
    colleague = django_user_model.objects.create_user("colleague", password="pw", is_staff=True)
    other = TenantFactory(slug="other")
    add = url(Membership, "add")
    page = client.get(add)
    assert page.status_code == 200 and list(page.context["adminform"].form.fields["tenant"].queryset) == [demo]
    refused = client.post(add, {"user": "colleague", "tenant": other.pk, "role": "viewer"})
    assert refused.status_code == 200 and "tenant" in refused.context["adminform"].form.errors
    unknown = client.post(add, {"user": "nobody", "tenant": demo.pk, "role": "viewer"})
    assert "user" in unknown.context["adminform"].form.errors
    assert client.post(add, {"user": "colleague", "tenant": demo.pk, "role": "viewer"}).status_code == 302
    assert Membership.objects.get(user=colleague).tenant == demo
    # a manager (not an owner) cannot
    client.force_login(staff_of(other, Membership.Role.STAFF, django_user_model, client))
    assert client.get(add).status_code == 403
    assert owner.memberships.count() == 1


def shown(bound, name):
    """The inputs a field renders under ``name``, as a browser posts them back."""
    value, widget = bound.value(), bound.field.widget
    if isinstance(widget, forms.MultiWidget):  # a date and a time, say: one input each
        parts = value if isinstance(value, list) else widget.decompress(value)
        return {f"{name}_{i}": "" if part is None else part for i, part in enumerate(parts)}
    if isinstance(value, list | tuple):  # a multiple choice: the name once per value
        return {name: [getattr(item, "pk", item) for item in value]}
    return {} if value is None else {name: getattr(value, "pk", value)}


def form_data(page):
    """What the change page would POST back as it shows it: the main form (with the values it showed, where
    a field keeps them) and every inline formset."""
    data = {}
    for bound in page.context["adminform"].form:
        data.update(shown(bound, bound.html_name))
        if isinstance(bound.field.hidden_widget(), ShownChoicesInput):  # one input, whatever it holds
            data[bound.html_initial_name] = bound.field.hidden_widget().format_value(bound.value())
        elif bound.field.show_hidden_initial:
            data.update(shown(bound, bound.html_initial_name))
    for inline in page.context["inline_admin_formsets"]:
        for form in [inline.formset.management_form, *inline.formset.forms]:
            for name in form.fields:
                value = form[name].value()
                if value is not None:
                    data[form.add_prefix(name)] = getattr(value, "pk", value)
    return data


def confirm_delete(client, model, pk, *, meanwhile=lambda: None):
    """Open the row's delete page, run ``meanwhile`` (a colleague's write), then confirm as the page would:
    with the version it showed. Returns the page and the confirming POST's answer (followed)."""
    page = client.get(url(model, "delete", pk))
    assert page.status_code == 200, page.content
    meanwhile()
    confirmed = {"post": "yes", "seen_version": page.context["seen_version"]}
    return page, client.post(url(model, "delete", pk), confirmed, follow=True)


def renaming_with_a_member(client, django_user_model, role):
    """An owner logged in on tenant "acme" with member mallory of ``role``, and the tenant page's POST
    renaming it to "Acme Ltd" as read now: (tenant, member, change URL, data)."""
    tenant = TenantFactory(slug="acme", name="Acme")
    staff_of(tenant, Membership.Role.OWNER, django_user_model, client)
    mallory = django_user_model.objects.create_user("mallory", password="pw", is_staff=True)
    member = Membership.objects.create(tenant=tenant, user=mallory, role=role)
    change = url(Tenant, "change", tenant.pk)
    data = form_data(client.get(change))
    data["name"] = "Acme Ltd"
    return tenant, member, change, data


@pytest.mark.django_db
def test_renaming_a_tenant_never_writes_back_a_role_a_colleague_changed_meanwhile(client, django_user_model):
    """Regression: the members inline saved every row as the page showed it: an owner's rename promoted back
    a member another owner had just demoted."""
    tenant, member, change, data = renaming_with_a_member(client, django_user_model, Membership.Role.STAFF)
    Membership.objects.edit_member(member.pk, version=member.version, role=Membership.Role.VIEWER)  # meanwhile
    assert client.post(change, data).status_code == 302
    assert Tenant.objects.get(pk=tenant.pk).name == "Acme Ltd"
    assert Membership.objects.get(pk=member.pk).role == Membership.Role.VIEWER


@pytest.mark.django_db(transaction=True)
def test_a_demotion_committed_while_a_tenant_save_waits_for_its_lock_is_not_written_back(client, django_user_model):
    """Regression: the members inline saved each row it had read, in full, whenever its hidden version field
    compared "changed" (an int against the posted text: always). A colleague's demotion committed between the
    inline's read and its save was written back, version and all, by a Save of the tenant's name. Forced here:
    the tenant's row is held from another connection, so the Save waits for it after reading its members."""
    tenant, member, change, data = renaming_with_a_member(client, django_user_model, Membership.Role.OWNER)
    with row_locked(Tenant.objects.filter(pk=tenant.pk)) as holder:
        saving = Background(lambda: client.post(change, data))
        wait_until_blocked("core_tenant")  # the members are read; the rename waits for the tenant's row
        Membership.objects.edit_member(member.pk, version=1, role=Membership.Role.VIEWER)  # a colleague
        holder.commit()
    saving.join()
    assert saving.error is None and saving.result.status_code == 302
    assert Tenant.objects.get(pk=tenant.pk).name == "Acme Ltd"
    assert Membership.objects.values_list("role", "version").get(pk=member.pk) == (Membership.Role.VIEWER, 2)
    logged = LogEntry.objects.get(object_id=str(tenant.pk)).get_change_message()
    assert "member" not in logged.lower(), logged  # the members were not changed, nor said to be


@pytest.mark.django_db
def test_a_member_page_opened_before_a_demotion_is_refused_not_written(client, django_user_model):
    tenant = TenantFactory(slug="acme")
    staff_of(tenant, Membership.Role.OWNER, django_user_model, client)
    mallory = django_user_model.objects.create_user("mallory", password="pw", is_staff=True)
    member = Membership.objects.create(tenant=tenant, user=mallory, role=Membership.Role.STAFF)
    change = url(Membership, "change", member.pk)
    data = form_data(client.get(change))
    Membership.objects.edit_member(member.pk, version=member.version, role=Membership.Role.VIEWER)  # meanwhile
    data["role"] = Membership.Role.OWNER  # this owner's edit, from the page read before
    refused = client.post(change, data)
    assert refused.status_code == 200 and "changed by someone else" in refused.content.decode()
    assert Membership.objects.get(pk=member.pk).role == Membership.Role.VIEWER
    fresh = form_data(client.get(change))
    fresh["role"] = Membership.Role.OWNER
    assert client.post(change, fresh).status_code == 302
    assert Membership.objects.get(pk=member.pk).role == Membership.Role.OWNER


@pytest.mark.django_db
def test_an_owner_adds_a_member_from_the_tenant_page(client, django_user_model):
    tenant = TenantFactory(slug="acme", name="Acme")
    staff_of(tenant, Membership.Role.OWNER, django_user_model, client)
    django_user_model.objects.create_user("colleague", password="pw", is_staff=True)
    change = url(Tenant, "change", tenant.pk)
    data = form_data(client.get(change))
    new = next(key[: -len("-TOTAL_FORMS")] for key in data if key.endswith("-TOTAL_FORMS") and data[key] == 0)
    data.update({f"{new}-TOTAL_FORMS": 1, f"{new}-0-user": "colleague", f"{new}-0-role": "viewer"})
    response = client.post(change, data)
    assert response.status_code == 302, response.context and response.context.get("errors")
    assert Membership.objects.get(user__username="colleague").tenant == tenant


@pytest.mark.parametrize("model, model_admin", REGISTERED, ids=lambda item: getattr(item, "__name__", ""))
@pytest.mark.parametrize("selected", ["abc", "1.5", "9" * 30, "²"])
def test_an_action_on_a_garbled_selection_changes_nothing_and_is_never_a_500(
    model, model_admin, selected, admin_client
):
    """Regression: Django filters on the posted ids as they came; a text where an integer goes was a 500.
    (A list offering no action, even to a superuser, is asked for Django's delete.)"""
    actions = list(model_admin.get_actions(admin_client.get("/admin/").wsgi_request)) or ["delete_selected"]
    admin_client.raise_request_exception = False
    before = list(model._default_manager.order_by("pk").values())
    for action in actions:
        response = admin_client.post(
            url(model, "changelist"), {"action": action, "index": 0, "_selected_action": [selected]}
        )
        assert response.status_code in (200, 302), (action, response.status_code)
    assert list(model._default_manager.order_by("pk").values()) == before


@pytest.mark.django_db
def test_a_tenant_page_opened_before_a_colleague_changed_the_slug_is_refused_not_written(client, django_user_model):
    """Regression: Save wrote every field back as the page showed it: a rename put back the old slug, the
    path of every API client, that a colleague had just changed."""
    tenant = TenantFactory(slug="acme", name="Acme")
    staff_of(tenant, Membership.Role.OWNER, django_user_model, client)
    change = url(Tenant, "change", tenant.pk)
    data = form_data(client.get(change))
    Tenant.objects.edit_tenant(tenant.pk, version=tenant.version, slug="acme-ltd")  # a colleague, meanwhile
    data["name"] = "Acme Ltd"
    refused = client.post(change, data)
    assert refused.status_code == 200 and "changed by someone else" in refused.content.decode()
    assert Tenant.objects.filter(pk=tenant.pk).values_list("name", "slug").get() == ("Acme", "acme-ltd")
    fresh = form_data(client.get(change))
    fresh["name"] = "Acme Ltd"
    assert client.post(change, fresh).status_code == 302
    assert Tenant.objects.filter(pk=tenant.pk).values_list("name", "slug", "version").get() == (
        "Acme Ltd",
        "acme-ltd",
        3,
    )


@pytest.mark.django_db
@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "America", "../etc/passwd", ""])
def test_an_owner_sets_the_shops_time_zone_and_an_unknown_one_is_a_form_error(client, django_user_model, zone):
    """The page offers the zones the server knows; a POST of anything else (a name of none, a directory of the
    zone files) is a form error on the field, never a 500, and nothing is written."""
    tenant = TenantFactory(slug="acme", name="Acme")
    staff_of(tenant, Membership.Role.OWNER, django_user_model, client)
    client.raise_request_exception = False
    change = url(Tenant, "change", tenant.pk)
    refused = client.post(change, {**form_data(client.get(change)), "time_zone": zone})
    assert refused.status_code == 200 and refused.context["adminform"].form.errors.get("time_zone"), zone
    assert Tenant.objects.get(pk=tenant.pk).time_zone == "UTC"
    taken = client.post(change, {**form_data(client.get(change)), "time_zone": "Asia/Tokyo"})
    assert taken.status_code == 302
    assert Tenant.objects.get(pk=tenant.pk).time_zone == "Asia/Tokyo"


@pytest.mark.django_db
def test_a_user_already_a_member_is_a_form_error_on_either_page_never_a_500(client, django_user_model):
    tenant = TenantFactory(slug="acme", name="Acme")
    staff_of(tenant, Membership.Role.OWNER, django_user_model, client)
    alice = django_user_model.objects.create_user("alice", password="pw", is_staff=True)
    bob = django_user_model.objects.create_user("bob", password="pw", is_staff=True)
    Membership.objects.create(tenant=tenant, user=alice, role=Membership.Role.VIEWER)
    Membership.objects.create(tenant=tenant, user=bob, role=Membership.Role.STAFF)
    client.raise_request_exception = False

    tenant_page = url(Tenant, "change", tenant.pk)
    data = form_data(client.get(tenant_page))
    new = next(key[: -len("-TOTAL_FORMS")] for key in data if key.endswith("-TOTAL_FORMS") and data[key] == 0)
    data.update({f"{new}-TOTAL_FORMS": 1, f"{new}-0-user": "alice", f"{new}-0-role": "owner"})
    refused = client.post(tenant_page, data)
    assert refused.status_code == 200 and "already a member of this tenant" in refused.content.decode()
    assert Membership.objects.get(tenant=tenant, user=alice).role == Membership.Role.VIEWER


@pytest.mark.django_db
def test_a_member_added_by_a_colleague_after_the_check_is_refused_by_the_constraint_on_the_form(
    client, django_user_model, monkeypatch
):
    """The insert race: the form's check passed, a colleague's insert of the same user committed before
    this one. The unique constraint refuses it, and the page says so (nothing written, no 500)."""
    from core.admin import MembershipForm

    tenant = TenantFactory(slug="acme", name="Acme")
    staff_of(tenant, Membership.Role.OWNER, django_user_model, client)
    alice = django_user_model.objects.create_user("alice", password="pw", is_staff=True)
    tenant_page = url(Tenant, "change", tenant.pk)
    data = form_data(client.get(tenant_page))
    new = next(key[: -len("-TOTAL_FORMS")] for key in data if key.endswith("-TOTAL_FORMS") and data[key] == 0)
    data.update({f"{new}-TOTAL_FORMS": 1, f"{new}-0-user": "alice", f"{new}-0-role": "owner"})
    checked = MembershipForm.clean

    def colleague_first(form):  # the colleague's row lands between this form's check and its insert
        cleaned = checked(form)
        Membership.objects.get_or_create(tenant=tenant, user=alice, defaults={"role": Membership.Role.VIEWER})
        return cleaned

    monkeypatch.setattr(MembershipForm, "clean", colleague_first)
    client.raise_request_exception = False
    refused = client.post(tenant_page, data)
    assert refused.status_code == 200 and "already a member of this tenant" in refused.content.decode()
    assert Membership.objects.get(tenant=tenant, user=alice).role == Membership.Role.VIEWER


@pytest.mark.django_db
def test_only_a_superuser_deletes_a_tenant(client, admin_client, django_user_model):
    tenant = TenantFactory(slug="acme", name="Acme")
    staff_of(tenant, Membership.Role.OWNER, django_user_model, client)
    assert client.post(url(Tenant, "delete", tenant.pk), {"post": "yes"}).status_code == 403
    assert Tenant.objects.filter(pk=tenant.pk).exists()
    assert admin_client.post(url(Tenant, "delete", tenant.pk), {"post": "yes"}).status_code == 302
    assert not Tenant.objects.filter(pk=tenant.pk).exists()


@pytest.mark.django_db
def test_a_superuser_adds_a_tenant_with_its_first_owner(admin_client, django_user_model):
    django_user_model.objects.create_user("founder", password="pw", is_staff=True)
    data = form_data(admin_client.get(url(Tenant, "add")))
    *_listed, new = [key[: -len("-TOTAL_FORMS")] for key in data if key.endswith("-TOTAL_FORMS")]  # "add members"
    data.update({"name": "Globex", "slug": "globex", f"{new}-TOTAL_FORMS": 1})
    data.update({f"{new}-0-user": "founder", f"{new}-0-role": "owner"})
    response = admin_client.post(url(Tenant, "add"), data)
    assert response.status_code == 302, response.context and response.context.get("errors")
    tenant = Tenant.objects.get(slug="globex")
    assert (tenant.name, tenant.version) == ("Globex", 1)
    assert Membership.objects.get(tenant=tenant).user.username == "founder"


@pytest.mark.parametrize(
    "model, query",
    [
        (Profile, "created_at__year=9999"),  # the drill-down's next year is 10000
        (PaymentEvent, "received_at__year=9999"),
        (Booking, "date__year=9999&date__month=12&date__day=31"),
        (Booking, "created_at__year=99999"),  # any date field of the row, offered in the sidebar or not
        (Package, "created_at__year=0"),
        (ProcrastinateJob, "status__exact=zzz"),  # not one of the enum's values: the database refuses it
    ],
)
def test_a_list_filter_python_or_the_database_cannot_take_is_bad_parameters_never_a_500(
    model, query, demo, admin_client
):
    """Regression: Django's list page builds its dates and query from the parameters as they came: a 500."""
    admin_client.raise_request_exception = False
    response = admin_client.get(f"{url(model, 'changelist')}?{query}")
    assert response.status_code == 302 and response["Location"].endswith("?e=1"), response.status_code


def test_an_autocomplete_term_with_a_nul_finds_nothing_never_a_500(demo, admin_client):
    admin_client.raise_request_exception = False
    query = {"app_label": "proposals", "model_name": "proposal", "field_name": "package", "term": "a\x00"}
    response = admin_client.get("/admin/autocomplete/", query)
    assert response.status_code == 200 and response.json()["results"] == []


def test_an_id_box_names_only_a_row_of_the_users_tenants(demo, client, django_user_model):
    """Regression: ``?father=<id>`` on the profile add page named any tenant's profile beside the id box:
    a member of one tenant read another's profiles one id at a time."""
    theirs = Profile.objects.filter(tenant=demo).exclude(first_name="").first()
    other = TenantFactory(slug="other")
    ours = Profile.objects.create_profile(tenant=other, first_name="Omar", last_name="Ours", sex="male")
    staff_of(other, Membership.Role.STAFF, django_user_model, client)
    assert str(theirs) not in client.get(url(Profile, "add") + f"?father={theirs.pk}").content.decode()
    assert str(ours) in client.get(url(Profile, "add") + f"?father={ours.pk}").content.decode()


@pytest.mark.parametrize(
    ("model", "model_admin"),
    [(m, a) for m, a in REGISTERED if isinstance(a, TenantScopedAdminMixin)],
    ids=lambda item: getattr(item, "__name__", ""),
)
def test_a_garbled_selection_from_a_tenants_staff_changes_nothing_and_is_never_a_500(
    model, model_admin, demo, client, django_user_model
):
    """Regression: for anyone but a superuser the tenant scope filtered on the posted ids first: a 500."""
    staff_of(demo, Membership.Role.OWNER, django_user_model, client)
    client.raise_request_exception = False
    actions = list(model_admin.get_actions(client.get("/admin/").wsgi_request)) or ["delete_selected"]
    before = list(model._default_manager.order_by("pk").values())
    for action in actions:
        response = client.post(url(model, "changelist"), {"action": action, "index": 0, "_selected_action": ["abc"]})
        assert response.status_code in (200, 302), (action, response.status_code)
    assert list(model._default_manager.order_by("pk").values()) == before


def test_every_admin_answers_odd_input_without_a_500():
    """BadInputMixin on every registered admin: the tenant-scoped ones have it through their scope."""
    missing = [model._meta.label for model, model_admin in REGISTERED if not isinstance(model_admin, BadInputMixin)]
    assert missing == [], missing


@pytest.mark.parametrize(("page", "query"), [(Notification, "status__exact=%00"), (IdempotencyKey, "state__exact=%00")])
def test_the_notification_and_idempotency_key_lists_take_a_nul_in_a_filter(page, query, admin_client):
    admin_client.raise_request_exception = False
    response = admin_client.get(f"{url(page, 'changelist')}?{query}")
    assert response.status_code in (200, 302), response.status_code


def test_a_confirmation_carrying_a_version_no_integer_holds_acts_on_nothing_never_a_500(demo, admin_client):
    """A 5,000-digit ``seen_<pk>`` passed Python's limit of digits for int(): a 500."""
    profile = Profile.objects.filter(tenant=demo).first()
    admin_client.raise_request_exception = False
    response = admin_client.post(
        url(Profile, "changelist"),
        {
            "action": "soft_delete_selected",
            "apply": "1",
            "_selected_action": [profile.pk],
            f"seen_{profile.pk}": "9" * 5000,
        },
        follow=True,
    )
    assert response.status_code == 200
    assert any("version_conflict" in str(m) for m in response.context["messages"])
    assert Profile.objects.get(pk=profile.pk).deleted_at is None


@pytest.mark.django_db(transaction=True)
def test_a_rename_to_a_slug_another_tenant_took_meanwhile_is_a_form_error_never_a_500(client, django_user_model):
    """Forced interleaving: the form's unique check passed; a tenant created with that slug commits while the
    rename waits on it (core_tenant_slug_key): tenant_slug_taken on the slug field."""
    from tests.races import Background, OpenTransaction, wait_until_blocked

    tenant = TenantFactory(slug="acme", name="Acme")
    staff_of(tenant, Membership.Role.OWNER, django_user_model, client)
    change = url(Tenant, "change", tenant.pk)
    data = form_data(client.get(change))
    data["slug"] = "taken"
    with OpenTransaction(lambda: Tenant.objects.create(name="Taken", slug="taken")) as holder:
        save = Background(lambda: client.post(change, data))
        wait_until_blocked("core_tenant")
        holder.release.set()
    response = save.join().result
    assert save.error is None, save.error
    assert response.status_code == 200 and "Another tenant already has this slug" in response.content.decode()
    assert Tenant.objects.get(pk=tenant.pk).slug == "acme"


WRITE = re.compile(r'\b(?:INSERT INTO|UPDATE|DELETE FROM)\s+"(\w+)"', re.IGNORECASE)
# What a Save writes whatever the page: the admin's log of it, and the operator's session
NOT_THE_ROWS = {"django_admin_log", "django_session"}


def test_saving_any_change_page_as_it_shows_writes_no_row(demo, admin_client):
    """The class of the members-inline defect: a Save that writes back what its page read. A page posted
    back unchanged must write nothing (only the admin's log), whichever admin, inline or field it has."""
    saved, wrote = set(), {}
    for model, _model_admin in REGISTERED:
        row = model._default_manager.order_by("pk").first()
        if row is None:
            continue
        change = url(model, "change", row.pk)
        page = admin_client.get(change)
        if page.status_code != 200 or not page.context["adminform"].form.fields:
            continue
        if not page.context.get("has_change_permission"):
            continue  # a view-only page: no Save
        with CaptureQueriesContext(connection) as queries:
            answered = admin_client.post(change, form_data(page))
        assert answered.status_code == 302, (
            model._meta.label,
            answered.context and answered.context["adminform"].form.errors,
        )
        written = {table for query in queries for table in WRITE.findall(query["sql"])} - NOT_THE_ROWS
        if written:
            wrote[model._meta.label] = written
        saved.add(model._meta.label)
    assert wrote == {}
    assert {"core.Tenant", "core.Membership", "bookings.Package", "promos.PromoCode", "profiles.Profile"} <= saved


@pytest.mark.django_db
def test_an_operator_adds_a_user_and_opens_their_page(admin_client, django_user_model):
    """Regression: the user pages passed ``change`` to Django's UserAdmin.get_form by position: both were a 500."""
    add = url(django_user_model, "add")
    assert admin_client.get(add).status_code == 200
    created = admin_client.post(add, {"username": "newcomer", "usable_password": "false"})
    assert created.status_code == 302, created.context and created.context["adminform"].form.errors
    newcomer = django_user_model.objects.get(username="newcomer")
    assert admin_client.get(url(django_user_model, "change", newcomer.pk)).status_code == 200


@pytest.mark.django_db
def test_a_user_page_opened_before_a_colleague_deactivated_them_saves_only_what_was_changed(
    admin_client, django_user_model
):
    """Regression: a Save wrote every field as the page showed it: fixing a name re-activated a user a
    colleague had just deactivated (and so restored their access)."""
    mallory = django_user_model.objects.create_user("mallory", password="pw", is_staff=True, first_name="Mal")
    change = url(django_user_model, "change", mallory.pk)
    data = form_data(admin_client.get(change))
    django_user_model.objects.filter(pk=mallory.pk).update(is_active=False)  # a colleague, meanwhile
    data["first_name"] = "Mallory"
    assert admin_client.post(change, data).status_code == 302
    mallory.refresh_from_db()
    assert (mallory.first_name, mallory.is_active, mallory.is_staff) == ("Mallory", False, True)
    assert mallory.check_password("pw")


@pytest.mark.django_db
def test_a_users_page_never_shows_their_password_hash(admin_client, django_user_model):
    """Regression: every field posted the value it showed, the read-only password too: its full hash was in a
    hidden input for any staff member who could open the page (Django's own widget masks it)."""
    mallory = django_user_model.objects.create_user("mallory", password="pw")
    page = admin_client.get(url(django_user_model, "change", mallory.pk)).content.decode()
    assert mallory.password.split("$")[-1] not in page
    assert 'name="initial-password"' not in page


@pytest.mark.django_db
def test_a_user_save_changes_only_the_groups_the_operator_added_or_removed(admin_client, django_user_model):
    """Regression: Django's save_m2m set every many-to-many field as the page showed it: a Save that only
    fixed a name took away a group a colleague had just granted, and gave back a permission they revoked."""
    readers, writers, auditors = (Group.objects.create(name=name) for name in ("readers", "writers", "auditors"))
    grant = Permission.objects.get(codename="view_booking")
    mallory = django_user_model.objects.create_user("mallory", password="pw", first_name="Mal")
    mallory.groups.set([readers, auditors])
    mallory.user_permissions.set([grant])
    change = url(django_user_model, "change", mallory.pk)
    data = form_data(admin_client.get(change))
    mallory.groups.add(writers)  # a colleague, meanwhile: a group granted,
    mallory.user_permissions.remove(grant)  # a permission revoked
    data["first_name"] = "Mallory"
    assert admin_client.post(change, data).status_code == 302
    assert set(mallory.groups.all()) == {readers, writers, auditors}
    assert not mallory.user_permissions.exists()

    data = form_data(admin_client.get(change))
    mallory.groups.remove(readers)  # meanwhile again
    data["groups"] = [auditors.pk]  # this operator: writers taken away (and readers, which is already gone)
    assert admin_client.post(change, data).status_code == 302
    assert set(mallory.groups.all()) == {auditors}


@pytest.mark.django_db
def test_a_group_added_on_a_user_page_shown_again_after_an_error_is_saved(admin_client, django_user_model):
    """Regression: Django posts a multiple choice's shown values one input each, so an empty list posts
    nothing; the page shown again after an error then took the operator's selection for what it had shown,
    and the corrected Save added no group, though it said "changed successfully"."""
    writers = Group.objects.create(name="writers")
    newcomer = django_user_model.objects.create_user("newcomer", password="pw")
    change = url(django_user_model, "change", newcomer.pk)
    data = form_data(admin_client.get(change))
    data.update(groups=[writers.pk], email="not an address")
    again = admin_client.post(change, data)
    assert again.status_code == 200 and again.context["adminform"].form.errors  # shown again, with the error
    rendered = re.search(r'name="initial-groups" value="([^"]*)"', again.content.decode())
    assert rendered and json.loads(html.unescape(rendered.group(1))) == []  # still what it first showed
    data.update(email="newcomer@example.com", **{"initial-groups": html.unescape(rendered.group(1))})
    assert admin_client.post(change, data).status_code == 302
    assert list(newcomer.groups.all()) == [writers]


@pytest.mark.django_db
def test_a_group_save_changes_only_the_permissions_the_operator_added_or_removed(admin_client):
    view, change_booking, delete = (
        Permission.objects.get(codename=codename) for codename in ("view_booking", "change_booking", "delete_booking")
    )
    support = Group.objects.create(name="support")
    support.permissions.set([view, change_booking])
    change = url(Group, "change", support.pk)
    data = form_data(admin_client.get(change))
    support.permissions.remove(change_booking)  # a colleague revokes one, meanwhile
    data["permissions"] = [view.pk, change_booking.pk, delete.pk]  # this operator adds another
    assert admin_client.post(change, data).status_code == 302
    assert set(support.permissions.all()) == {view, delete}


@pytest.mark.django_db
def test_a_user_deleted_before_a_save_of_their_groups_is_refused_not_a_server_error(
    admin_client, admin_user, rf, django_user_model
):
    """Only a many-to-many field changed, so no column UPDATE finds the row gone: the user deleted after the
    POST read it is refused (DeletedMeanwhile, on the page), never a foreign key failing at COMMIT (a 500)."""
    from core.admin import UserAdmin
    from core.exceptions import DeletedMeanwhile

    readers = Group.objects.create(name="readers")
    gone = django_user_model.objects.create_user("gone", password="pw")
    data = form_data(admin_client.get(url(django_user_model, "change", gone.pk)))
    data["groups"] = [readers.pk]
    request = rf.post("/")
    request.user = admin_user
    form = UserAdmin(django_user_model, admin.site).get_form(request, gone, change=True)(data, instance=gone)
    assert form.is_valid(), form.errors
    form.save(commit=False)  # as the admin's save_form
    django_user_model.objects.filter(pk=gone.pk).delete()  # a colleague, meanwhile
    with pytest.raises(DeletedMeanwhile):
        form.save_m2m()  # as the admin's save_related
    assert not django_user_model.groups.through.objects.filter(group=readers).exists()


NEW_PASSWORD = {"password1": "a new Passw0rd!", "password2": "a new Passw0rd!", "usable_password": "true"}


def set_password_while(client, user, meanwhile, monkeypatch):
    """Post ``user``'s password page, ``meanwhile(user)`` (a colleague's write) committing as it hashes."""
    from django.contrib.auth.base_user import AbstractBaseUser

    hashing = AbstractBaseUser.set_password

    def hashing_meanwhile(target, raw):
        hashing(target, raw)
        meanwhile(target)

    monkeypatch.setattr(AbstractBaseUser, "set_password", hashing_meanwhile)
    return client.post(url(type(user), "password_change", user.pk), NEW_PASSWORD, follow=True)


@pytest.mark.django_db
def test_a_password_set_while_a_colleague_deactivates_the_user_keeps_them_deactivated(
    admin_client, django_user_model, monkeypatch
):
    """Regression: the password page saved the whole user row as it had read it, after hashing the password
    (up to a second): a deactivation committed meanwhile was undone, and the user's tokens worked again."""
    mallory = django_user_model.objects.create_user("mallory", password="old", is_staff=True)
    users = django_user_model.objects

    def deactivated(user):
        users.filter(pk=user.pk).update(is_active=False, is_staff=False)

    assert set_password_while(admin_client, mallory, deactivated, monkeypatch).status_code == 200
    mallory.refresh_from_db()
    assert (mallory.is_active, mallory.is_staff) == (False, False)
    assert mallory.check_password(NEW_PASSWORD["password1"])


@pytest.mark.django_db
def test_a_password_set_for_a_user_deleted_meanwhile_is_refused_not_a_server_error(
    admin_client, django_user_model, monkeypatch
):
    gone = django_user_model.objects.create_user("gone", password="old")
    users = django_user_model.objects
    answer = set_password_while(admin_client, gone, lambda user: users.filter(pk=user.pk).delete(), monkeypatch)
    assert answer.status_code == 200
    told = [str(message) for message in answer.context["messages"]]
    assert "Someone else deleted this while it was being saved. (not_found)" in told, told


@pytest.mark.django_db
def test_each_token_on_the_list_links_to_its_page(admin_client, django_user_model):
    """Regression: the list's bad-input guard replaced DRF's, which links a token by its user: every row's link
    led to "doesn't exist", so a leaked token could not be reached (and revoked) from the list."""
    user = django_user_model.objects.create_user("api-client", password="pw")
    Token.objects.create(user=user)
    listing = admin_client.get(url(TokenProxy, "changelist"))
    assert listing.status_code == 200
    link = url(TokenProxy, "change", user.pk)
    assert f'href="{link}"' in listing.content.decode()
    assert admin_client.get(link).status_code == 200


@pytest.mark.django_db
def test_a_token_page_opened_before_the_token_was_revoked_cannot_bring_it_back(admin_client, django_user_model):
    """Regression: a token's page saved the token by its key; a Save after a colleague revoked (deleted) it
    inserted the revoked key again. Tokens are made and revoked, never changed: the page is view-only."""
    user = django_user_model.objects.create_user("api-client", password="pw")
    token = Token.objects.create(user=user)
    change = url(TokenProxy, "change", user.pk)  # DRF's token pages are keyed by the user
    page = admin_client.get(change)
    assert page.status_code == 200 and not page.context["has_change_permission"]
    Token.objects.filter(key=token.key).delete()  # revoked, meanwhile
    assert admin_client.post(change, {"user": user.pk}).status_code == 403
    assert not Token.objects.filter(key=token.key).exists()


@pytest.mark.django_db
def test_a_user_deleted_while_their_page_was_being_saved_is_refused_not_inserted_again(rf, django_user_model):
    """The Save's UPDATE found no row (deleted after the POST read it): refused, never a row made anew."""
    from core.admin import UserAdmin
    from core.exceptions import DeletedMeanwhile

    gone = django_user_model.objects.create_user("gone", password="pw")
    form = type("Changed", (), {"changed_data": ["first_name"]})()
    django_user_model.objects.filter(pk=gone.pk).delete()  # a colleague, meanwhile
    gone.first_name = "Renamed"
    with pytest.raises(DeletedMeanwhile):
        UserAdmin(django_user_model, admin.site).save_model(rf.post("/"), gone, form, change=True)
    assert not django_user_model.objects.filter(username="gone").exists()


@pytest.mark.django_db
def test_a_member_page_saved_after_the_user_was_renamed_and_the_name_reused_keeps_the_member(client, django_user_model):
    """Regression: the member page named the user as it read them and a Save posted that name back; a
    colleague renaming the account meanwhile and giving the name to a new one moved the membership to that
    other person (the name differed from the one now stored, so it counted as changed). The user is read-only
    on a member's page now: a role change writes the role alone."""
    tenant = TenantFactory(slug="acme")
    staff_of(tenant, Membership.Role.OWNER, django_user_model, client)
    alice = django_user_model.objects.create_user("alice", password="pw", is_staff=True)
    member = Membership.objects.create(tenant=tenant, user=alice, role=Membership.Role.STAFF)
    change = url(Membership, "change", member.pk)
    data = form_data(client.get(change))
    django_user_model.objects.filter(pk=alice.pk).update(username="alice-old")  # meanwhile, a superuser
    newcomer = django_user_model.objects.create_user("alice", password="pw", is_staff=True)
    data.update(user="alice", role=Membership.Role.VIEWER)
    assert client.post(change, data).status_code == 302
    assert Membership.objects.values_list("user", "role").get(pk=member.pk) == (alice.pk, Membership.Role.VIEWER)
    assert not Membership.objects.filter(user=newcomer).exists()
