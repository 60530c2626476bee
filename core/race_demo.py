"""Race scenarios for ``manage.py race_demo``: a storm at each guarded operation.

Each domain app registers its scenario in ``<app>/race_scenarios.py`` with
``@scenario``. A scenario prepares its rows in a throwaway tenant, then offers
two attempts: ``guarded`` (the product's real operation) and ``naive`` (the
check-then-act it replaces, kept only to show what breaks without the guard).
"""

import time
from dataclasses import dataclass, field

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
