"""The commands through their command-line path: argument parser, exit codes, stdout/stderr.

``run`` does what ``BaseCommand.run_from_argv`` does (parse argv with a command-line
parser, so usage errors exit 2; execute; SystemExit carries the code) except closing
the database connections at the end, so most tests can run in the test transaction.
One test goes through the real ``run_from_argv``.
"""

from importlib import import_module

import pytest

from core.db import LockNamespace
from profiles.models import Profile, ProfileAuditLog
from tests.factories import TenantFactory, UserFactory
from tests.profiles.factories import ProfileFactory, fresh
from tests.races import advisory_locked, lock_timeout, row_locked, statement_timeout

pytestmark = pytest.mark.django_db


def run(name, *args, capsys):
    command = import_module(f"profiles.management.commands.{name}").Command()
    command._called_from_command_line = True  # parser errors exit 2, as from manage.py
    try:
        options = vars(command.create_parser("manage.py", name).parse_args([str(a) for a in args]))
        command.execute(*options.pop("args", ()), **{**options, "skip_checks": True})
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def moved():
    tenant = TenantFactory(slug="acme")
    dad = ProfileFactory(tenant=tenant, first_name="Dad")
    other = ProfileFactory(tenant=tenant, first_name="Other")
    kid = ProfileFactory(tenant=tenant, first_name="Kid", father=dad)
    Profile.objects.update_profile(kid.pk, tenant=tenant, version=1, father=other.pk)
    return {"dad": dad, "kid": kid, "entry": ProfileAuditLog.objects.get(profile=kid, action="update")}


def test_undo_succeeds_with_exit_0(moved, capsys):
    operator = UserFactory(username="operator", is_superuser=True)  # the platform's: any tenant's entry
    code, out, err = run(
        "undo_audit_entry", moved["entry"].pk, "--reason", "wrong father", "--actor", "operator", capsys=capsys
    )
    assert code == 0, err
    assert f"Undone entry {moved['entry'].pk}" in out and "profile version 3" in out
    entry = ProfileAuditLog.objects.get(pk=moved["entry"].pk)
    assert entry.undone_by == operator and entry.undo_reason == "wrong father" and entry.undo_entry.actor == operator
    assert fresh(moved["kid"]).father_id == moved["dad"].pk


def test_refusals_exit_1_with_the_message_in_english_and_arabic(moved, capsys, monkeypatch):
    entry = moved["entry"]
    Profile.objects.soft_delete(moved["dad"].pk, tenant=moved["dad"].tenant, version=1)
    code, out, err = run("undo_audit_entry", entry.pk, "--reason", "r", capsys=capsys)
    assert (code, out) == (1, "")
    assert err.strip() == "parent_deleted: The father's profile is deleted. Restore the father first."
    code, _out, err = run("undo_audit_entry", entry.pk, "--reason", "r", "--language", "ar", capsys=capsys)
    assert code == 1
    assert err.strip() == "parent_deleted: الملف الشخصي للأب محذوف. يجب استعادة الأب أولاً."
    monkeypatch.setenv("DJANGO_LANGUAGE", "ar")
    code, _out, err = run("undo_audit_entry", entry.pk, "--reason", "r", capsys=capsys)
    assert code == 1 and "الأب" in err
    assert ProfileAuditLog.objects.get(pk=entry.pk).undone_at is None


def test_already_undone_and_unknown_entry_exit_1(moved, capsys):
    entry = moved["entry"]
    assert run("undo_audit_entry", entry.pk, "--reason", "r", capsys=capsys)[0] == 0
    code, _out, err = run("undo_audit_entry", entry.pk, "--reason", "r", capsys=capsys)
    assert code == 1 and err.strip() == "already_undone: This change has already been undone."
    code, _out, err = run("undo_audit_entry", entry.pk, "--reason", "r", "--language", "ar", capsys=capsys)
    assert code == 1 and err.strip() == "already_undone: تم التراجع عن هذا التغيير مسبقاً."
    code, _out, err = run("undo_audit_entry", 999999, "--reason", "r", capsys=capsys)
    assert code == 1 and err.strip() == "audit_entry_not_found: Audit entry not found."
    code, _out, err = run("undo_audit_entry", 999999, "--reason", "r", "--language", "ar", capsys=capsys)
    assert code == 1 and err.strip() == "audit_entry_not_found: قيد السجل غير موجود."


@pytest.mark.parametrize(
    "args",
    [
        ["abc", "--reason", "r"],
        [str(10**30), "--reason", "r"],
        ["1"],  # --reason is required
        ["1", "--reason", "r", "--actor", "nobody"],
        ["1", "--reason", "r", "--language", "xx"],
        ["1", "--reason", "   "],  # a blank reason is bad usage (it used to exit 1)
        [],
    ],
)
def test_bad_usage_exits_2(moved, capsys, args):
    code, out, err = run("undo_audit_entry", *args, capsys=capsys)
    assert code == 2 and out == "" and err
    assert ProfileAuditLog.objects.filter(undone_at__isnull=False).count() == 0


