"""A member is removed only at the version the remover was shown, whichever path removes them.

``Membership.objects.delete_member`` locks the row and compares versions; the member's delete page,
the list's bulk removal (its confirmation page) and the tenant page's members inline each carry the
version they showed. A colleague's change in between (a promotion to owner, say) makes the removal a
``version_conflict``: the member stays, and nothing is logged as done.
"""

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.db import transaction

from core.db import LockNamespace
from core.exceptions import NotFound, VersionConflict
from core.guards import database_refusals
from core.models import Membership, Tenant
from tests.core.test_admin_scope import confirm_delete, form_data, url
from tests.core.test_last_owner import OWNER, STAFF, members, owners
from tests.factories import TenantFactory
from tests.races import (
    Background,
    advisory_locked,
    attempted_while_held,
    lock_waiters,
    run_concurrently,
    tally,
    wait_until,
)

VIEWER = Membership.Role.VIEWER
CHANGED = "changed by someone else"  # version_conflict, as the admin says it


def promote(membership):
    fresh = Membership.objects.get(pk=membership.pk)
    return Membership.objects.edit_member(fresh.pk, version=fresh.version, role=OWNER)


def messages_of(response):
    return [str(message) for message in response.context["messages"]] if response.context else []


@pytest.fixture
def team(client):
    """An owner (logged in), a colleague owner, and a viewer: three members of one tenant."""
    tenant = TenantFactory(slug="acme")
    owner, colleague, viewer = members(tenant, OWNER, OWNER, VIEWER)
    client.force_login(owner.user)
    return owner, colleague, viewer


# --- the manager --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_delete_member_removes_at_the_version_read_and_refuses_a_stale_one(team):
    _owner, _colleague, viewer = team
    promote(viewer)  # version 2 now
    with pytest.raises(VersionConflict) as refused:
        Membership.objects.delete_member(viewer.pk, version=1)
    assert refused.value.params == {"current": 2}
    assert Membership.objects.filter(pk=viewer.pk).exists()

    Membership.objects.delete_member(viewer.pk, version=2)
    assert not Membership.objects.filter(pk=viewer.pk).exists()
    with pytest.raises(NotFound):
        Membership.objects.delete_member(viewer.pk, version=2)


@pytest.mark.django_db(transaction=True)
def test_a_removal_waiting_on_a_colleagues_promotion_is_refused_when_it_commits():
    """The version is judged under the row lock: a removal that waited for the edit sees the edit's version."""
    tenant = TenantFactory(slug="acme")
    _owner, viewer = members(tenant, OWNER, VIEWER)
    outcome = attempted_while_held(
        lambda: Membership.objects.edit_member(viewer.pk, version=1, role=OWNER),
        lambda i: Membership.objects.delete_member(viewer.pk, version=1),
    )
    assert outcome.code == "version_conflict", repr(outcome.error)
    assert Membership.objects.get(pk=viewer.pk).role == OWNER


@pytest.mark.django_db(transaction=True)
def test_removals_at_one_version_at_once_remove_the_member_once():
    tenant = TenantFactory(slug="acme")
    owner, viewer = members(tenant, OWNER, VIEWER)
    outcomes = run_concurrently(lambda i: Membership.objects.delete_member(viewer.pk, version=1), 6)
    assert tally(outcomes) == {"ok": 1, "not_found": 5}
    assert list(Membership.objects.filter(tenant=tenant)) == [owner]


# --- the member's delete page -------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_delete_page_removes_the_member_it_showed_not_one_promoted_since(client, team):
    owner, _colleague, viewer = team
    page, refused = confirm_delete(client, Membership, viewer.pk, meanwhile=lambda: promote(viewer))
    assert page.context["seen_version"] == 1
    assert any(CHANGED in text for text in messages_of(refused)), messages_of(refused)
    assert Membership.objects.get(pk=viewer.pk).role == OWNER
    assert not LogEntry.objects.exists()

    _page, removed = confirm_delete(client, Membership, viewer.pk)  # shown again, as it is now
    assert removed.status_code == 200 and not Membership.objects.filter(pk=viewer.pk).exists()
    assert LogEntry.objects.count() == 1
    assert owners(owner.tenant) == 2


