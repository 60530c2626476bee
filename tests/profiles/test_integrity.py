"""What the database itself refuses, and what a plain save() may not write (profiles/models.py).

Every case runs in a savepoint that is rolled back, so each starts from the same rows.
A case is "ok" when the database accepts the write, else the name of the constraint or
trigger that refused it. The tables below enumerate, per trigger, the changes allowed and
refused; each refusal is also shown to become 409 ``invalid_transition`` (a trigger) through
the one translator in core.guards.
"""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from core.exceptions import GuardedWriteError, TransitionRefused
from core.guards import constraint_name, refusal_for
from profiles.models import Profile, ProfileAuditLog
from tests.factories import TenantFactory, UserFactory
from tests.profiles.factories import ProfileFactory, fresh

pytestmark = pytest.mark.django_db


class _Rollback(Exception):
    pass


def outcome(write):
    """Run ``write`` in a savepoint that is always rolled back; 'ok' or the refusing constraint's name."""
    try:
        with transaction.atomic():
            write()
            raise _Rollback
    except _Rollback:
        return "ok"
    except IntegrityError as exc:
        name = constraint_name(exc)
        if name.endswith("_transition"):
            refusal = refusal_for(exc)
            assert isinstance(refusal, TransitionRefused) and refusal.status_code == 409, exc
        return name


# --- GuardedModel: save() cannot write guarded columns ------------------------


def test_a_plain_save_of_a_profile_cannot_write_a_guarded_column(tenant):
    dad = ProfileFactory(tenant=tenant)
    kid = ProfileFactory(tenant=tenant, first_name="Kid")
    for field, value in [("father_id", dad.pk), ("deleted_at", timezone.now()), ("version", 7), ("sex", "female")]:
        profile = fresh(kid)
        setattr(profile, field, value)
        with pytest.raises(GuardedWriteError):
            profile.save()
        with pytest.raises(GuardedWriteError):
            profile.save(update_fields=[field.removesuffix("_id")])
    assert (fresh(kid).father_id, fresh(kid).version, fresh(kid).sex) == (None, 1, "male")
    profile = fresh(kid)
    profile.first_name = "Renamed"
    profile.save(update_fields=["first_name"])  # an unguarded column may be saved on its own
    assert fresh(kid).first_name == "Renamed"


def test_a_new_instance_with_an_existing_profiles_pk_is_refused_never_written_over_it(tenant):
    """Regression: ``Profile(pk=existing, …).save()`` is an UPDATE to Django (it tries one first): every
    column written over the row, its father cleared, without the guard save() has on a loaded row."""
    dad = ProfileFactory(tenant=tenant)
    kid = ProfileFactory(tenant=tenant, first_name="Kid", father=dad)
    forged = Profile(pk=kid.pk, tenant=tenant, first_name="Kid", sex="male")
    with pytest.raises(IntegrityError), transaction.atomic():
        forged.save()
    assert (fresh(kid).father_id, fresh(kid).version) == (dad.pk, 1)


def test_no_save_of_an_existing_audit_entry_is_allowed(tenant):
    entry = ProfileFactory(tenant=tenant).history.get()
    entry.undo_reason = "tampered"
    with pytest.raises(GuardedWriteError):
        entry.save()
    with pytest.raises(GuardedWriteError):
        entry.save(update_fields=["undo_reason"])
    assert ProfileAuditLog.objects.get(pk=entry.pk).undo_reason == ""


# --- the audit log is append-only -------------------------------------------


@pytest.fixture
def log(tenant):
    """An open update entry, an undone one with its undo entry, two users and another profile."""
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    kid = ProfileFactory(tenant=tenant, first_name="Kid", actor=alice)
    Profile.objects.update_profile(kid.pk, tenant=tenant, version=1, actor=alice, first_name="One")
    done = ProfileAuditLog.objects.filter(profile=kid, action="update").get()
    ProfileAuditLog.objects.undo(done.pk, tenant=tenant, actor=alice, reason="wrong")
    earlier_undo = ProfileAuditLog.objects.create(  # an unlinked undo entry of kid's, made before "open"
        tenant=tenant, profile=kid, action="undo", old_data={}, new_data={}
    )
    Profile.objects.update_profile(kid.pk, tenant=tenant, version=3, actor=alice, first_name="Two")
    open_ = ProfileAuditLog.objects.filter(profile=kid, action="update").latest("pk")
    spare_undo = ProfileAuditLog.objects.create(  # an unlinked undo entry, to link in the cases below
        tenant=tenant, profile=kid, action="undo", old_data={}, new_data={}
    )
    other_profile = ProfileFactory(tenant=tenant)
    return {
        "open": open_,
        "done": ProfileAuditLog.objects.get(pk=done.pk),
        "spare_undo": spare_undo,
        "earlier_undo": earlier_undo,
        "foreign_undo": ProfileAuditLog.objects.create(  # a later undo entry, of another profile
            tenant=tenant, profile=other_profile, action="undo", old_data={}, new_data={}
        ),
        "alice": alice,
        "bob": bob,
        "other_profile": other_profile,
        "other_tenant": TenantFactory(slug="elsewhere"),
    }


