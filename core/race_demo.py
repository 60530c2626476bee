"""Race scenarios for ``manage.py race_demo``: a storm at each guarded operation.

Each domain app registers its scenario in ``<app>/race_scenarios.py`` with
``@scenario``. A scenario prepares its rows in a throwaway tenant, then offers
two attempts: ``guarded`` (the product's real operation) and ``naive`` (the
check-then-act it replaces, kept only to show what breaks without the guard).
"""

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.core.management import call_command
from django.db import DEFAULT_DB_ALIAS, connections

from core.discovery import project_modules
from core.invariants import run_checks
from core.storm import run_concurrently, tally

_scenarios = []


def scenario(cls):
    """Register a scenario class (attributes: name, attempts, expected_winners)."""
    _scenarios.append(cls)
    return cls


def scenarios():
    project_modules("race_scenarios")  # importing each registers its scenarios
    return list(_scenarios)


@contextmanager
def throwaway_database(run):
    """A fresh, migrated database that every connection of this process uses meanwhile; dropped after.

    The storms leave rows the state machines and audit rules keep for good (a used session, an
    undone audit entry): in the operator's own database they would stay forever. The connection
    settings are shared by every thread's connection, so the storm's threads follow.
    """
    settings_dict = connections.settings[DEFAULT_DB_ALIAS]
    original = settings_dict["NAME"]
    name = f"{original}_race_{run}"[:63]
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    connections.close_all()
    settings_dict["NAME"] = name
    try:
        call_command("migrate", verbosity=0, interactive=False)
        yield name
    finally:
        connections.close_all()
        settings_dict["NAME"] = original
        with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
            # FORCE: a pooler may still hold idle server connections to it
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def naive_pause():
    """Widen the naive check-then-act window the way a slow request would."""
    time.sleep(0.02)


@dataclass
class StormResult:
    name: str
    attempts: int
    expected_winners: int
    winners: int
    refusals: dict = field(default_factory=dict)
    invariants_held: bool = True
    broken: list = field(default_factory=list)

    @property
    def exact(self):
        return self.winners == self.expected_winners and self.invariants_held


def run_storm(scenario_class, tenant, *, naive=False):
    """Prepare the scenario's rows, fire the storm, check invariants on the tenant."""
    storm = scenario_class(tenant)
    attempt = storm.naive if naive else storm.guarded
    outcomes = run_concurrently(attempt, storm.attempts)
    codes = tally(outcomes)
    winners = codes.pop("ok", 0)
    broken = [f"{r.app}: {r.description}" for r in run_checks(tenant) if not r.ok]
    return StormResult(
        name=storm.name,
        attempts=storm.attempts,
        expected_winners=storm.expected_winners,
        winners=winners,
        refusals=dict(codes),
        invariants_held=not broken,
        broken=broken,
    )
