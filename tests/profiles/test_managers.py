"""Guarded operations of Profile.objects and ProfileAuditLog.objects, one connection at a time."""

from datetime import date

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import translation

from core.exceptions import DomainError
from profiles import selectors
from profiles.models import Profile, ProfileAuditLog
from tests.factories import TenantFactory, UserFactory
from tests.profiles.factories import ProfileFactory, fresh

pytestmark = pytest.mark.django_db


def refused(code, call, *args, **kwargs):
    with pytest.raises(DomainError) as info:
        call(*args, **kwargs)
    assert info.value.code == code, info.value
    return info.value


def last_entry(profile):
    return ProfileAuditLog.objects.filter(profile=profile).order_by("-id").first()


def real(queries):
    """The statements of a capture, without the test transaction's savepoints."""
    return [q["sql"] for q in queries if "SAVEPOINT" not in q["sql"]]


def update(profile, **changes):
    current = fresh(profile)
    return Profile.objects.update_profile(current.pk, tenant=current.tenant_id, version=current.version, **changes)


# --- create / update / delete / restore ------------------------------------


def test_create_writes_entry_and_starts_at_version_1(tenant):
    actor = UserFactory()
    dad = ProfileFactory(tenant=tenant)
    kid = Profile.objects.create_profile(
        tenant=tenant, actor=actor, first_name="Kid", sex="female", birth_date=date(2000, 1, 2), father=dad.pk
    )
    assert kid.version == 1 and kid.father_id == dad.pk
    entry = last_entry(kid)
    assert entry.action == "create" and entry.actor == actor and entry.old_data == {}
    assert entry.new_data == {
        "first_name": "Kid",
        "last_name": "",
        "sex": "female",
        "birth_date": "2000-01-02",
        "death_date": None,
        "father": dad.pk,
        "mother": None,
    }
    assert entry.created_at is not None and entry.tenant_id == tenant.pk


def test_update_records_only_changed_fields_and_bumps_version(tree):
    kid = tree["kid"]
    updated = update(kid, first_name="Kiddo", last_name="Family", birth_date=date(2010, 5, 6))
    assert updated.version == 2
    entry = last_entry(kid)
    assert entry.action == "update"
    assert entry.old_data == {"first_name": "Kid", "birth_date": None}
    assert entry.new_data == {"first_name": "Kiddo", "birth_date": "2010-05-06"}
    assert fresh(kid).first_name == "Kiddo"


def test_update_with_nothing_changed_writes_nothing(tree):
    kid = tree["kid"]
    before = ProfileAuditLog.objects.count()
    assert update(kid, first_name="Kid").version == 1
    assert ProfileAuditLog.objects.count() == before


def test_stale_version_is_version_conflict(tree):
    kid = tree["kid"]
    update(kid, first_name="A")
    error = refused(
        "version_conflict", Profile.objects.update_profile, kid.pk, tenant=kid.tenant, version=1, first_name="B"
    )
    assert "2" in error.render()
    refused("version_conflict", Profile.objects.soft_delete, kid.pk, tenant=kid.tenant, version=1)
    assert fresh(kid).first_name == "A"


def test_soft_delete_and_restore(tree):
    kid = tree["kid"]
    deleted = Profile.objects.soft_delete(kid.pk, tenant=kid.tenant, version=1)
    assert deleted.deleted_at is not None and deleted.version == 2
    assert last_entry(kid).new_data == {"deleted_at": deleted.deleted_at.isoformat()}
    refused("profile_deleted", Profile.objects.soft_delete, kid.pk, tenant=kid.tenant, version=2)
    refused("profile_deleted", update, kid, first_name="X")
    restored = Profile.objects.restore(kid.pk, tenant=kid.tenant)
    assert restored.deleted_at is None and restored.version == 3
    assert last_entry(kid).action == "restore"
    refused("profile_not_deleted", Profile.objects.restore, kid.pk, tenant=kid.tenant)


