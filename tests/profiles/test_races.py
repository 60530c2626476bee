"""Real concurrent attempts on separate connections, lined up on a barrier (tests/races.py).

Some attempts run the guarded operation inside an outer transaction and keep it open
for a moment afterwards ("hold"): that is how a caller composing the operation into a
larger transaction behaves, and it widens the race window so a missing guard shows.
"""

import time

import pgtrigger
import pytest
from django.db import IntegrityError, connections, transaction
from django.db.models import F, Q
from django.db.models.functions import Now

from core.db import LockNamespace
from core.guards import constraint_name
from profiles.models import Profile, ProfileAuditLog
from profiles.race_scenarios import ProfileUndo
from tests.factories import TenantFactory
from tests.profiles.concurrency import five_for_a_cycle, in_flight, paused_at_commit
from tests.profiles.factories import ProfileFactory, fresh
from tests.races import lock_timeout, row_locked, run_concurrently, tally

# The database's backstops (profiles/models.py), switched off per connection where a control
# shows what the naive check-then-act does without them.
PARENT_LIVE = "profiles.Profile:profile_parent_transition"
CHILDREN_LIVE = "profiles.Profile:profile_children_transition"

pytestmark = pytest.mark.django_db(transaction=True)


def held(operation, seconds):
    """Run ``operation`` in an outer transaction that stays open ``seconds`` after it returns."""
    with transaction.atomic():
        result = operation()
        time.sleep(seconds)
    return result


def refusal_and_time(call):
    """The error ``call()`` raises, and how long it took to raise it."""
    started = time.monotonic()
    with pytest.raises(Exception) as info:
        call()
    return info.value, time.monotonic() - started


# A parent's delete racing a write that points a child at it: one of the two wins, never both.
ONE_OF_TWO = {
    ("ok", "profile_has_children"),
    ("ok", "resource_locked"),
    ("parent_deleted", "ok"),
    ("parent_locked", "ok"),
}


def against_parent_delete(link, delete, *, hold):
    """Outcomes of ``link`` (first) and ``delete`` (second) at once; ``hold`` (one of them, or
    neither) keeps its transaction open 0.1 s after it is done."""

    def attempt(i):
        operation, name = (link, "link") if i == 0 else (delete, "delete")
        return held(operation, 0.1) if hold == name else operation()

    return run_concurrently(attempt, 2)


def live_children_of_deleted_parents(tenant):
    return (
        Profile.objects.for_tenant(tenant)
        .live()
        .filter(Q(father__deleted_at__isnull=False) | Q(mother__deleted_at__isnull=False))
        .count()
    )


def profiles_in_a_cycle(tenant):
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "WITH RECURSIVE anc(start, id) AS ("
            " SELECT p.id, v.pid FROM profiles_profile p"
            " CROSS JOIN LATERAL (VALUES (p.father_id), (p.mother_id)) AS v(pid)"
            " WHERE p.tenant_id = %s AND v.pid IS NOT NULL"
            " UNION SELECT anc.start, v.pid FROM anc JOIN profiles_profile p ON p.id = anc.id"
            " CROSS JOIN LATERAL (VALUES (p.father_id), (p.mother_id)) AS v(pid) WHERE v.pid IS NOT NULL"
            ") SELECT count(DISTINCT start) FROM anc WHERE start = id",
            [tenant.pk],
        )
        return cursor.fetchone()[0]


@pytest.fixture
def acme():
    return TenantFactory(slug="acme")


def moved_child(tenant):
    """dad <- kid, then kid moved to another father: returns (dad, kid, the update entry to undo)."""
    dad = ProfileFactory(tenant=tenant, first_name="Dad")
    other = ProfileFactory(tenant=tenant, first_name="Other")
    kid = ProfileFactory(tenant=tenant, first_name="Kid", father=dad)
    Profile.objects.update_profile(kid.pk, tenant=tenant, version=1, father=other.pk)
    entry = ProfileAuditLog.objects.filter(profile=kid, action="update").get()
    return dad, kid, entry


