"""Every writer of one profile at once: the API, a real admin change form, the admin actions, undo, the command.

Each path runs as its user would drive it (DRF token client, Django test client logged in
as a superuser, ``call_command``), on its own connection, and each writes with its own
actor, so the audit log tells afterwards which path wrote what. After each storm:

- every path's answer matches the rows (a success wrote exactly its one entry, a refusal
  nothing), never a 500 or a traceback;
- the audit log replays to the row: each entry's ``old_data`` is what the previous
  winner left (no lost update: exactly one winner per version), and the version is
  1 + the entries after ``create``;
- the invariants hold (the autouse fixture in tests/conftest.py).

Then the worst orders, deterministically, holding from a second connection exactly the
lock one path takes.
"""

import io
import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from profiles.models import Profile, ProfileAuditLog
from tests.conftest import token_client
from tests.factories import MembershipFactory, TenantFactory, UserFactory
from tests.profiles.concurrency import five_for_a_cycle, paused_at_commit
from tests.profiles.factories import ProfileFactory, form_data, fresh
from tests.races import Background, OpenTransaction, run_concurrently

pytestmark = pytest.mark.django_db(transaction=True)

PROFILE_LIST = reverse("admin:profiles_profile_changelist")


@pytest.fixture
def acme():
    return TenantFactory(slug="acme")


@pytest.fixture
def people(acme):
    """One user per path, so each audit entry names the path that wrote it."""

    def member(name):
        return MembershipFactory(tenant=acme, user=UserFactory(username=name)).user

    def superuser(name):
        return get_user_model().objects.create_superuser(name, f"{name}@example.com", "pw")

    return {
        "api_patch": member("api_patch"),
        "api_undo": member("api_undo"),
        "form": superuser("form"),
        "delete_action": superuser("delete_action"),
        "restore_action": superuser("restore_action"),
        "command": member("command"),  # an undo from the shell is credited to one of the shop's
    }


def logged_in(user):
    client = Client()
    client.force_login(user)
    return client


def opened_version(page):
    """The hidden expected_version the change form was rendered with."""
    return int(re.search(rb'name="expected_version" value="(\d+)"', page.content).group(1))


# --- the paths, each answering ("ok" | a refusal code) ---------------------------


def api_code(response):
    assert response.status_code in (200, 409), (response.status_code, response.content)
    return "ok" if response.status_code == 200 else response.json()["error"]["code"]


def form_code(response):
    if response.status_code == 302:
        return "ok"
    assert response.status_code == 200, response.status_code
    return response.wsgi_request._guarded_refusal.code  # the form came back with the refusal


def action_code(response, profile):
    assert response.status_code == 200, response.status_code
    (text,) = [str(m) for m in get_messages(response.wsgi_request) if f"(#{profile.pk})" in str(m)]
    outcome = text.split(f"(#{profile.pk}): ", 1)[1]
    return "ok" if outcome in ("deleted", "restored") else outcome.split(":", 1)[0]


def command_code(entry, actor):
    err = io.StringIO()
    try:
        call_command(
            "undo_audit_entry",
            str(entry.pk),
            "--reason",
            "cli",
            "--actor",
            actor.username,
            stdout=io.StringIO(),
            stderr=err,
        )
    except SystemExit as exit_:
        assert exit_.code in (1, 3), (exit_.code, err.getvalue())
        assert "Traceback" not in err.getvalue()
        return err.getvalue().split(":", 1)[0]
    return "ok"


ALLOWED = {
    "api_patch": {"ok", "version_conflict", "resource_locked", "profile_deleted"},
    "form": {"ok", "version_conflict", "resource_locked", "profile_deleted"},
    "delete_action": {"ok", "version_conflict", "resource_locked", "profile_deleted"},
    "restore_action": {"ok", "version_conflict", "resource_locked", "profile_not_deleted"},
    "api_undo": {"ok", "already_undone", "operation_locked", "resource_locked", "stale_version", "profile_deleted"},
    "command": {"ok", "already_undone", "operation_locked", "resource_locked", "stale_version", "profile_deleted"},
}