def test_restore_at_a_version_the_profile_no_longer_has_is_version_conflict(tree):
    """The admin's restore action and the API's ``{version}`` act at the version the caller saw: a profile
    restored and deleted again since is refused, not restored unseen."""
    kid, tenant = tree["kid"], tree["kid"].tenant
    Profile.objects.soft_delete(kid.pk, tenant=tenant, version=1)  # the caller sees version 2, deleted
    Profile.objects.restore(kid.pk, tenant=tenant, version=2)
    Profile.objects.soft_delete(kid.pk, tenant=tenant, version=3)
    error = refused("version_conflict", Profile.objects.restore, kid.pk, tenant=tenant, version=2)
    assert error.params == {"current": 4}
    assert fresh(kid).deleted_at is not None and fresh(kid).version == 4
    assert Profile.objects.restore(kid.pk, tenant=tenant, version=4).deleted_at is None


def test_parent_with_living_children_cannot_be_deleted(tree):
    dad = tree["dad"]
    error = refused("profile_has_children", Profile.objects.soft_delete, dad.pk, tenant=dad.tenant, version=1)
    assert "1" in error.render()
    Profile.objects.soft_delete(tree["kid"].pk, tenant=dad.tenant, version=1)
    assert Profile.objects.soft_delete(dad.pk, tenant=dad.tenant, version=1).deleted_at is not None


def test_restore_refuses_a_deleted_parent(tree):
    kid, dad, tenant = tree["kid"], tree["dad"], tree["kid"].tenant
    Profile.objects.soft_delete(kid.pk, tenant=tenant, version=1)
    Profile.objects.soft_delete(dad.pk, tenant=tenant, version=1)
    refused("parent_deleted", Profile.objects.restore, kid.pk, tenant=tenant)
    assert fresh(kid).deleted_at is not None


# --- parent rules -----------------------------------------------------------


def test_wrong_sex_for_each_parent_role(tree):
    error = refused("parent_wrong_sex", update, tree["kid"], father=tree["mum"].pk)
    assert error.parent == "father"
    error = refused("parent_wrong_sex", update, tree["kid"], mother=tree["grandpa"].pk)
    assert error.parent == "mother"
    refused(
        "parent_wrong_sex",
        Profile.objects.create_profile,
        tenant=tree["kid"].tenant,
        first_name="X",
        sex="male",
        father=tree["grandma"],
    )


def test_parent_must_exist_in_the_same_tenant(tree):
    stranger = ProfileFactory(tenant=TenantFactory(slug="elsewhere"))
    error = refused("parent_not_found", update, tree["kid"], father=stranger.pk)
    assert error.parent == "father"
    refused("parent_not_found", update, tree["kid"], mother=10**12)


def test_deleted_parent_is_refused_naming_the_role(tree):
    tenant = tree["kid"].tenant
    lonely = ProfileFactory(tenant=tenant, sex="female")
    Profile.objects.soft_delete(lonely.pk, tenant=tenant, version=1)
    error = refused("parent_deleted", update, tree["kid"], mother=lonely.pk)
    assert error.parent == "mother"
    with translation.override("ar"):
        assert "الأم" in error.render()


def test_self_as_parent_and_descendant_as_parent_are_cycles(tree):
    error = refused("would_create_cycle", update, tree["dad"], father=tree["dad"].pk)
    assert error.parent == "father"
    error = refused("would_create_cycle", update, tree["grandpa"], father=tree["kid"].pk)
    assert error.parent == "father"
    kid_daughter = ProfileFactory(tenant=tree["kid"].tenant, sex="female", father=tree["kid"])
    error = refused("would_create_cycle", update, tree["grandma"], mother=kid_daughter.pk)
    assert error.parent == "mother"


def test_death_before_birth_is_refused(tree):
    refused("invalid_dates", update, tree["kid"], birth_date=date(2000, 1, 2), death_date=date(1999, 1, 1))
    update(tree["kid"], birth_date=date(2000, 1, 2))
    refused("invalid_dates", update, tree["kid"], death_date=date(1999, 1, 1))