@pytest.mark.django_db
def test_a_delete_post_without_the_version_shown_is_refused(client, team):
    _owner, _colleague, viewer = team
    for carried in ({}, {"seen_version": ""}, {"seen_version": "٣"}, {"seen_version": "-1"}):
        response = client.post(url(Membership, "delete", viewer.pk), {"post": "yes", **carried}, follow=True)
        assert response.status_code == 200
        assert Membership.objects.filter(pk=viewer.pk).exists(), carried
    assert not LogEntry.objects.exists()


# --- the list's bulk removal --------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_bulk_removal_confirms_first_and_removes_each_member_at_the_version_shown(client, team):
    owner, colleague, viewer = team
    changelist = url(Membership, "changelist")
    actions = client.get(changelist).context["action_form"].fields["action"].choices
    assert "delete_selected" not in dict(actions)  # Django's own deletes rows as they stand

    chosen = {"action": "delete_selected_members", "_selected_action": [colleague.pk, viewer.pk]}
    page = client.post(changelist, chosen)
    assert page.status_code == 200 and Membership.objects.count() == 3  # a confirmation, nothing removed yet
    assert f'name="seen_{viewer.pk}" value="1"' in page.content.decode()

    promote(viewer)  # after the page showed them as a viewer
    confirmed = client.post(
        changelist, {**chosen, "apply": "1", f"seen_{colleague.pk}": "1", f"seen_{viewer.pk}": "1"}, follow=True
    )
    texts = messages_of(confirmed)
    assert any(viewer.user.username in text and CHANGED in text for text in texts), texts
    assert any("1 member removed" in text for text in texts), texts
    assert set(Membership.objects.values_list("pk", flat=True)) == {owner.pk, viewer.pk}


@pytest.mark.django_db
def test_the_bulk_removal_refuses_a_confirmation_without_versions_and_the_last_owner(client, team):
    owner, colleague, viewer = team
    changelist = url(Membership, "changelist")
    blind = {"action": "delete_selected_members", "apply": "1", "_selected_action": [viewer.pk]}
    client.post(changelist, blind, follow=True)
    assert Membership.objects.filter(pk=viewer.pk).exists()

    Membership.objects.delete_member(colleague.pk, version=1)  # the logged-in owner is the last one now
    last = {"action": "delete_selected_members", "apply": "1", "_selected_action": [owner.pk], f"seen_{owner.pk}": "1"}
    texts = messages_of(client.post(changelist, last, follow=True))
    assert any("last_owner" in text or "owner first" in text for text in texts), texts
    assert owners(owner.tenant) == 1


# --- the tenant page's members inline -----------------------------------------------------------------


def inline_row(page, membership):
    (formset,) = [i.formset for i in page.context["inline_admin_formsets"] if i.formset.initial_form_count()]
    (row,) = [form for form in formset.forms if form.instance.pk == membership.pk]
    return row


@pytest.mark.django_db
def test_the_tenant_pages_delete_box_removes_the_member_as_the_page_showed_them(client, team):
    owner, _colleague, viewer = team
    change = url(Tenant, "change", owner.tenant_id)
    page = client.get(change)
    row = inline_row(page, viewer)
    data = form_data(page)
    assert data[row.add_prefix("seen_version")] == 1
    data[row.add_prefix("DELETE")] = "on"

    promote(viewer)  # meanwhile
    refused = client.post(change, data)
    assert refused.status_code == 200 and CHANGED in refused.content.decode()
    assert not any("successfully" in text for text in messages_of(refused))
    assert Membership.objects.get(pk=viewer.pk).role == OWNER and not LogEntry.objects.exists()

    del data[row.add_prefix("seen_version")]  # a page from before the version was carried
    assert client.post(change, data).status_code == 200
    assert Membership.objects.filter(pk=viewer.pk).exists()

    page = client.get(change)  # shown again: an owner now, and the owner means it
    data = form_data(page)
    data[inline_row(page, viewer).add_prefix("DELETE")] = "on"
    assert client.post(change, data).status_code == 302
    assert not Membership.objects.filter(pk=viewer.pk).exists()
    assert owners(owner.tenant) == 2 and Membership.objects.get(pk=owner.pk).role == OWNER
    assert STAFF not in Membership.objects.values_list("role", flat=True)


@pytest.mark.django_db(transaction=True)
def test_two_owners_removing_each_other_at_once_leave_the_tenant_one():
    """Each removal counts the owners left under the tenant's owner lock: the second sees the first's commit."""
    tenant = TenantFactory(slug="acme")
    first, second = members(tenant, OWNER, OWNER)
    outcomes = run_concurrently(lambda i: Membership.objects.delete_member((first, second)[i].pk, version=1), 2)
    assert tally(outcomes) == {"ok": 1, "last_owner": 1}
    assert owners(tenant) == 1