NOW = object()  # timezone.now() when the case runs


def resolve(change, rows):
    """``"@name"`` stands for ``rows[name]``, NOW for the current time; anything else is used as is."""
    values = {}
    for column, value in change.items():
        if isinstance(value, str) and value.startswith("@"):
            value = rows[value[1:]]
        elif value is NOW:
            value = timezone.now()
        values[column] = value
    return values


def cases(table):
    return [
        pytest.param(row, change, expected, id=f"{row}:{'+'.join(change)}:{expected}")
        for row, change, expected in table
    ]


AUDIT_CASES = [
    # (entry, change, expected) - "open": an entry not undone; "done": an undone one
    ("open", {"tenant": "@other_tenant"}, "audit_append_only_transition"),
    ("open", {"profile": "@other_profile"}, "audit_append_only_transition"),
    ("open", {"action": "delete"}, "audit_append_only_transition"),
    ("open", {"old_data": {}}, "audit_append_only_transition"),
    ("open", {"new_data": {"first_name": "Forged"}}, "audit_append_only_transition"),
    ("open", {"created_at": F("created_at") - timedelta(days=1)}, "audit_append_only_transition"),
    ("open", {"actor": "@bob"}, "audit_append_only_transition"),
    ("open", {"actor": None}, "ok"),  # its user was deleted (on_delete=SET_NULL)
    ("open", {"undone_by": "@bob"}, "audit_append_only_transition"),
    ("open", {"undo_reason": "why"}, "audit_append_only_transition"),
    # marking it undone, as ProfileAuditLog.objects.undo does: set together
    ("open", {"undone_at": NOW, "undo_entry": "@spare_undo", "undone_by": "@bob", "undo_reason": "why"}, "ok"),
    ("open", {"undone_at": NOW, "undo_entry": "@spare_undo"}, "ok"),
    # ... but only by a later undo entry of the same profile (audit_links_transition)
    ("open", {"undone_at": NOW, "undo_entry": "@open"}, "audit_links_transition"),
    ("open", {"undone_at": NOW, "undo_entry": "@earlier_undo"}, "audit_links_transition"),
    ("open", {"undone_at": NOW, "undo_entry": "@foreign_undo"}, "audit_links_transition"),
    ("open", {"undone_at": NOW, "undo_entry": "@done"}, "audit_links_transition"),  # not an undo
    # undone without its undo entry, or linked while not undone: the CHECK, not the trigger
    ("open", {"undone_at": NOW}, "audit_undone_has_undo_entry"),
    ("open", {"undo_entry": "@spare_undo"}, "audit_undone_has_undo_entry"),
    ("done", {"undone_at": F("undone_at") + timedelta(seconds=1)}, "audit_append_only_transition"),
    ("done", {"undone_at": None, "undo_entry": None}, "audit_append_only_transition"),
    (
        "done",
        {"undone_at": None, "undo_entry": None, "undone_by": None, "undo_reason": ""},
        "audit_append_only_transition",
    ),
    ("done", {"undo_reason": "rewritten"}, "audit_append_only_transition"),
    ("done", {"undo_entry": "@spare_undo"}, "audit_append_only_transition"),
    ("done", {"undone_by": "@bob"}, "audit_append_only_transition"),
    ("done", {"undone_by": None}, "ok"),  # its user was deleted
    ("done", {"new_data": {}}, "audit_append_only_transition"),
    ("done", {"actor": None}, "ok"),
]


@pytest.mark.parametrize("entry,change,expected", cases(AUDIT_CASES))
def test_audit_entries_are_append_only(log, entry, change, expected):
    assert outcome(lambda: ProfileAuditLog.objects.filter(pk=log[entry].pk).update(**resolve(change, log))) == expected


@pytest.mark.parametrize("entry", ["open", "done"])
def test_audit_entries_are_never_deleted(log, entry):
    assert outcome(lambda: ProfileAuditLog.objects.filter(pk=log[entry].pk).delete()) == (
        "audit_append_only_transition"
    )