def replay(profile):
    """Replay the audit log; assert each entry started from what the previous one left; return the state."""
    entries = list(ProfileAuditLog.objects.filter(profile=profile).order_by("pk"))
    assert entries[0].action == "create"
    state = dict(entries[0].new_data, deleted_at=None)
    for entry in entries[1:]:
        for field, old in entry.old_data.items():
            assert state[field] == old, f"entry {entry.pk} ({entry.action}) overwrote {field}: lost update"
        state.update(entry.new_data)
    return state, len(entries)


def test_every_writer_of_one_profile_at_once(acme, people):
    clients = {
        "api_patch": token_client(people["api_patch"]),
        "api_undo": token_client(people["api_undo"]),
        "form": logged_in(people["form"]),
        "delete_action": logged_in(people["delete_action"]),
        "restore_action": logged_in(people["restore_action"]),
    }
    paths = list(ALLOWED)
    seen = {path: set() for path in paths}
    for round_ in range(6):
        kid = ProfileFactory(tenant=acme, first_name="Kid", last_name="Family")
        Profile.objects.update_profile(kid.pk, tenant=acme, version=1, first_name="Before")
        entry = ProfileAuditLog.objects.get(profile=kid, action="update")
        if round_ % 2:  # half the rounds start deleted, so restore (and the undo of it) has work to do
            Profile.objects.soft_delete(kid.pk, tenant=acme, version=2)
            entry = ProfileAuditLog.objects.get(profile=kid, action="delete")
        kid = fresh(kid)
        change_url = reverse("admin:profiles_profile_change", args=[kid.pk])
        version = opened_version(clients["form"].get(change_url))  # the form is opened before the storm
        assert version == kid.version
        last_setup_entry = ProfileAuditLog.objects.filter(profile=kid).latest("pk").pk

        def attempt(i, kid=kid, entry=entry, version=version, change_url=change_url):
            path = paths[i]
            if path == "api_patch":
                return api_code(
                    clients[path].patch(
                        f"/api/t/acme/profiles/{kid.pk}", {"version": version, "last_name": "Api"}, format="json"
                    )
                )
            if path == "form":
                return form_code(
                    clients[path].post(change_url, form_data(kid, expected_version=version, first_name="Form"))
                )
            if path in ("delete_action", "restore_action"):
                action = "soft_delete_selected" if path == "delete_action" else "restore_selected"
                response = clients[path].post(
                    PROFILE_LIST,
                    {"action": action, "apply": "1", "_selected_action": [kid.pk], f"seen_{kid.pk}": version},
                    follow=True,
                )
                return action_code(response, kid)
            if path == "api_undo":
                return api_code(
                    clients[path].post(f"/api/t/acme/audit-log/{entry.pk}/undo", {"reason": "api"}, format="json")
                )
            return command_code(entry, people["command"])

        outcomes = run_concurrently(attempt, len(paths))
        answers = {}
        for path, outcome in zip(paths, outcomes, strict=True):
            assert outcome.ok, (path, repr(outcome.error))
            answers[path] = outcome.value
            assert outcome.value in ALLOWED[path], (path, outcome.value)
            seen[path].add(outcome.value)

        new = list(ProfileAuditLog.objects.filter(profile=kid, pk__gt=last_setup_entry).order_by("pk"))
        writers = [next(p for p in paths if people[p].pk == e.actor_id) for e in new]
        assert sorted(writers) == sorted(p for p in paths if answers[p] == "ok"), (answers, writers)
        # the two that carried the version the form was opened at: at most one wins
        assert [answers["api_patch"], answers["form"]].count("ok") <= 1, answers
        assert [answers["api_undo"], answers["command"]].count("ok") <= 1, answers
        state, entries = replay(kid)
        kid = fresh(kid)
        assert kid.version == entries, (kid.version, entries)  # 1 + entries after create
        for field in ("first_name", "last_name"):
            assert getattr(kid, field) == state[field], (field, answers)
        assert (kid.deleted_at.isoformat() if kid.deleted_at else None) == state["deleted_at"]
        entry.refresh_from_db()
        undone = "ok" in (answers["api_undo"], answers["command"])
        assert (entry.undone_at is not None) == undone and (entry.undo_entry_id is not None) == undone
    assert any("ok" in answers for answers in seen.values()), seen


# --- deterministic orders -------------------------------------------------------------


