"""A tenant that has an owner keeps one, whichever path writes its memberships.

The rule lives in the database (the ``membership_keeps_an_owner`` constraint trigger, judged at
commit under the tenant's ``core.tenant_owners`` advisory lock): the manager, the admin's member
page, its delete view and bulk delete, a user's deletion and a raw UPDATE all meet it.
"""

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction

from core.db import LockNamespace
from core.exceptions import LastOwner
from core.guards import database_refusals
from core.models import Membership, Tenant
from tests.core.test_admin_scope import confirm_delete, form_data, url
from tests.factories import TenantFactory
from tests.races import Background, advisory_locked, lock_waiters, run_concurrently, tally, wait_until

OWNER, STAFF = Membership.Role.OWNER, Membership.Role.STAFF


def members(tenant, *roles, prefix="u"):
    User = get_user_model()
    return [
        Membership.objects.create(
            tenant=tenant, role=role, user=User.objects.create_user(f"{prefix}{i}", password="pw", is_staff=True)
        )
        for i, role in enumerate(roles)
    ]


def demote(membership):
    fresh = Membership.objects.get(pk=membership.pk)
    return Membership.objects.edit_member(fresh.pk, version=fresh.version, role=STAFF)


def owners(tenant):
    return Membership.objects.filter(tenant=tenant, role=OWNER).count()


@pytest.mark.django_db(transaction=True)
def test_the_last_owner_is_not_demoted_and_another_owner_may_be():
    tenant = TenantFactory(slug="acme")
    first, second = members(tenant, OWNER, OWNER)
    demote(first)
    with pytest.raises(LastOwner):
        demote(second)
    assert owners(tenant) == 1 and Membership.objects.get(pk=second.pk).role == OWNER


@pytest.mark.django_db(transaction=True)
def test_every_writer_meets_the_rule_a_raw_update_a_delete_and_a_users_deletion():
    tenant = TenantFactory(slug="acme")
    (owner,) = members(tenant, OWNER)
    for statement in (
        "UPDATE core_membership SET role = 'staff' WHERE id = %s",
        "DELETE FROM core_membership WHERE id = %s",
    ):
        with pytest.raises(IntegrityError, match="would have no owner"), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(statement, [owner.pk])
    with pytest.raises(LastOwner), database_refusals(), transaction.atomic():
        owner.user.delete()
    assert owners(tenant) == 1 and get_user_model().objects.filter(pk=owner.user_id).exists()


@pytest.mark.django_db(transaction=True)
def test_ownership_may_be_handed_over_in_one_transaction_and_a_tenant_deleted_with_its_owner():
    tenant = TenantFactory(slug="acme")
    owner, colleague = members(tenant, OWNER, STAFF)
    with transaction.atomic():
        Membership.objects.edit_member(colleague.pk, version=colleague.version, role=OWNER)
        demote(owner)
    assert list(Membership.objects.filter(tenant=tenant, role=OWNER)) == [colleague]
    tenant.delete()  # Django deletes the members first: the tenant row is gone by the commit
    assert not Tenant.objects.filter(pk=tenant.pk).exists() and not Membership.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_owners_demoting_themselves_at_once_leave_exactly_one():
    """Each commit would count the others as owners still (none committed yet): counted one at a time,
    the last to count sees every other demotion and is refused."""
    tenant = TenantFactory(slug="acme")
    everyone = members(tenant, *[OWNER] * 6)
    outcomes = run_concurrently(lambda i: demote(everyone[i]), len(everyone))
    assert tally(outcomes) == {"ok": 5, "last_owner": 1}
    refused = next(member for member, outcome in zip(everyone, outcomes, strict=True) if not outcome.ok)
    assert list(Membership.objects.filter(tenant=tenant, role=OWNER)) == [refused]


@pytest.mark.django_db(transaction=True)
def test_two_demotions_whose_commits_meet_are_counted_one_after_the_other():
    """Forced: both transactions reach their COMMIT while another connection holds the tenant's owner
    lock, so both are ready to count at once; when it is released, exactly one is refused."""
    tenant = TenantFactory(slug="acme")
    first, second = members(tenant, OWNER, OWNER)
    with advisory_locked(LockNamespace.TENANT_OWNERS, tenant.pk):
        attempts = [Background(lambda m=m: demote(m)) for m in (first, second)]
        wait_until(lambda: lock_waiters() == 2)  # both COMMITs wait for the count
    for attempt in attempts:
        attempt.join()
    assert sorted(attempt.outcome.code for attempt in attempts) == ["last_owner", "ok"]
    assert owners(tenant) == 1


@pytest.fixture
def sole_owner(client):
    tenant = TenantFactory(slug="acme")
    owner, colleague = members(tenant, OWNER, STAFF)
    client.force_login(owner.user)
    return owner, colleague


def refusal_said(response):
    texts = [str(message) for message in response.context["messages"]] if response.context else []
    return [text for text in texts if "last_owner" in text or "owner first" in text], texts


@pytest.mark.django_db
def test_the_member_page_refuses_a_last_owner_demoting_themselves(client, sole_owner):
    owner, _colleague = sole_owner
    change = url(Membership, "change", owner.pk)
    data = form_data(client.get(change))
    data["role"] = STAFF
    refused = client.post(change, data)
    assert refused.status_code == 200 and "make another member an owner first" in refused.content.decode()
    assert Membership.objects.get(pk=owner.pk).role == OWNER
    assert not any("successfully" in str(message) for message in refused.context["messages"])
    assert not LogEntry.objects.exists()  # nothing logged for a change that did not happen