def test_an_audit_entry_is_never_inserted_already_undone(log):
    def insert(**undone):
        return lambda: ProfileAuditLog.objects.create(
            tenant=log["open"].tenant, profile=log["open"].profile, action="update", **undone
        )

    assert outcome(insert()) == "ok"
    assert outcome(insert(undone_at=timezone.now(), undo_entry=log["spare_undo"])) == "audit_insert_transition"


def test_an_audit_entry_is_written_only_in_its_profiles_tenant(log):
    """audit_links_transition: an entry under another tenant than its profile's would show that tenant's operators
    another's personal data (a profile itself never moves: profile_parent_transition)."""
    kid = log["open"].profile
    entry = dict(profile=kid, action="update", old_data={}, new_data={})
    assert (
        outcome(lambda: ProfileAuditLog.objects.create(tenant=log["other_tenant"], **entry)) == "audit_links_transition"
    )
    assert outcome(lambda: ProfileAuditLog.objects.create(tenant=kid.tenant, **entry)) == "ok"


def test_deleting_a_user_clears_their_name_from_the_log_and_nothing_else(log):
    alice = log["alice"]
    get_user_model().objects.filter(pk=alice.pk).delete()
    done = ProfileAuditLog.objects.get(pk=log["done"].pk)
    assert done.actor is None and done.undone_by is None and done.undone_at is not None
    assert done.undo_reason == "wrong"


def test_the_undone_check_bites_on_an_update_that_marks_without_linking(log):
    """audit_undone_has_undo_entry: undone exactly when it links its undo entry (an .update() bypassing undo)."""
    entry = log["open"]
    with pytest.raises(IntegrityError) as info, transaction.atomic():
        ProfileAuditLog.objects.filter(pk=entry.pk).update(undone_at=timezone.now())
    assert constraint_name(info.value) == "audit_undone_has_undo_entry"
    with pytest.raises(IntegrityError) as info, transaction.atomic():
        ProfileAuditLog.objects.filter(pk=entry.pk).update(undo_entry=log["spare_undo"])
    assert constraint_name(info.value) == "audit_undone_has_undo_entry"
    assert ProfileAuditLog.objects.get(pk=entry.pk).undone_at is None


# --- a profile's version only increases ---------------------------------------


@pytest.fixture
def kid(tenant):
    kid = ProfileFactory(tenant=tenant, first_name="Kid")
    Profile.objects.update_profile(kid.pk, tenant=tenant, version=1, first_name="Kid2")
    return fresh(kid)  # version 2


@pytest.mark.parametrize(
    "change,expected,version",
    [
        ({"version": 3}, "ok", 3),
        ({"version": 9}, "ok", 9),
        ({"version": 2}, "ok", 2),
        ({"version": 1}, "profile_version_transition", 2),
        ({"version": 1, "first_name": "Older"}, "profile_version_transition", 2),
        # a writer that forgets the version: the database bumps it (profile_version_bump)
        ({"first_name": "Forgot"}, "ok", 3),
        ({"deleted_at": timezone.now()}, "ok", 3),
        # a writer that bumps it itself is not bumped twice
        ({"first_name": "Bumped", "version": 3}, "ok", 3),
    ],
)
def test_a_profiles_version_only_increases(kid, change, expected, version):
    seen = {}

    def write():
        Profile.objects.filter(pk=kid.pk).update(**change)
        seen["version"] = fresh(kid).version

    assert outcome(write) == expected
    if expected == "ok":
        assert seen["version"] == version


# --- a live profile never takes a deleted parent ---------------------------------


@pytest.fixture
def family(tenant):
    rows = {
        "dad": ProfileFactory(tenant=tenant, first_name="Dad"),
        "uncle": ProfileFactory(tenant=tenant, first_name="Uncle"),
        "mum": ProfileFactory(tenant=tenant, first_name="Mum", sex="female"),
        "gone_dad": ProfileFactory(tenant=tenant, first_name="GoneDad"),
        "gone_mum": ProfileFactory(tenant=tenant, first_name="GoneMum", sex="female"),
    }
    rows["kid"] = ProfileFactory(tenant=tenant, first_name="Kid", father=rows["dad"], mother=rows["mum"])
    Profile.objects.soft_delete(rows["gone_dad"].pk, tenant=tenant, version=1)
    Profile.objects.soft_delete(rows["gone_mum"].pk, tenant=tenant, version=1)
    rows["deleted_kid"] = ProfileFactory(tenant=tenant, first_name="DeletedKid")
    Profile.objects.soft_delete(rows["deleted_kid"].pk, tenant=tenant, version=1)
    rows["stranger"] = ProfileFactory(tenant=TenantFactory(slug="elsewhere"), first_name="Stranger")
    rows = {key: fresh(row) for key, row in rows.items()}
    return {**rows, "stranger_tenant": rows["stranger"].tenant}