def test_a_form_opened_before_an_api_patch_commits_and_saved_after_is_refused_with_its_input(acme, people):
    kid = ProfileFactory(tenant=acme, first_name="Kid", last_name="Family")
    api, admin = token_client(people["api_patch"]), logged_in(people["form"])
    change_url = reverse("admin:profiles_profile_change", args=[kid.pk])

    # The PATCH has locked and written the row but not committed (its transaction is held open).
    patch = OpenTransaction(
        lambda: api.patch(f"/api/t/acme/profiles/{kid.pk}", {"version": 1, "first_name": "Api"}, format="json")
    ).start()
    try:
        version = opened_version(admin.get(change_url))  # the operator opens the form now: version 1
        assert version == 1
        typed = form_data(kid, expected_version=version, last_name="Typed by the operator")
        during = admin.post(change_url, typed)  # saved while the PATCH holds the row
        assert form_code(during) == "resource_locked"
    finally:
        assert patch.commit().status_code == 200  # the PATCH commits
    after = admin.post(change_url, typed)  # the same form, saved after the PATCH committed
    assert form_code(after) == "version_conflict"
    for response in (during, after):
        assert b'value="Typed by the operator"' in response.content  # the operator's input is kept
    assert b"now version 2" in after.content
    kid = fresh(kid)
    assert (kid.first_name, kid.last_name, kid.version) == ("Api", "Family", 2)
    assert list(ProfileAuditLog.objects.filter(profile=kid).values_list("actor__username", flat=True)) == [
        None,
        "api_patch",
    ]


@pytest.mark.parametrize("paused", ["command_undo", "api_reparent"])
def test_an_api_reparenting_and_a_command_undo_cannot_close_a_cycle(acme, people, paused):
    """The tree lock across paths: the first path waits at COMMIT (its actor's row held elsewhere)
    after its cycle check, with its locks held; the second, run then, must see its edge."""
    cycle = five_for_a_cycle(acme, ProfileFactory)
    api = token_client(people["api_patch"])

    def reparent():
        return api_code(
            api.patch(f"/api/t/acme/profiles/{cycle['c'].pk}", {"version": 1, "father": cycle["d"].pk}, format="json")
        )

    def undo():
        return command_code(cycle["undo_me"], people["command"])

    if paused == "command_undo":
        first, second = paused_at_commit(undo, reparent, user=people["command"])
    else:
        first, second = paused_at_commit(reparent, undo, user=people["api_patch"])
    assert (first.value, second.value) == ("ok", "would_create_cycle"), (first, second)
    assert (fresh(cycle["e"]).father_id == cycle["a"].pk) == (paused == "command_undo")
    assert (fresh(cycle["c"]).father_id == cycle["d"].pk) == (paused == "api_reparent")


def test_an_admin_soft_delete_of_a_parent_racing_an_api_undo_that_restores_it(acme, people):
    """The undo holds the father's row (FOR UPDATE NOWAIT) until it commits: the admin action,
    run meanwhile, is refused resource_locked; run after, profile_has_children."""
    dad = ProfileFactory(tenant=acme, first_name="Dad")
    other = ProfileFactory(tenant=acme, first_name="Other")
    kid = ProfileFactory(tenant=acme, first_name="Kid", father=dad)
    Profile.objects.update_profile(kid.pk, tenant=acme, version=1, father=other.pk)
    entry = ProfileAuditLog.objects.get(profile=kid, action="update")
    api, admin = token_client(people["api_undo"]), logged_in(people["delete_action"])

    seen = Profile.objects.get(pk=dad.pk).version  # the page the operator confirms showed this

    def delete_dad():
        return action_code(
            admin.post(
                PROFILE_LIST,
                {"action": "soft_delete_selected", "apply": "1", "_selected_action": [dad.pk], f"seen_{dad.pk}": seen},
                follow=True,
            ),
            dad,
        )

    undo = OpenTransaction(
        lambda: api.post(f"/api/t/acme/audit-log/{entry.pk}/undo", {"reason": "r"}, format="json")
    ).start()
    try:
        during = Background(delete_dad).join().outcome
    finally:
        assert undo.commit().status_code == 200
    assert during.value == "resource_locked"
    assert delete_dad() == "profile_has_children"
    assert fresh(kid).father_id == dad.pk and fresh(dad).deleted_at is None