# --- 20 concurrent undos of one entry ---------------------------------------


def test_20_concurrent_undos_apply_exactly_once(acme):
    dad, kid, entry = moved_child(acme)

    def attempt(i):
        return held(lambda: ProfileAuditLog.objects.undo(entry.pk, tenant=acme, actor=None, reason=f"r{i}"), 0.05)

    outcomes = run_concurrently(attempt, 20)
    counts = tally(outcomes)
    assert counts["ok"] == 1, counts
    assert set(counts) <= {"ok", "already_undone", "operation_locked"}, counts
    entry.refresh_from_db()
    assert entry.undone_at is not None and entry.undo_entry is not None
    assert ProfileAuditLog.objects.filter(profile=kid, action="undo").count() == 1
    kid = fresh(kid)
    assert kid.father_id == dad.pk and kid.version == 3


def naive_undos(tenant, *, keep=()):
    """20 naive undos (the race scenario's check-then-act, no locks) of one entry: (the profile, outcomes).

    Even the entry's row lock would hold them apart: switching the AUDIT_UNDO lock off shows nothing.
    """
    undos = ProfileUndo(tenant, window=0.1)
    kid = undos.create_target().profile
    return kid, run_concurrently(lambda i: undos.naive(0, i, keep=keep), 20)


@pytest.mark.control("profile undo")
def test_naive_undo_applies_many_times(acme):
    kid, outcomes = naive_undos(acme)
    assert tally(outcomes)["ok"] > 1
    assert ProfileAuditLog.objects.filter(profile=kid, action="undo").count() > 1


def test_the_append_only_trigger_alone_refuses_the_naive_double_undo(acme):
    """Without the manager's locks, the database still marks the entry undone once: the other
    naive undos fail at the second mark and roll back (their undo entry and profile write too)."""
    kid, outcomes = naive_undos(acme, keep=ProfileUndo.backstops)
    assert tally(outcomes)["ok"] == 1
    refused = [o.error for o in outcomes if not o.ok and o.code != "already_undone"]
    assert refused and all(
        isinstance(e, IntegrityError) and constraint_name(e) == "audit_append_only_transition" for e in refused
    ), refused
    assert ProfileAuditLog.objects.filter(profile=kid, action="undo").count() == 1
    assert fresh(kid).version == 3


# --- undo vs soft delete of the parent it restores --------------------------


@pytest.mark.parametrize("hold", ["none", "link", "delete"])
def test_undo_vs_parent_delete_never_leaves_a_live_child_on_a_deleted_parent(acme, hold):
    for _round in range(5):
        dad, kid, entry = moved_child(acme)

        def undo(entry=entry):
            return ProfileAuditLog.objects.undo(entry.pk, tenant=acme, actor=None, reason="race")

        def delete(dad=dad):
            return Profile.objects.soft_delete(dad.pk, tenant=acme, version=fresh(dad).version)

        undo_outcome, delete_outcome = against_parent_delete(undo, delete, hold=hold)
        pair = (undo_outcome.code, delete_outcome.code)
        assert pair in ONE_OF_TWO, pair
        assert live_children_of_deleted_parents(acme) == 0
        kid = fresh(kid)
        assert (kid.father_id == dad.pk) == (undo_outcome.code == "ok")


def naive_undo_father(entry_id):
    entry = ProfileAuditLog.objects.get(pk=entry_id)
    father_id = entry.old_data["father"]
    if not Profile.objects.filter(pk=father_id, deleted_at__isnull=True).exists():
        return "parent_deleted"
    time.sleep(0.3)  # the race window of the original bug
    Profile.objects.filter(pk=entry.profile_id).update(father_id=father_id)
    return "ok"


def naive_delete(profile_id, *, after=0.0):
    time.sleep(after)
    if Profile.objects.live().children_of(profile_id).exists():
        return "profile_has_children"
    Profile.objects.filter(pk=profile_id).update(deleted_at=Now())
    return "ok"


