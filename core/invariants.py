"""Invariant audit: every counter and rule recomputed from the rows.

Each domain app lists its checks in ``<app>/invariants.py`` with ``@invariant``;
a check returns the offending rows as short strings (empty when all is well).
``manage.py check_invariants`` runs them all; so do the race and fault tests.
"""

from dataclasses import dataclass, field

_checks = []


def invariant(description):
    """Register a check: ``description`` says what must hold, in one line."""

    def register(function):
        _checks.append((function.__module__.split(".")[0], description, function))
        return function

    return register


@dataclass
class Result:
    app: str
    description: str
    violations: list = field(default_factory=list)

    @property
    def ok(self):
        return not self.violations


def run_checks(tenant=None):
    """Run every registered check (optionally for one tenant); return a list of Results."""
    from core.discovery import project_modules

    project_modules("invariants")  # importing each registers its checks
    return [Result(app, description, list(check(tenant))) for app, description, check in _checks]


def assert_invariants(tenant=None):
    """For tests: fail with every violation listed."""
    broken = [f"{r.app}: {r.description}: {r.violations[:5]}" for r in run_checks(tenant) if not r.ok]
    assert not broken, "\n".join(broken)