def test_sex_of_a_parent_with_living_children_cannot_change(tree):
    refused("sex_change_conflict", update, tree["dad"], sex="female")
    assert update(tree["kid"], sex="female").sex == "female"


def test_unknown_field_is_refused(tree):
    kid = tree["kid"]
    refused("unknown_field", Profile.objects.update_profile, kid.pk, tenant=kid.tenant, version=1, nickname="x")


def test_a_date_that_is_not_a_date_is_named_as_such(tree):
    kid = tree["kid"]
    refused("date_not_parsable", update, kid, birth_date="2020-02-30")
    kid.refresh_from_db()
    assert kid.version == 1


# --- undo: the three scenarios of the original fix ------------------------


def test_scenario_1_normal_undo_with_valid_parents(tree):
    kid, tenant = tree["kid"], tree["kid"].tenant
    step_dad = ProfileFactory(tenant=tenant, first_name="StepDad")
    update(kid, father=step_dad.pk, first_name="Renamed")
    entry = last_entry(kid)
    operator = UserFactory(username="operator")
    undone = ProfileAuditLog.objects.undo(entry.pk, tenant=tenant, actor=operator, reason="wrong father")
    kid = fresh(kid)
    assert kid.father_id == tree["dad"].pk and kid.first_name == "Kid" and kid.version == 3
    entry.refresh_from_db()
    assert entry.undone_at is not None and entry.undone_at == undone.undone_at
    assert entry.undone_by == operator and entry.undo_reason == "wrong father"
    undo_entry = entry.undo_entry
    assert undo_entry.action == "undo" and undo_entry.actor == operator and undo_entry.undoes == entry
    assert undo_entry.old_data == {"first_name": "Renamed", "father": step_dad.pk}
    assert undo_entry.new_data == {"first_name": "Kid", "father": tree["dad"].pk}


def test_scenario_2_parent_deleted_before_undo(tree):
    kid, tenant = tree["kid"], tree["kid"].tenant
    other_dad = ProfileFactory(tenant=tenant)
    update(kid, father=other_dad.pk)
    entry = last_entry(kid)
    Profile.objects.soft_delete(tree["dad"].pk, tenant=tenant, version=1)  # no living children any more
    error = refused("parent_deleted", ProfileAuditLog.objects.undo, entry.pk, tenant=tenant, actor=None, reason="r")
    assert error.parent == "father"
    with translation.override("ar"):
        assert error.render() == "الملف الشخصي للأب محذوف. يجب استعادة الأب أولاً."
    assert fresh(kid).father_id == other_dad.pk and fresh(kid).version == 2
    entry.refresh_from_db()
    assert entry.undone_at is None


# Scenario 3 (concurrent parent edit -> parent_locked) needs a second connection: test_races.py.


def test_undo_refuses_stale_fields_but_not_later_edits_of_other_fields(tree):
    kid, tenant = tree["kid"], tree["kid"].tenant
    update(kid, first_name="One", last_name="Two")
    entry = last_entry(kid)
    update(kid, birth_date=date(2001, 1, 1))  # another field: does not block
    update(kid, last_name="Three")  # a field the entry wrote: blocks
    error = refused("stale_version", ProfileAuditLog.objects.undo, entry.pk, tenant=tenant, actor=None, reason="r")
    assert error.fields == ("last_name",)
    assert error.render().endswith(": last name.")
    with translation.override("ar"):  # field names are translated too, whatever language raised the error
        label = translation.gettext("last name")  # whichever installed catalog translates it first
        assert label != "last name" and error.render().endswith(f": {label}.")
    update(kid, last_name="Two")
    ProfileAuditLog.objects.undo(entry.pk, tenant=tenant, actor=None, reason="r")
    kid = fresh(kid)
    assert (kid.first_name, kid.last_name, kid.birth_date) == ("Kid", "Family", date(2001, 1, 1))