@pytest.mark.control
def test_naive_undo_points_a_child_at_a_deleted_parent(acme):
    dad, _kid, entry = moved_child(acme)

    def attempt(i):
        with pgtrigger.ignore(PARENT_LIVE, CHILDREN_LIVE):
            return naive_undo_father(entry.pk) if i == 0 else naive_delete(dad.pk, after=0.1)

    outcomes = run_concurrently(attempt, 2)
    assert [o.value for o in outcomes] == ["ok", "ok"]
    assert live_children_of_deleted_parents(acme) == 1


@pytest.mark.control  # the naive delete goes unaudited: the invariants do not hold after it
def test_the_parent_trigger_alone_refuses_the_naive_undo_onto_a_deleted_parent(acme):
    """The same naive pair with the backstop triggers on: the undo's write to the now-deleted
    father is refused by the database (profile_parent_transition), never committed."""
    dad, kid, entry = moved_child(acme)
    undo, delete = run_concurrently(
        lambda i: naive_undo_father(entry.pk) if i == 0 else naive_delete(dad.pk, after=0.1), 2
    )
    assert delete.value == "ok"
    assert isinstance(undo.error, IntegrityError) and constraint_name(undo.error) == "profile_parent_transition"
    assert fresh(kid).father_id != dad.pk and live_children_of_deleted_parents(acme) == 0


# --- scenario 3 of the original fix: a parent row held by another transaction --


@pytest.mark.parametrize("role", ["father", "mother"])
def test_scenario_3_parent_held_for_update_is_parent_locked_at_once(acme, role):
    sex = "male" if role == "father" else "female"
    parent = ProfileFactory(tenant=acme, sex=sex)
    other = ProfileFactory(tenant=acme, sex=sex)
    kid = ProfileFactory(tenant=acme, **{role: parent})
    Profile.objects.update_profile(kid.pk, tenant=acme, version=1, **{role: other.pk})
    entry = ProfileAuditLog.objects.get(profile=kid, action="update")
    with row_locked(Profile.objects.filter(pk=parent.pk)):
        error, elapsed = refusal_and_time(
            lambda: ProfileAuditLog.objects.undo(entry.pk, tenant=acme, actor=None, reason="r")
        )
    assert error.code == "parent_locked" and error.parent == role
    assert elapsed < 0.5, elapsed  # NOWAIT, not the 2 s lock_timeout
    assert fresh(kid).version == 2 and ProfileAuditLog.objects.get(pk=entry.pk).undone_at is None
    ProfileAuditLog.objects.undo(entry.pk, tenant=acme, actor=None, reason="r")  # free again: it applies
    assert getattr(fresh(kid), f"{role}_id") == parent.pk


# --- other guarded writes ---------------------------------------------------


def test_20_concurrent_updates_with_the_same_version_one_wins(acme):
    kid = ProfileFactory(tenant=acme)

    def attempt(i):
        time.sleep((i % 5) * 0.03)  # some arrive while the winner holds the row, some after it committed
        return Profile.objects.update_profile(kid.pk, tenant=acme, version=1, first_name=f"N{i}")

    outcomes = run_concurrently(attempt, 20)
    counts = tally(outcomes)
    assert counts["ok"] == 1 and set(counts) <= {"ok", "version_conflict", "resource_locked"}, counts
    winner = next(o.value for o in outcomes if o.ok)
    assert fresh(kid).version == 2 and fresh(kid).first_name == winner.first_name
    assert ProfileAuditLog.objects.filter(profile=kid, action="update").count() == 1


def naive_update(profile_id, version, name):
    current = Profile.objects.get(pk=profile_id)
    if current.version != version:
        return "version_conflict"
    time.sleep(0.1)
    Profile.objects.filter(pk=profile_id).update(first_name=name, version=F("version") + 1)
    return "ok"