PARENT_CASES = [
    # (profile, change, expected)
    ("kid", {"father": "@gone_dad"}, "profile_parent_transition"),
    ("kid", {"mother": "@gone_mum"}, "profile_parent_transition"),
    ("kid", {"father": None}, "ok"),
    ("kid", {"mother": None}, "ok"),
    ("kid", {"father": "@uncle"}, "ok"),
    ("kid", {"first_name": "Renamed"}, "ok"),
    # a deleted row may keep (or take) a deleted parent: the rule is about live rows
    ("deleted_kid", {"father": "@gone_dad"}, "ok"),
    # restoring is pointing again: refused while a parent is deleted, whichever column
    ("deleted_kid", {"deleted_at": None}, "ok"),
    ("deleted_kid", {"deleted_at": None, "father": "@gone_dad"}, "profile_parent_transition"),
    ("deleted_kid", {"deleted_at": None, "mother": "@gone_mum"}, "profile_parent_transition"),
    ("deleted_kid", {"deleted_at": None, "father": "@dad", "mother": "@mum"}, "ok"),
    # a parent of another tenant, of the other sex, or a descendant (a cycle), live or restored
    ("kid", {"father": "@stranger"}, "profile_parent_transition"),
    ("kid", {"father": "@mum"}, "profile_parent_transition"),
    ("kid", {"mother": "@uncle"}, "profile_parent_transition"),
    ("dad", {"father": "@kid"}, "profile_parent_transition"),
    ("deleted_kid", {"father": "@stranger"}, "ok"),  # a deleted row is no one's tree…
    ("deleted_kid", {"deleted_at": None, "father": "@stranger"}, "profile_parent_transition"),  # …till restored
    # a parent's sex, while a live child has them as father or mother
    ("dad", {"sex": "female"}, "profile_parent_transition"),
    ("mum", {"sex": "male"}, "profile_parent_transition"),
    ("uncle", {"sex": "female"}, "ok"),
    ("dad", {"first_name": "Renamed", "sex": "male"}, "ok"),
    # no profile moves to another tenant: its parents and children would be another tenant's
    ("kid", {"tenant": "@stranger_tenant"}, "profile_parent_transition"),
    ("dad", {"tenant": "@stranger_tenant"}, "profile_parent_transition"),
    ("uncle", {"tenant": "@stranger_tenant"}, "profile_parent_transition"),
    ("deleted_kid", {"tenant": "@stranger_tenant"}, "profile_parent_transition"),
]


@pytest.mark.parametrize("profile,change,expected", cases(PARENT_CASES))
def test_a_live_profile_never_takes_a_parent_it_may_not_have(family, profile, change, expected):
    assert outcome(lambda: Profile.objects.filter(pk=family[profile].pk).update(**resolve(change, family))) == expected


def test_a_descendant_is_never_an_ancestor_however_far_down(family):
    tenant = family["kid"].tenant
    grandkid = ProfileFactory(tenant=tenant, first_name="Grandkid", father=family["kid"])
    great = ProfileFactory(tenant=tenant, first_name="Great", father=grandkid)
    assert outcome(lambda: Profile.objects.filter(pk=family["dad"].pk).update(father=great)) == (
        "profile_parent_transition"
    )
    assert outcome(lambda: Profile.objects.filter(pk=family["mum"].pk).update(father=great)) == (
        "profile_parent_transition"
    )
    assert outcome(lambda: Profile.objects.filter(pk=family["uncle"].pk).update(father=great)) == "ok"


def test_deleted_rows_never_close_a_cycle_either(family):
    """A deleted row may keep or take a deleted parent (the parent rules are about live rows), but no profile,
    live or deleted, is its own ancestor (``check_invariants``' no_cycles reads them all): a raw write that closes a
    cycle among deleted rows is refused as one among live rows is."""
    tenant = family["kid"].tenant
    grandkid = ProfileFactory(tenant=tenant, first_name="Grandkid", father=family["kid"])
    for row in (grandkid, family["kid"], family["dad"]):  # children first: a parent with live children stays
        Profile.objects.soft_delete(row.pk, tenant=tenant, version=fresh(row).version)
    assert outcome(lambda: Profile.objects.filter(pk=family["dad"].pk).update(father=grandkid)) == (
        "profile_parent_transition"
    )
    assert outcome(lambda: Profile.objects.filter(pk=family["kid"].pk).update(mother=family["gone_mum"])) == "ok"
    assert outcome(lambda: Profile.objects.filter(pk=family["dad"].pk).update(father=family["gone_dad"])) == "ok"