def test_undo_twice_is_already_undone(tree):
    update(tree["kid"], first_name="X")
    entry = last_entry(tree["kid"])
    ProfileAuditLog.objects.undo(entry.pk, tenant=entry.tenant, actor=None, reason="r")
    refused("already_undone", ProfileAuditLog.objects.undo, entry.pk, tenant=entry.tenant, actor=None, reason="r")


def test_undo_would_create_cycle(tree):
    grandpa, tenant = tree["grandpa"], tree["kid"].tenant
    elder = ProfileFactory(tenant=tenant, first_name="Elder")
    update(grandpa, father=elder.pk)
    update(grandpa, father=None)
    moved_away = ProfileAuditLog.objects.filter(profile=grandpa).order_by("-id")[1]  # father None -> Elder
    assert moved_away.new_data == {"father": elder.pk}
    # Undo the *clearing* instead: it would restore Elder as father. Make Elder a descendant first.
    clearing = last_entry(grandpa)
    update(elder, father=tree["kid"].pk)
    error = refused(
        "would_create_cycle", ProfileAuditLog.objects.undo, clearing.pk, tenant=tenant, actor=None, reason="r"
    )
    assert error.parent == "father"
    assert fresh(grandpa).father_id is None


def test_undo_of_other_tenants_entry_is_not_found(tree):
    update(tree["kid"], first_name="X")
    entry = last_entry(tree["kid"])
    other = TenantFactory(slug="other")
    refused("audit_entry_not_found", ProfileAuditLog.objects.undo, entry.pk, tenant=other, actor=None, reason="r")
    refused("audit_entry_not_found", ProfileAuditLog.objects.undo, 10**12, tenant=entry.tenant, actor=None, reason="r")


def test_create_and_undo_entries_cannot_be_undone(tree):
    kid = tree["kid"]
    create = last_entry(kid)
    refused("undo_not_supported", ProfileAuditLog.objects.undo, create.pk, tenant=kid.tenant, actor=None, reason="r")
    update(kid, first_name="X")
    undone = ProfileAuditLog.objects.undo(last_entry(kid).pk, tenant=kid.tenant, actor=None, reason="r")
    refused(
        "undo_not_supported",
        ProfileAuditLog.objects.undo,
        undone.undo_entry.pk,
        tenant=kid.tenant,
        actor=None,
        reason="r",
    )


def test_undo_needs_a_reason(tree):
    update(tree["kid"], first_name="X")
    refused(
        "undo_reason_required",
        ProfileAuditLog.objects.undo,
        last_entry(tree["kid"]).pk,
        tenant=tree["kid"].tenant,
        actor=None,
        reason="  ",
    )


def test_undo_of_delete_restores_and_undo_of_restore_deletes(tree):
    kid, tenant = tree["kid"], tree["kid"].tenant
    Profile.objects.soft_delete(kid.pk, tenant=tenant, version=1)
    delete_entry = last_entry(kid)
    ProfileAuditLog.objects.undo(delete_entry.pk, tenant=tenant, actor=None, reason="oops")
    assert fresh(kid).deleted_at is None and fresh(kid).version == 3
    Profile.objects.soft_delete(kid.pk, tenant=tenant, version=3)
    Profile.objects.restore(kid.pk, tenant=tenant)
    restore_entry = last_entry(kid)
    ProfileAuditLog.objects.undo(restore_entry.pk, tenant=tenant, actor=None, reason="keep it deleted")
    assert fresh(kid).deleted_at is not None
    # The first delete entry is undone already.
    refused("already_undone", ProfileAuditLog.objects.undo, delete_entry.pk, tenant=tenant, actor=None, reason="r")