@pytest.mark.control
def test_naive_version_check_loses_updates(acme):
    kid = ProfileFactory(tenant=acme)
    outcomes = run_concurrently(lambda i: naive_update(kid.pk, 1, f"N{i}"), 20)
    assert [o.value for o in outcomes].count("ok") > 1
    assert fresh(kid).version > 2


@pytest.mark.parametrize("hold", ["link", "delete"])
def test_attach_child_vs_delete_parent(acme, hold):
    for _round in range(4):
        parent = ProfileFactory(tenant=acme)
        child = ProfileFactory(tenant=acme)

        def attach(parent=parent, child=child):
            return Profile.objects.update_profile(child.pk, tenant=acme, version=1, father=parent.pk)

        def delete(parent=parent):
            return Profile.objects.soft_delete(parent.pk, tenant=acme, version=1)

        pair = tuple(o.code for o in against_parent_delete(attach, delete, hold=hold))
        assert pair in ONE_OF_TWO, pair
        assert live_children_of_deleted_parents(acme) == 0


def test_concurrent_reparenting_cannot_close_a_cycle(acme):
    """Two edits whose row locks do not overlap would close C->D->E->A->B->C; the tree lock orders them."""
    for _round in range(3):
        c = ProfileFactory(tenant=acme, first_name="C")
        b = ProfileFactory(tenant=acme, first_name="B", father=c)
        a = ProfileFactory(tenant=acme, first_name="A", father=b)
        e = ProfileFactory(tenant=acme, first_name="E")
        d = ProfileFactory(tenant=acme, first_name="D", father=e)
        edits = [
            lambda c=c, d=d: Profile.objects.update_profile(c.pk, tenant=acme, version=1, father=d.pk),
            lambda e=e, a=a: Profile.objects.update_profile(e.pk, tenant=acme, version=1, father=a.pk),
        ]
        counts = tally(run_concurrently(lambda i, edits=edits: held(edits[i], 0.1), 2))
        assert counts == {"ok": 1, "would_create_cycle": 1}, counts
        assert profiles_in_a_cycle(acme) == 0


@pytest.mark.control
def test_without_the_tree_lock_reparenting_closes_a_cycle(acme, locks_switched_off):
    """The same two edits as above with PROFILE_TREE switched off: each cycle check misses the other's edge."""
    locks_switched_off(LockNamespace.PROFILE_TREE)
    c = ProfileFactory(tenant=acme)
    b = ProfileFactory(tenant=acme, father=c)
    a = ProfileFactory(tenant=acme, father=b)
    e = ProfileFactory(tenant=acme)
    d = ProfileFactory(tenant=acme, father=e)
    edits = [
        lambda: Profile.objects.update_profile(c.pk, tenant=acme, version=1, father=d.pk),
        lambda: Profile.objects.update_profile(e.pk, tenant=acme, version=1, father=a.pk),
    ]
    outcomes = run_concurrently(lambda i: held(edits[i], 0.1), 2)
    assert tally(outcomes) == {"ok": 2}, [repr(o.error) for o in outcomes]
    assert profiles_in_a_cycle(acme) == 5


def test_undo_while_the_parents_delete_is_in_flight_then_after_it_commits(acme):
    dad, kid, entry = moved_child(acme)
    finish = in_flight(lambda: Profile.objects.soft_delete(dad.pk, tenant=acme, version=1))
    try:
        with pytest.raises(Exception) as info:
            ProfileAuditLog.objects.undo(entry.pk, tenant=acme, actor=None, reason="r")
        assert info.value.code == "parent_locked"
    finally:
        finish()
    with pytest.raises(Exception) as info:
        ProfileAuditLog.objects.undo(entry.pk, tenant=acme, actor=None, reason="r")
    assert info.value.code == "parent_deleted"
    assert fresh(kid).father_id != dad.pk and live_children_of_deleted_parents(acme) == 0