def test_two_deleted_profiles_inserted_as_each_others_fathers_are_refused(tenant):
    """Regression: the cycle walk ran on an update only. Foreign keys are deferred, so one transaction could
    insert a deleted profile naming a row not inserted yet as its father, then that row naming the first:
    two profiles each their own ancestor, committed."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')), nextval(pg_get_serial_sequence(%s, 'id'))",
            [Profile._meta.db_table] * 2,
        )
        first, second = cursor.fetchone()

    def inserted(pk, father):
        return Profile(
            id=pk, tenant=tenant, first_name=f"P{pk}", sex="male", deleted_at=timezone.now(), father_id=father
        )

    def both():
        Profile.objects.bulk_create([inserted(first, second)])
        Profile.objects.bulk_create([inserted(second, first)])
        connection.check_constraints()  # the deferred foreign keys, as at COMMIT

    assert outcome(both) == "profile_parent_transition"
    # its own father: no row names it yet, so no walk; the CHECK refuses it
    assert outcome(lambda: Profile.objects.bulk_create([inserted(first, first)])) == "profile_not_own_father"
    assert not Profile.objects.filter(pk__in=(first, second)).exists()


def test_restoring_a_profile_whose_parent_was_deleted_meanwhile_is_refused(family):
    """The parent column does not change, but the row comes back to life pointing at a deleted parent."""
    tenant = family["kid"].tenant
    orphan = ProfileFactory(tenant=tenant, first_name="Orphan", father=family["dad"])
    Profile.objects.soft_delete(orphan.pk, tenant=tenant, version=1)
    Profile.objects.soft_delete(family["kid"].pk, tenant=tenant, version=1)
    Profile.objects.soft_delete(family["dad"].pk, tenant=tenant, version=1)  # no live child left
    assert outcome(lambda: Profile.objects.filter(pk=orphan.pk).update(deleted_at=None)) == (
        "profile_parent_transition"
    )
    assert outcome(lambda: Profile.objects.filter(pk=orphan.pk).update(first_name="Still deleted")) == "ok"


def test_a_new_live_profile_never_starts_with_a_deleted_parent(family):
    tenant = family["kid"].tenant

    def insert(**fields):
        return lambda: Profile.objects.create(tenant=tenant, first_name="New", sex="male", **fields)

    assert outcome(insert(father=family["dad"], mother=family["mum"])) == "ok"
    assert outcome(insert(father=family["gone_dad"])) == "profile_parent_transition"
    assert outcome(insert(mother=family["gone_mum"])) == "profile_parent_transition"
    assert outcome(insert(father=family["gone_dad"], deleted_at=timezone.now())) == "ok"


# --- a profile with live children is never deleted -------------------------------


CHILDREN_CASES = [
    # (profile, change, expected)
    ("dad", {"deleted_at": NOW}, "profile_children_transition"),  # father of a live kid
    ("mum", {"deleted_at": NOW}, "profile_children_transition"),  # mother of a live kid
    ("mum", {"first_name": "Renamed"}, "ok"),
    ("deleted_kid", {"deleted_at": NOW}, "ok"),  # already deleted: a new timestamp is no delete
    ("gone_dad", {"deleted_at": None}, "ok"),  # restore is not this trigger's business
    ("kid", {"deleted_at": NOW}, "ok"),  # no children
]


@pytest.mark.parametrize("profile,change,expected", cases(CHILDREN_CASES))
def test_a_profile_with_live_children_is_never_deleted(family, profile, change, expected):
    assert outcome(lambda: Profile.objects.filter(pk=family[profile].pk).update(**resolve(change, family))) == expected


def test_a_parent_whose_children_are_all_deleted_may_be_deleted(family):
    tenant = family["kid"].tenant
    Profile.objects.soft_delete(family["kid"].pk, tenant=tenant, version=1)
    assert outcome(lambda: Profile.objects.filter(pk=family["dad"].pk).update(deleted_at=timezone.now())) == "ok"


def test_the_triggers_are_backstops_the_managers_never_reach(family):
    """The managers answer first, with the domain code, before the database would refuse."""
    from core.exceptions import DomainError

    tenant = family["kid"].tenant
    with pytest.raises(DomainError) as info:
        Profile.objects.soft_delete(family["dad"].pk, tenant=tenant, version=1)
    assert info.value.code == "profile_has_children"
    with pytest.raises(DomainError) as info:
        Profile.objects.update_profile(family["kid"].pk, tenant=tenant, version=1, father=family["gone_dad"].pk)
    assert info.value.code == "parent_deleted" and info.value.parent == "father"