def test_undo_of_delete_is_stale_once_the_profile_was_restored_and_deleted_again(tree):
    kid, tenant = tree["kid"], tree["kid"].tenant
    Profile.objects.soft_delete(kid.pk, tenant=tenant, version=1)
    first_delete = last_entry(kid)
    Profile.objects.restore(kid.pk, tenant=tenant)
    Profile.objects.soft_delete(kid.pk, tenant=tenant, version=3)
    error = refused(
        "stale_version", ProfileAuditLog.objects.undo, first_delete.pk, tenant=tenant, actor=None, reason="r"
    )
    assert error.fields == ("deleted_at",) and error.render().endswith(": deleted at.")
    assert fresh(kid).deleted_at is not None and fresh(kid).version == 4


def test_undo_of_restore_is_stale_once_the_profile_was_deleted_again(tree):
    """Undoing a restore deletes; a profile deleted again since keeps that delete's time and entry as they are."""
    kid, tenant = tree["kid"], tree["kid"].tenant
    Profile.objects.soft_delete(kid.pk, tenant=tenant, version=1)
    Profile.objects.restore(kid.pk, tenant=tenant, version=2)
    restore_entry = last_entry(kid)
    deleted_again = Profile.objects.soft_delete(kid.pk, tenant=tenant, version=3)
    error = refused(
        "stale_version", ProfileAuditLog.objects.undo, restore_entry.pk, tenant=tenant, actor=None, reason="r"
    )
    assert error.fields == ("deleted_at",)
    assert (fresh(kid).deleted_at, fresh(kid).version) == (deleted_again.deleted_at, 4)
    assert ProfileAuditLog.objects.get(pk=restore_entry.pk).undone_at is None
    # The second delete can still be undone: its time was not overwritten.
    ProfileAuditLog.objects.undo(last_entry(kid).pk, tenant=tenant, actor=None, reason="r")
    assert fresh(kid).deleted_at is None


def test_undo_of_an_update_of_a_profile_deleted_since_is_refused_and_writes_nothing(tree):
    kid, tenant = tree["kid"], tree["kid"].tenant
    update(kid, first_name="Renamed")
    entry = last_entry(kid)
    Profile.objects.soft_delete(kid.pk, tenant=tenant, version=2)
    refused("profile_deleted", ProfileAuditLog.objects.undo, entry.pk, tenant=tenant, actor=None, reason="r")
    assert (fresh(kid).first_name, fresh(kid).version) == ("Renamed", 3)
    assert ProfileAuditLog.objects.get(pk=entry.pk).undone_at is None


def test_undo_of_restore_refused_while_children_live(tree):
    dad, tenant = tree["dad"], tree["kid"].tenant
    Profile.objects.soft_delete(tree["kid"].pk, tenant=tenant, version=1)
    Profile.objects.soft_delete(dad.pk, tenant=tenant, version=1)
    Profile.objects.restore(dad.pk, tenant=tenant)
    restore_entry = last_entry(dad)
    Profile.objects.restore(tree["kid"].pk, tenant=tenant)
    refused(
        "profile_has_children", ProfileAuditLog.objects.undo, restore_entry.pk, tenant=tenant, actor=None, reason="r"
    )


def test_undo_of_delete_refused_when_its_parent_was_deleted_since(tree):
    kid, dad, tenant = tree["kid"], tree["dad"], tree["kid"].tenant
    Profile.objects.soft_delete(kid.pk, tenant=tenant, version=1)
    delete_entry = last_entry(kid)
    Profile.objects.soft_delete(dad.pk, tenant=tenant, version=1)
    error = refused(
        "parent_deleted", ProfileAuditLog.objects.undo, delete_entry.pk, tenant=tenant, actor=None, reason="r"
    )
    assert error.parent == "father"


# --- tree reads -------------------------------------------------------------