@pytest.mark.django_db(transaction=True)
def test_a_removal_meeting_an_uncommitted_removal_of_the_other_owner_is_refused_when_it_commits():
    """Forced: the first removal has counted (an owner left) and holds the tenant's owner lock, uncommitted; the
    second waits for it, then counts on a snapshot that sees the first gone: last_owner. Without the lock it
    would count the first as still there, and both would commit."""
    tenant = TenantFactory(slug="acme")
    first, second = members(tenant, OWNER, OWNER)
    outcome = attempted_while_held(
        lambda: Membership.objects.delete_member(first.pk, version=1),
        lambda i: Membership.objects.delete_member(second.pk, version=1),
    )
    assert outcome.code == "last_owner", repr(outcome.error)
    assert list(Membership.objects.filter(tenant=tenant)) == [second]


# --- a user's deletion, the other writer of a membership ----------------------------------------------


def delete_user(membership):
    """The users page's delete: the user and, by cascade, their memberships, the database's refusals named."""
    with database_refusals(), transaction.atomic():
        get_user_model().objects.get(pk=membership.user_id).delete()


def users_left(*memberships):
    return get_user_model().objects.filter(pk__in=[membership.user_id for membership in memberships]).count()


@pytest.mark.django_db(transaction=True)
def test_a_removal_waiting_on_the_members_uncommitted_deletion_as_a_user_finds_nothing_to_remove():
    """Forced: the user's deletion has cascaded to the membership and holds it, uncommitted; the removal waits
    for the row, then finds it gone: not_found, nothing else written."""
    tenant = TenantFactory(slug="acme")
    owner, viewer = members(tenant, OWNER, VIEWER)
    outcome = attempted_while_held(
        lambda: delete_user(viewer), lambda i: Membership.objects.delete_member(viewer.pk, version=1)
    )
    assert outcome.code == "not_found", repr(outcome.error)
    assert list(Membership.objects.filter(tenant=tenant)) == [owner] and users_left(viewer) == 0


@pytest.mark.django_db(transaction=True)
def test_a_users_deletion_waiting_on_an_uncommitted_removal_of_their_membership_still_deletes_the_user():
    """Forced the other way: the removal holds the deleted row; the user's cascade waits for it, then deletes
    the user with nothing left to cascade to."""
    tenant = TenantFactory(slug="acme")
    owner, viewer = members(tenant, OWNER, VIEWER)
    outcome = attempted_while_held(
        lambda: Membership.objects.delete_member(viewer.pk, version=1), lambda i: delete_user(viewer)
    )
    assert outcome.ok, repr(outcome.error)
    assert list(Membership.objects.filter(tenant=tenant)) == [owner] and users_left(viewer) == 0


@pytest.mark.django_db(transaction=True)
def test_an_owners_deletion_as_a_user_and_the_removal_of_the_other_owner_at_once_leave_the_tenant_one():
    """A user's deletion is judged at its commit, a removal at once: both count under the tenant's owner lock."""
    tenant = TenantFactory(slug="acme")
    first, second = members(tenant, OWNER, OWNER)
    outcomes = run_concurrently(
        lambda i: delete_user(first) if i == 0 else Membership.objects.delete_member(second.pk, version=1), 2
    )
    assert tally(outcomes) == {"ok": 1, "last_owner": 1}
    assert owners(tenant) == 1 and users_left(first, second) == 2 - outcomes[0].ok


@pytest.mark.django_db(transaction=True)
def test_an_owners_deletion_and_a_removal_whose_counts_meet_are_judged_one_after_the_other():
    """Forced: another connection holds the tenant's owner lock until both the user's deletion (at its
    COMMIT) and the removal (its count, at once) wait for it; released, exactly one is refused."""
    tenant = TenantFactory(slug="acme")
    first, second = members(tenant, OWNER, OWNER)
    with advisory_locked(LockNamespace.TENANT_OWNERS, tenant.pk):
        attempts = [
            Background(lambda: delete_user(first)),
            Background(lambda: Membership.objects.delete_member(second.pk, version=1)),
        ]
        wait_until(lambda: lock_waiters() == 2)
    for attempt in attempts:
        attempt.join()
    assert sorted(attempt.outcome.code for attempt in attempts) == ["last_owner", "ok"]
    assert owners(tenant) == 1
