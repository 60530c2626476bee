"""Race scenarios: one per guarded operation, for ``manage.py race_demo``, the race tests and ``bench/``.

Each domain app registers its scenario in ``<app>/race_scenarios.py`` with
``@scenario``. A scenario addresses its rows as targets ``t`` (0, 1, ...) of one
tenant; attempt ``k`` acts for customer ``c<k>``. It offers two attempts:
``guarded(t, k)`` (the product's real operation) and ``naive(t, k)`` (the
check-then-act it replaces, kept only to show what breaks without the guard).
race_demo creates one target (``prepare``) and fires ``attempts`` at it; the
benchmark clones thousands of targets; a control test fires a storm at one.
"""

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import pgtrigger
from django.core.management import call_command
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.test.utils import override_settings

from core.discovery import project_modules
from core.invariants import run_checks
from core.storm import run_concurrently, tally

_scenarios = []


# How long race_demo's naive attempts wait between their check and their act, the way a slow request would.
NAIVE_WINDOW = 0.02


class Scenario:
    """One guarded operation, storm-ready: its rows, its guarded call, the naive check-then-act it replaces."""

    name = ""
    attempts = 0  # race_demo: attempts at its one target
    expected_winners = 1  # race_demo: winners its one target allows
    # The database's own backstops (trigger names) that would refuse the naive double execution:
    # switched off for the naive run, so it shows what the check-then-act alone does.
    backstops = ()

    def __init__(self, tenant, *, actor=None, first_id=None, window=0.0):
        self.tenant = tenant
        self.actor = actor
        self.first_id = first_id  # id of target 0, for targets addressed by id (target t is first_id + t)
        self.window = window  # seconds the naive attempt waits between its check and its act

    def prepare(self):
        """Create race_demo's one target (t = 0)."""
        raise NotImplementedError

    def guarded(self, t, k):
        raise NotImplementedError

    def check_then_act(self, t, k):
        """The naive body: read, check in Python (raising the refusal), write; return what ``after_commit`` needs.

        Run inside the caller's transaction: ``naive`` (READ COMMITTED) or the benchmark's SERIALIZABLE variant.
        """
        raise NotImplementedError

    def after_commit(self, payload):
        """Work the real operation does after its transaction commits (the payment provider call)."""

    def naive(self, t, k, *, keep=()):
        """The check-then-act in one transaction, with the backstops switched off but those in ``keep``."""
        switched_off = [backstop for backstop in self.backstops if backstop not in keep]
        # (pgtrigger.ignore() with no name would switch off every trigger)
        with pgtrigger.ignore(*switched_off) if switched_off else nullcontext(), transaction.atomic():
            payload = self.check_then_act(t, k)
        self.after_commit(payload)
        return payload

    def pause(self):
        """Widen the naive check-then-act window (``window`` seconds)."""
        if self.window:
            time.sleep(self.window)


def customer(k):
    """The customer attempt ``k`` acts for."""
    return f"c{k}"


def scenario(cls):
    """Register a Scenario subclass."""
    _scenarios.append(cls)
    return cls


def scenarios():
    project_modules("race_scenarios")  # importing each registers its scenarios
    return list(_scenarios)


def leftover_throwaway_databases():
    """Throwaway databases of runs that never dropped theirs (killed mid-storm), or of runs going on now."""
    original = connections.settings[DEFAULT_DB_ALIAS]["NAME"]
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY datname",
            [original.replace("_", r"\_") + r"\_race\_%"],
        )
        return [name for (name,) in cursor.fetchall()]


@contextmanager
def sandbox_payments():
    """The storms pay through the sandbox, whatever this server pays through: each winning hold calls the
    provider, and against Stripe would open a real checkout session, its idempotency key
    (``lockstep-checkout-<id>``) reusing the id of one of production's (the throwaway database counts from 1)."""
    with override_settings(PAYMENT_PROVIDER="sandbox"):
        yield


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
    """Prepare the scenario's one target, fire the storm at it, check invariants on the tenant."""
    storm = scenario_class(tenant, window=NAIVE_WINDOW)
    storm.prepare()
    attempt = storm.naive if naive else storm.guarded
    outcomes = run_concurrently(lambda k: attempt(0, k), storm.attempts)
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