def test_ancestors_and_descendants(tree):
    ancestors = selectors.ancestors(tree["kid"].pk, tenant=tree["kid"].tenant)
    assert [(p.first_name, p.depth) for p in ancestors] == [("Dad", 1), ("Mum", 1), ("Grandpa", 2), ("Grandma", 2)]
    descendants = selectors.descendants(tree["grandpa"].pk, tenant=tree["kid"].tenant)
    assert [(p.first_name, p.depth) for p in descendants] == [("Dad", 1), ("Kid", 2)]
    assert [p.first_name for p in selectors.ancestors(tree["kid"].pk, tenant=tree["kid"].tenant, max_depth=1)] == [
        "Dad",
        "Mum",
    ]


# --- round trips and lock SQL ----------------------------------------------


def test_update_round_trips_and_lock_sql(tree):
    kid, tenant = tree["kid"], tree["kid"].tenant
    step_dad = ProfileFactory(tenant=tenant)
    with CaptureQueriesContext(connection) as plain:
        update(kid, first_name="Plain")
    plain = real(plain)
    # fresh() read + profile lock + the UPDATE and the audit INSERT in one statement
    assert len(plain) == 3, plain
    assert "FOR UPDATE OF" in plain[1] and plain[1].endswith("NOWAIT")
    assert plain[2].startswith('WITH changed AS (UPDATE "profiles_profile"') and "INSERT INTO" in plain[2]
    with CaptureQueriesContext(connection) as reparent:
        update(kid, father=step_dad.pk)
    reparent = real(reparent)
    # fresh() + tree lock + profile lock + father lock + cycle CTE + the UPDATE with its INSERT
    assert len(reparent) == 6, reparent
    assert "pg_advisory_xact_lock" in reparent[1]
    assert "NOWAIT" in reparent[3] and '"deleted_at" IS NULL' in reparent[3]
    assert "WITH RECURSIVE" in reparent[4]


def test_undo_round_trips(tree):
    kid, tenant = tree["kid"], tree["kid"].tenant
    update(kid, father=ProfileFactory(tenant=tenant).pk)
    entry = last_entry(kid)
    with CaptureQueriesContext(connection) as queries:
        ProfileAuditLog.objects.undo(entry.pk, tenant=tenant, actor=None, reason="r")
    sql = real(queries)
    # try-lock and entry lock in one statement, tree lock, profile lock, father lock, cycle CTE, then
    # one statement: the profile's UPDATE, the undo entry's INSERT and the undone entry's mark
    assert len(sql) == 6, sql
    assert "pg_try_advisory_xact_lock" in sql[0] and "FOR UPDATE OF" in sql[0] and "NOWAIT" in sql[0]
    # the entry is read and locked only where the try-lock was got (core.db.try_advisory_xact_lock)
    assert sql[0].index("WHERE ((lockstep_tried.got) AND") < sql[0].index("FOR UPDATE OF")
    assert "NOWAIT" in sql[2] and "NOWAIT" in sql[3]
    assert sql[5].startswith('WITH changed AS (UPDATE "profiles_profile"') and "undone AS (UPDATE" in sql[5]


# --- demo data --------------------------------------------------------------


def test_seed_demo_builds_three_generations_with_history_and_is_idempotent():
    from profiles.seed import seed_demo

    demo = TenantFactory(slug="demo")
    admin, api_user = UserFactory(username="admin"), UserFactory(username="api")
    seed_demo(demo, admin=admin, api_user=api_user)
    seed_demo(demo, admin=admin, api_user=api_user)
    assert Profile.objects.for_tenant(demo).count() == 7
    faisal = Profile.objects.get(tenant=demo, first_name="Faisal")
    assert [p.first_name for p in selectors.ancestors(faisal.pk, tenant=demo)] == [
        "Khalid",
        "Maha",
        "Ibrahim",
        "Aisha",
    ]
    actions = list(ProfileAuditLog.objects.for_tenant(demo).values_list("action", flat=True))
    assert actions.count("create") == 7 and actions.count("update") == 2 and actions.count("undo") == 1
    assert ProfileAuditLog.objects.for_tenant(demo).undone().count() == 1
    assert faisal.birth_date == date(1985, 2, 17)
