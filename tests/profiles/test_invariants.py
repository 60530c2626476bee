"""Each invariant of profiles/invariants.py detects the defect it is about.

A defect is planted with raw writes that bypass the managers; where a trigger or CHECK
would refuse it, that backstop is switched off inside the test's transaction only
(``ALTER TABLE ... DISABLE TRIGGER`` / ``DROP CONSTRAINT`` are transactional: the
rollback at the end of the test restores them).
"""

import pytest
from django.db import connection
from django.utils import timezone

from profiles import invariants
from profiles.models import Profile, ProfileAuditLog
from tests.profiles.factories import ProfileFactory

pytestmark = pytest.mark.django_db


def disable_trigger(model, name):
    (trigger,) = [t for t in model._meta.triggers if t.name == name]
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # ALTER TABLE refuses pending deferred FK checks
        cursor.execute(f'ALTER TABLE "{model._meta.db_table}" DISABLE TRIGGER "{trigger.get_pgid(model)}"')


def drop_constraint(model, name):
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(f'ALTER TABLE "{model._meta.db_table}" DROP CONSTRAINT "{name}"')


def undone_entry(profile, **change):
    """Update ``profile`` through the manager and undo that update; return the undone entry."""
    profile = Profile.objects.get(pk=profile.pk)
    Profile.objects.update_profile(profile.pk, tenant=profile.tenant_id, version=profile.version, **change)
    entry = ProfileAuditLog.objects.filter(profile=profile, action="update").latest("pk")
    return ProfileAuditLog.objects.undo(entry.pk, tenant=profile.tenant_id, actor=None, reason="r")


def test_all_hold_on_rows_written_by_the_managers(tree):
    undone_entry(tree["kid"], first_name="Renamed")
    Profile.objects.soft_delete(tree["kid"].pk, tenant=tree["kid"].tenant, version=3)
    for check in [
        invariants.parents_are_valid,
        invariants.no_cycles,
        invariants.undo_links_are_consistent,
        invariants.versions_match_the_audit_log,
    ]:
        assert check(None) == [], check.__name__


def test_a_live_child_of_a_deleted_parent_is_reported(tree):
    disable_trigger(Profile, "profile_children_transition")
    Profile.objects.filter(pk=tree["dad"].pk).update(deleted_at=timezone.now())
    assert invariants.parents_are_valid(None) == [f"profile {tree['kid'].pk}"]
    assert invariants.parents_are_valid(tree["kid"].tenant) == [f"profile {tree['kid'].pk}"]


def test_a_cycle_is_reported(tree):
    # The parent trigger refuses a cycle too: switched off, a raw write closes one (the drift the report finds).
    disable_trigger(Profile, "profile_parent_transition")
    Profile.objects.filter(pk=tree["grandpa"].pk).update(father=tree["kid"])
    found = invariants.no_cycles(None)
    assert sorted(found) == sorted(f"profile {tree[key].pk} is its own ancestor" for key in ["grandpa", "dad", "kid"])


@pytest.mark.parametrize(
    "half_cleared",
    ["undo_entry", "undone_at"],
    ids=["undone-without-its-undo-entry", "linking-an-undo-entry-while-not-undone"],
)
def test_an_entry_with_only_half_of_its_undo_link_is_reported(tree, half_cleared):
    entry = undone_entry(tree["kid"], first_name="Renamed")
    drop_constraint(ProfileAuditLog, "audit_undone_has_undo_entry")
    disable_trigger(ProfileAuditLog, "audit_append_only_transition")
    ProfileAuditLog.objects.filter(pk=entry.pk).update(**{half_cleared: None})
    assert f"audit entry {entry.pk}" in invariants.undo_links_are_consistent(None)


def test_an_undo_entry_of_another_profile_is_reported(tree):
    entry = undone_entry(tree["kid"], first_name="Renamed")
    elsewhere = ProfileAuditLog.objects.create(
        tenant=entry.tenant, profile=tree["mum"], action="undo", old_data={}, new_data={}
    )
    disable_trigger(ProfileAuditLog, "audit_append_only_transition")
    disable_trigger(ProfileAuditLog, "audit_links_transition")  # planted: the database refuses it now
    ProfileAuditLog.objects.filter(pk=entry.pk).update(undo_entry=elsewhere)
    # The entry's own row is consistent in every other way (undone, linked, to an undo entry):
    # only the "same profile" rule names it. (Its former undo entry now undid nothing: named too.)
    found = invariants.undo_links_are_consistent(None)
    assert f"audit entry {entry.pk}" in found
    assert f"audit entry {elsewhere.pk}" not in found


def test_an_undo_link_to_an_entry_that_is_not_an_undo_is_reported(tree):
    entry = undone_entry(tree["kid"], first_name="Renamed")
    create = ProfileAuditLog.objects.get(profile=tree["kid"], action="create")
    disable_trigger(ProfileAuditLog, "audit_append_only_transition")
    disable_trigger(ProfileAuditLog, "audit_links_transition")  # planted: the database refuses it now
    ProfileAuditLog.objects.filter(pk=entry.pk).update(undo_entry=create)
    assert f"audit entry {entry.pk}" in invariants.undo_links_are_consistent(None)


def test_an_undo_entry_that_undid_nothing_is_reported(tree):
    stray = ProfileAuditLog.objects.create(
        tenant=tree["kid"].tenant, profile=tree["kid"], action="undo", old_data={}, new_data={}
    )
    assert invariants.undo_links_are_consistent(None) == [f"audit entry {stray.pk}"]


def test_a_change_without_its_audit_entry_is_reported(tree):
    kid = tree["kid"]
    # The profile_version_bump trigger bumps the version of this unaudited write: 2, with 0 changes logged.
    Profile.objects.filter(pk=kid.pk).update(first_name="Unaudited")
    assert invariants.versions_match_the_audit_log(None) == [
        f"profile {kid.pk}: version 2, 1 create and 0 other entries"
    ]


def test_an_audit_entry_without_its_version_bump_is_reported(tree):
    kid = tree["kid"]
    ProfileAuditLog.objects.create(tenant=kid.tenant, profile=kid, action="update", old_data={}, new_data={})
    assert invariants.versions_match_the_audit_log(kid.tenant) == [
        f"profile {kid.pk}: version 1, 1 create and 1 other entries"
    ]


def test_a_profile_without_its_create_entry_is_reported(tenant):
    ghost = Profile.objects.create(tenant=tenant, first_name="Ghost", sex="male")
    ProfileFactory(tenant=tenant)  # a sound one beside it
    assert invariants.versions_match_the_audit_log(None) == [
        f"profile {ghost.pk}: version 1, 0 create and 0 other entries"
    ]