def test_parent_delete_while_the_undo_is_in_flight_then_after_it_commits(acme):
    dad, kid, entry = moved_child(acme)
    finish = in_flight(lambda: ProfileAuditLog.objects.undo(entry.pk, tenant=acme, actor=None, reason="r"))
    try:
        with pytest.raises(Exception) as info:
            Profile.objects.soft_delete(dad.pk, tenant=acme, version=1)
        assert info.value.code == "resource_locked"
    finally:
        finish()
    with pytest.raises(Exception) as info:
        Profile.objects.soft_delete(dad.pk, tenant=acme, version=1)
    assert info.value.code == "profile_has_children"
    assert fresh(kid).father_id == dad.pk and live_children_of_deleted_parents(acme) == 0


def test_api_undo_with_the_father_held_is_409_parent_locked_with_retry_after(acme):
    from tests.conftest import token_client
    from tests.factories import MembershipFactory

    client = token_client(MembershipFactory(tenant=acme).user)
    dad, kid, entry = moved_child(acme)
    finish = in_flight(lambda: list(Profile.objects.select_for_update().filter(pk=dad.pk)))
    try:
        response = client.post(
            f"/api/t/acme/audit-log/{entry.pk}/undo",
            {"reason": "r"},
            format="json",
            HTTP_IDEMPOTENCY_KEY="k1",
            HTTP_ACCEPT_LANGUAGE="ar",
        )
    finally:
        finish()
    assert response.status_code == 409 and response.json()["error"] == {
        "code": "parent_locked",
        "message": "الملف الشخصي للأب قيد التعديل. يرجى المحاولة لاحقاً.",
        "details": {"parent": "father"},
    }
    assert int(response["Retry-After"]) >= 1
    # Lock contention is not stored against the key: the same key retried now applies the undo.
    retry = client.post(
        f"/api/t/acme/audit-log/{entry.pk}/undo", {"reason": "r"}, format="json", HTTP_IDEMPOTENCY_KEY="k1"
    )
    assert retry.status_code == 200 and retry.json()["profile"]["father"] == dad.pk


def test_a_lock_wait_after_the_parents_are_held_is_not_named_after_a_parent(acme):
    """Regression: a lock timeout in the writes after the parent locks was reported as ``parent_locked``.

    Here the audit INSERT's foreign-key check (Django's FKs are DEFERRABLE INITIALLY DEFERRED,
    so it runs at COMMIT) waits on the tenant row another transaction holds FOR UPDATE; the
    mother is free, so the answer is the generic ``resource_locked``.
    """
    from core.models import Tenant

    kid = ProfileFactory(tenant=acme, first_name="Kid")
    mum = ProfileFactory(tenant=acme, first_name="Mum", sex="female")
    finish = in_flight(lambda: list(Tenant.objects.select_for_update().filter(pk=acme.pk)))
    try:
        with lock_timeout(200), pytest.raises(Exception) as info:  # the manager's own COMMIT must see it
            Profile.objects.update_profile(kid.pk, tenant=acme, version=1, mother=mum.pk)
    finally:
        finish()
    assert getattr(info.value, "code", None) == "resource_locked", repr(info.value)
    assert fresh(kid).mother_id is None and fresh(kid).version == 1


def test_undo_steps_2_and_3_refuse_at_once_when_the_entry_or_the_profile_row_is_held(acme):
    """Step 2: the entry row held elsewhere -> operation_locked; step 3: the profile row -> resource_locked.

    (The advisory lock of step 1 is free in both cases: these are the NOWAIT row locks biting.)
    """
    dad, kid, entry = moved_child(acme)
    for held_row, code in [
        (lambda: list(ProfileAuditLog.objects.select_for_update().filter(pk=entry.pk)), "operation_locked"),
        (lambda: list(Profile.objects.select_for_update().filter(pk=kid.pk)), "resource_locked"),
    ]:
        finish = in_flight(held_row)
        try:
            error, elapsed = refusal_and_time(
                lambda: ProfileAuditLog.objects.undo(entry.pk, tenant=acme, actor=None, reason="r")
            )
        finally:
            finish()
        assert getattr(error, "code", None) == code, repr(error)
        assert elapsed < 0.5, elapsed  # NOWAIT, not the 2 s lock_timeout
        assert ProfileAuditLog.objects.get(pk=entry.pk).undone_at is None and fresh(kid).version == 2
    ProfileAuditLog.objects.undo(entry.pk, tenant=acme, actor=None, reason="r")
    assert fresh(kid).father_id == dad.pk