def test_bad_usage_message_is_localized(moved, capsys):
    code, _out, err = run("undo_audit_entry", "abc", "--reason", "r", "--language", "ar", capsys=capsys)
    assert code == 2 and err.strip() == "يجب أن يكون معرّف قيد السجل عدداً صحيحاً."
    code, _out, err = run("undo_audit_entry", "1", "--reason", "r", "--actor", "ghost", capsys=capsys)
    assert code == 2 and err.strip() == "No user named ghost among the members of the entry's tenant."


def test_the_undo_is_credited_only_to_a_member_of_the_entrys_tenant(moved, capsys):
    """Regression: ``--actor`` took any user of the platform, so an undo of acme's entry could be credited to
    another shop's user, whose name acme's history API then showed."""
    from tests.factories import MembershipFactory, UserFactory

    MembershipFactory(tenant=TenantFactory(slug="other"), user=UserFactory(username="stranger"))
    entry = str(moved["entry"].pk)
    code, _out, err = run("undo_audit_entry", entry, "--reason", "r", "--actor", "stranger", capsys=capsys)
    assert code == 2 and "No user named stranger among the members" in err
    assert ProfileAuditLog.objects.filter(undone_at__isnull=False).count() == 0
    MembershipFactory(tenant=moved["kid"].tenant, user=UserFactory(username="clerk"))
    code, _out, err = run("undo_audit_entry", entry, "--reason", "r", "--actor", "clerk", capsys=capsys)
    assert code == 0, err
    assert ProfileAuditLog.objects.get(pk=entry).undone_by.username == "clerk"


def test_blank_reason_exits_2_with_the_localized_message_even_for_a_real_entry(moved, capsys):
    entry = moved["entry"]
    code, out, err = run("undo_audit_entry", entry.pk, "--reason", " ", "--language", "ar", capsys=capsys)
    assert (code, out, err.strip()) == (2, "", "undo_reason_required: اذكر سبب التراجع.")
    assert ProfileAuditLog.objects.get(pk=entry.pk).undone_at is None


@pytest.mark.parametrize("option", ["--reason", "--actor"])
def test_a_reason_or_actor_that_is_not_utf8_exits_2_not_a_traceback(moved, capsys, option):
    # A byte that is not UTF-8 on the command line (e.g. Latin-1 "caf\xe9" from a terminal) reaches Python as a
    # lone surrogate (surrogateescape), which PostgreSQL's text cannot take: it was a UnicodeEncodeError traceback.
    args = {"--reason": ["--reason", "caf\udce9"], "--actor": ["--reason", "r", "--actor", "caf\udce9"]}[option]
    code, out, err = run("undo_audit_entry", moved["entry"].pk, *args, "--language", "ar", capsys=capsys)
    assert (code, out) == (2, "") and option in err and "UTF-8" in err and "Traceback" not in err
    assert ProfileAuditLog.objects.filter(undone_at__isnull=False).count() == 0


def test_a_reason_longer_than_the_api_and_the_admin_take_exits_2_and_one_that_fits_is_kept(moved, capsys):
    # The API and the admin cap the reason at 500 characters; the command (through the manager) did not.
    code, out, err = run("undo_audit_entry", moved["entry"].pk, "--reason", "x" * 501, capsys=capsys)
    assert (code, out) == (2, "") and err.startswith("undo_reason_too_long:") and "500" in err
    assert ProfileAuditLog.objects.filter(undone_at__isnull=False).count() == 0
    assert run("undo_audit_entry", moved["entry"].pk, "--reason", "x" * 500, capsys=capsys)[0] == 0
    assert ProfileAuditLog.objects.get(pk=moved["entry"].pk).undo_reason == "x" * 500


def test_show_history_of_a_profile_and_of_one_entry(moved, capsys):
    kid, entry = moved["kid"], moved["entry"]
    run("undo_audit_entry", entry.pk, "--reason", "back", capsys=capsys)
    code, out, _err = run("show_profile_history", kid.pk, capsys=capsys)
    lines = out.strip().splitlines()
    assert code == 0 and [line.split()[3] for line in lines] == ["create", "update", "undo"]
    assert "undone at" in lines[1] and "back" in lines[1]
    code, out, _err = run("show_profile_history", "--entry", entry.pk, "--language", "ar", capsys=capsys)
    assert code == 0 and len(out.strip().splitlines()) == 1 and "تم التراجع عنه" in out


