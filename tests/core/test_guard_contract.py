"""The guard contract (core/guards.py) holds on every manager of every domain app."""

import inspect

import pytest
from django.apps import apps
from django.db import DataError, connection, transaction

from core.discovery import project_apps
from core.guards import guarded
from core.integrity import StateMachine, state_machines


def _manager_classes():
    seen = set()
    for app_config in project_apps():
        for model in app_config.get_models():
            for manager in model._meta.managers:
                cls = type(manager)
                if cls not in seen:
                    seen.add(cls)
                    yield model, cls


def _altering_methods():
    for model, cls in _manager_classes():
        for name, member in inspect.getmembers(cls):
            if name.startswith("_") or not callable(member):
                continue
            if getattr(member, "alters_data", False) and member.__module__ not in (
                "django.db.models.query",
                "django.db.models.manager",
            ):
                yield model, name, member


ALTERING = sorted(((m._meta.label, n), f) for m, n, f in _altering_methods())


def test_there_are_guarded_operations_to_check():
    assert len(ALTERING) >= 20


@pytest.mark.parametrize("label,name", [key for key, _f in ALTERING])
def test_every_altering_manager_method_follows_the_contract(label, name):
    method = dict(ALTERING)[(label, name)]
    assert getattr(method, "guard", None) in ("opens", "joins", "statement", "sweep"), (
        f"{label}.{name} is not @guarded or @sweep"
    )
    doc = inspect.getdoc(method) or ""
    assert doc.strip(), f"{label}.{name} has no docstring stating its locks and refusals"


class _Probe:
    db = "default"

    @guarded(joins=True)
    def joins(self):
        return connection.in_atomic_block

    @guarded
    def opens(self):
        return connection.in_atomic_block

    @guarded(statement=True)
    def statement(self):
        return connection.in_atomic_block

    @guarded(statement=True)
    def refused_by_the_row(self):
        from core.exceptions import Conflict

        raise Conflict()

    @guarded(statement=True)
    def refused_by_the_database(self):
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1/0")


@pytest.mark.django_db(transaction=True)
def test_a_one_statement_operation_opens_no_transaction_and_inside_one_takes_no_savepoint():
    from core.exceptions import Conflict

    assert _Probe().statement() is False
    assert _Probe.statement.guard == "statement" and _Probe.statement.alters_data
    with transaction.atomic():
        with pytest.raises(Conflict):
            _Probe().refused_by_the_row()
        assert connection.needs_rollback is False  # a refusal named from the row changed nothing
        with pytest.raises(DataError):
            _Probe().refused_by_the_database()
        assert connection.needs_rollback is True  # the caller's transaction is aborted, and knows it


@pytest.mark.django_db(transaction=True)
def test_a_joining_operation_needs_the_callers_transaction_and_an_opening_one_opens_its_own():
    with pytest.raises(RuntimeError, match="caller's transaction"):
        _Probe().joins()
    with transaction.atomic():
        assert _Probe().joins() is True
    assert _Probe().opens() is True
    assert _Probe.joins.guard == "joins" and _Probe.opens.guard == "opens"
    assert _Probe.joins.alters_data and _Probe.opens.alters_data


def test_every_state_machine_is_named_for_its_refusals():
    machines = [(model, trigger) for model in apps.get_models() for trigger in state_machines(model)]
    assert machines, "no state machine declared"
    for model, trigger in machines:
        assert isinstance(trigger, StateMachine)
        assert trigger.name.endswith("_transition")
        choices = {value for value, _label in model._meta.get_field(trigger.field).choices}
        states = set(trigger.initial) | {s for pair in trigger.transitions for s in pair}
        assert states <= choices, f"{model._meta.label}: states outside the field's choices: {states - choices}"


@pytest.mark.django_db
def test_every_state_machine_trigger_is_installed_in_the_database():
    with connection.cursor() as cursor:
        cursor.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
        installed = {row[0] for row in cursor.fetchall()}
    for model in apps.get_models():
        for trigger in getattr(model._meta, "triggers", []):
            assert trigger.get_pgid(model) in installed, f"{model._meta.label}: {trigger.name} not installed"


def test_the_state_machine_page_matches_the_triggers():
    from pathlib import Path

    from core.management.commands.state_machines import render

    page = Path(__file__).resolve().parents[2] / "docs" / "state-machines.md"
    assert page.read_text() == render(), "run: manage.py state_machines > docs/state-machines.md"


def test_every_guarded_operation_states_its_locks_and_the_lock_order_page_matches():
    from pathlib import Path

    from core.management.commands.lock_order import guarded_operations, locks_line, render

    silent = [label for label, function in guarded_operations() if not locks_line(function)]
    assert not silent, f"guarded operations without a 'Locks:' line in their docstring: {silent}"
    page = Path(__file__).resolve().parents[2] / "docs" / "lock-order.md"
    assert page.read_text() == render(), "run: manage.py lock_order > docs/lock-order.md"