@pytest.mark.django_db
def test_the_delete_page_and_the_bulk_delete_refuse_to_remove_the_last_owner(client, sole_owner):
    owner, colleague = sole_owner
    _page, response = confirm_delete(client, Membership, owner.pk)  # at the version the page showed
    said, texts = refusal_said(response)
    assert said and not any("successfully" in text for text in texts)
    assert not LogEntry.objects.exists()
    selected = [owner.pk, colleague.pk]
    bulk = {"action": "delete_selected_members", "apply": "1", "_selected_action": selected}
    response = client.post(
        url(Membership, "changelist"), {**bulk, **{f"seen_{pk}": "1" for pk in selected}}, follow=True
    )
    said, texts = refusal_said(response)
    assert said and any("1 member removed" in text for text in texts), texts  # each row on its own: the colleague
    assert list(Membership.objects.filter(tenant=owner.tenant)) == [owner]


@pytest.mark.django_db
def test_deleting_a_user_who_is_a_tenants_last_owner_is_refused_on_the_users_page(admin_client):
    tenant = TenantFactory(slug="acme")
    (owner,) = members(tenant, OWNER)
    response = admin_client.post(url(get_user_model(), "delete", owner.user_id), {"post": "yes"}, follow=True)
    said, _texts = refusal_said(response)
    assert said and get_user_model().objects.filter(pk=owner.user_id).exists()
    assert owners(tenant) == 1


@pytest.mark.django_db
def test_the_tenant_pages_members_inline_refuses_to_delete_the_last_owner(client, sole_owner):
    """The tenant's page saves its inlines in ``save_related``: the delete box on the last owner's row is
    judged there (``judge_now``), before Django reports success or logs the change."""
    owner, colleague = sole_owner
    change = url(Tenant, "change", owner.tenant_id)
    page = client.get(change)
    data = form_data(page)
    (members_inline,) = [i.formset for i in page.context["inline_admin_formsets"] if i.formset.initial_form_count()]
    (row,) = [form for form in members_inline.forms if form.instance.pk == owner.pk]
    data[row.add_prefix("DELETE")] = "on"
    refused = client.post(change, data)
    assert refused.status_code == 200 and "make another member an owner first" in refused.content.decode()
    assert not any("successfully" in str(message) for message in refused.context["messages"])
    assert Membership.objects.filter(tenant=owner.tenant).count() == 2 and owners(owner.tenant) == 1
    assert not LogEntry.objects.exists()

    (row,) = [form for form in members_inline.forms if form.instance.pk == colleague.pk]
    data = form_data(client.get(change))
    data[row.add_prefix("DELETE")] = "on"  # a colleague who is not an owner may go
    assert client.post(change, data).status_code == 302
    assert list(Membership.objects.filter(tenant=owner.tenant)) == [owner]


@pytest.mark.django_db
def test_an_owner_hands_the_tenant_over_in_one_save_of_its_page(client, sole_owner):
    """Adding the next owner and ticking one's own delete box in one Save hands the tenant over: the new members
    are saved before the delete boxes are judged (it was refused last_owner, the removal judged first)."""
    owner, colleague = sole_owner
    change = url(Tenant, "change", owner.tenant_id)
    page = client.get(change)
    data = form_data(page)
    formsets = [i.formset for i in page.context["inline_admin_formsets"]]
    (listed,) = [formset for formset in formsets if formset.initial_form_count()]
    (new,) = [formset for formset in formsets if not formset.initial_form_count()]
    (row,) = [form for form in listed.forms if form.instance.pk == owner.pk]
    data[row.add_prefix("DELETE")] = "on"
    successor = get_user_model().objects.create_user("successor", password="pw", is_staff=True)
    data.update({f"{new.prefix}-TOTAL_FORMS": 1, f"{new.prefix}-0-user": "successor", f"{new.prefix}-0-role": OWNER})
    response = client.post(change, data)
    assert response.status_code == 302, response.context and response.context.get("errors")
    assert not Membership.objects.filter(pk=owner.pk).exists()
    assert Membership.objects.get(tenant=owner.tenant, user=successor).role == OWNER and owners(owner.tenant) == 1


@pytest.mark.django_db(transaction=True)
def test_a_member_added_on_the_tenant_page_whose_user_was_deleted_meanwhile_is_refused_on_the_page(
    client, sole_owner, monkeypatch
):
    """Regression: a colleague deleting the user between the page's check of the name and the membership's insert
    left a foreign key the database refused at the admin's check: a 500. Now the page says it changed meanwhile
    and nothing is written (any refusal no guard names, in every guarded admin page)."""
    from core import admin as core_admin

    owner, _colleague = sole_owner
    bob = get_user_model().objects.create_user("bob", password="pw", is_staff=True)
    save_related = core_admin.TenantAdmin.save_related

    def after_the_page_checked_bob_a_colleague_deletes_him(admin_, *args):
        Background(lambda: get_user_model().objects.filter(pk=bob.pk).delete()).join()
        return save_related(admin_, *args)

    monkeypatch.setattr(core_admin.TenantAdmin, "save_related", after_the_page_checked_bob_a_colleague_deletes_him)
    change = url(Tenant, "change", owner.tenant_id)
    page = client.get(change)
    data = form_data(page)
    (new,) = [i.formset for i in page.context["inline_admin_formsets"] if not i.formset.initial_form_count()]
    data.update({f"{new.prefix}-TOTAL_FORMS": 1, f"{new.prefix}-0-user": "bob", f"{new.prefix}-0-role": STAFF})
    response = client.post(change, data)
    assert response.status_code == 200
    assert "changed this meanwhile" in response.content.decode()
    assert not get_user_model().objects.filter(pk=bob.pk).exists()
    assert Membership.objects.filter(tenant=owner.tenant).count() == 2 and not LogEntry.objects.exists()