def test_another_tenants_undo_of_the_entry_id_meanwhile_is_404_there_not_409(acme):
    """The try-lock is per tenant and entry: while this tenant's undo holds it (done, not yet committed),
    another tenant's undo of the same id answers 404, as for any id not its own, instead of a 409 that
    would tell it the entry exists (and, taken first, would have made this tenant's undo fail)."""
    from profiles.exceptions import AuditEntryNotFound

    dad, kid, entry = moved_child(acme)
    globex = TenantFactory(slug="globex")
    finish = in_flight(lambda: ProfileAuditLog.objects.undo(entry.pk, tenant=acme, actor=None, reason="r"))
    try:
        with pytest.raises(AuditEntryNotFound):
            ProfileAuditLog.objects.undo(entry.pk, tenant=globex, actor=None, reason="r")
    finally:
        finish()
    assert fresh(kid).father_id == dad.pk and ProfileAuditLog.objects.get(pk=entry.pk).undone_at is not None


# --- the tree lock, proven by behaviour: an undo racing a re-parenting ----------------


def _undo(cycle, actor):
    return lambda: ProfileAuditLog.objects.undo(
        cycle["undo_me"].pk, tenant=cycle["undo_me"].tenant_id, actor=actor, reason="restore E's father"
    )


def _reparent(cycle, actor):
    return lambda: Profile.objects.update_profile(
        cycle["c"].pk, tenant=cycle["c"].tenant_id, version=1, actor=actor, father=cycle["d"].pk
    )


@pytest.mark.parametrize("paused", ["undo", "reparent"])
def test_an_undo_and_a_reparenting_cannot_close_a_cycle_of_five(acme, paused):
    """Without the PROFILE_TREE lock (in either path) this closes C->D->E->A->B->C.

    Their row locks do not overlap (the undo locks its entry, E and A; the re-parenting C
    and D), so only the tree lock orders them. Deterministic: the first path runs its cycle
    check and its writes, then waits at COMMIT (its actor's row is held elsewhere, see
    ``paused_at_commit``) with its locks held; the second starts then. With the tree lock the
    second waits for the first to commit, and its cycle check, run after the wait, sees the
    first's edge: would_create_cycle.
    """
    from tests.factories import UserFactory

    cycle = five_for_a_cycle(acme, ProfileFactory)
    first_actor, second_actor = UserFactory(username="first"), UserFactory(username="second")
    if paused == "undo":
        first, second = paused_at_commit(_undo(cycle, first_actor), _reparent(cycle, second_actor), user=first_actor)
    else:
        first, second = paused_at_commit(_reparent(cycle, first_actor), _undo(cycle, second_actor), user=first_actor)
    assert (first.code, second.code) == ("ok", "would_create_cycle"), (first.error, second.error)
    assert profiles_in_a_cycle(acme) == 0
    undone = ProfileAuditLog.objects.get(pk=cycle["undo_me"].pk).undone_at is not None
    assert undone == (paused == "undo")
    assert (fresh(cycle["c"]).father_id == cycle["d"].pk) == (paused == "reparent")


def test_a_storm_of_undos_and_reparentings_never_closes_a_cycle(acme):
    """The same race under a barrier, both paths held open a moment after their work, many rounds."""
    for _round in range(6):
        cycle = five_for_a_cycle(acme, ProfileFactory)
        paths = [_undo(cycle, None), _reparent(cycle, None)]
        counts = tally(run_concurrently(lambda i, paths=paths: held(paths[i], 0.05), 2))
        assert counts == {"ok": 1, "would_create_cycle": 1}, counts
        assert profiles_in_a_cycle(acme) == 0