def test_show_history_refusals(moved, capsys):
    assert run("show_profile_history", 999999, capsys=capsys)[:3:2] == (1, "Profile not found.\n")
    assert run("show_profile_history", "--entry", 999999, capsys=capsys)[0] == 1
    assert run("show_profile_history", capsys=capsys)[0] == 2
    assert run("show_profile_history", "x", capsys=capsys)[0] == 2
    assert run("show_profile_history", "1", "--entry", "2", capsys=capsys)[0] == 2


@pytest.mark.django_db(transaction=True)
def test_the_real_command_line_entry_point(moved, capsys):
    from profiles.management.commands.undo_audit_entry import Command

    entry = moved["entry"]
    with pytest.raises(SystemExit) as exit_:
        Command().run_from_argv(["manage.py", "undo_audit_entry", "x", "--reason", "r"])
    assert exit_.value.code == 2
    Command().run_from_argv(["manage.py", "undo_audit_entry", str(entry.pk), "--reason", "r"])  # no exit: 0
    with pytest.raises(SystemExit) as exit_:
        Command().run_from_argv(["manage.py", "undo_audit_entry", str(entry.pk), "--reason", "r"])
    assert exit_.value.code == 1
    assert "already_undone" in capsys.readouterr().err


# --- a lock held elsewhere: a message and exit 3, never a traceback ---------------


def _held(what, moved):
    """``what`` of the moved entry, locked from another connection while the block runs."""
    entry = moved["entry"]
    if what == "tree":
        return advisory_locked(LockNamespace.PROFILE_TREE, entry.tenant_id)
    rows = {
        "entry": ProfileAuditLog.objects.filter(pk=entry.pk),
        "profile": Profile.objects.filter(pk=moved["kid"].pk),
        "father": Profile.objects.filter(pk=moved["dad"].pk),
    }[what]
    return row_locked(rows)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "held,expected",
    [
        ("entry", "operation_locked: This change is being undone by another request. Try again shortly."),
        ("profile", "resource_locked: This resource is being changed by another request. Try again shortly."),
        ("father", "parent_locked: The father's profile is being edited. Try again shortly."),
        # the one lock that waits: lock_timeout expires (shortened here to 300 ms)
        ("tree", "resource_locked: This resource is being changed by another request. Try again shortly."),
    ],
)
def test_a_lock_held_elsewhere_exits_3_with_the_message(moved, capsys, held, expected):
    entry = moved["entry"]
    with _held(held, moved), lock_timeout(300):
        code, out, err = run("undo_audit_entry", entry.pk, "--reason", "r", capsys=capsys)
    assert (code, out, err.strip()) == (3, "", expected)
    assert "Traceback" not in err
    assert ProfileAuditLog.objects.get(pk=entry.pk).undone_at is None and fresh(moved["kid"]).version == 2
    # Released: the same command applies it.
    assert run("undo_audit_entry", entry.pk, "--reason", "r", capsys=capsys)[0] == 0


@pytest.mark.django_db(transaction=True)
def test_a_statement_cancelled_by_statement_timeout_exits_3_with_the_message_not_a_traceback(moved, capsys):
    """Regression: only a lock refusal was translated; a statement past statement_timeout (57014) ended the command
    with a traceback and exit 1, which cron reads as "refused", not "run again shortly". Forced here by a tree lock
    held elsewhere, waited for longer than the statement may run."""
    entry = moved["entry"]
    with _held("tree", moved), lock_timeout(10_000), statement_timeout(300):
        code, out, err = run("undo_audit_entry", entry.pk, "--reason", "r", capsys=capsys)
    assert (code, out, err.strip()) == (3, "", "database_timeout: The database took too long to answer. Try again.")
    assert ProfileAuditLog.objects.get(pk=entry.pk).undone_at is None


@pytest.mark.django_db(transaction=True)
def test_a_held_lock_through_the_real_entry_point_is_localized(moved, capsys):
    from profiles.management.commands.undo_audit_entry import Command

    with _held("profile", moved), pytest.raises(SystemExit) as exit_:
        Command().run_from_argv(
            ["manage.py", "undo_audit_entry", str(moved["entry"].pk), "--reason", "r", "--language", "ar"]
        )
    assert exit_.value.code == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # after any system-check warnings
    assert last == "resource_locked: يتم تعديل هذا المورد بواسطة طلب آخر. حاول مرة أخرى بعد قليل."


def test_the_old_command_name_still_undoes_and_says_it_is_deprecated(moved, capsys):
    code, _out, err = run("undo_profile_update", moved["entry"].pk, "--reason", "r", capsys=capsys)
    assert code == 0 and "deprecated: run undo_audit_entry" in err
    assert ProfileAuditLog.objects.get(pk=moved["entry"].pk).undone_at is not None
