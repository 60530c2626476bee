"""Fire N attempts at once, each on its own database connection.

Used by the race tests, by ``manage.py race_demo`` and by the benchmarks. Threads
open their connection first, then line up on a ``threading.Barrier`` so the
attempts reach PostgreSQL together; each closes its connection when done.
"""

import threading
from collections import Counter
from dataclasses import dataclass

from django.db import connections

from core.exceptions import DomainError


@dataclass
class Outcome:
    value: object = None
    error: BaseException | None = None

    @property
    def ok(self):
        return self.error is None

    @property
    def code(self):
        """'ok', the domain error code, or the exception class name for anything else."""
        if self.error is None:
            return "ok"
        if isinstance(self.error, DomainError):
            return self.error.code
        return type(self.error).__name__


def run_concurrently(attempt, n, *, timeout=60):
    """Call ``attempt(i)`` for i in range(n) at once; return the n Outcomes in order."""
    barrier = threading.Barrier(n)
    outcomes = [None] * n

    def worker(i):
        try:
            connections["default"].ensure_connection()
            barrier.wait(timeout=timeout)
            outcomes[i] = Outcome(value=attempt(i))
        except BaseException as exc:  # noqa: BLE001 - the caller inspects every failure
            outcomes[i] = Outcome(error=exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    if any(thread.is_alive() for thread in threads):
        raise TimeoutError("a racing attempt hung")
    return outcomes


def tally(outcomes):
    """Counter of outcome codes: {'ok': 1, 'proposal_already_processed': 49}."""
    return Counter(outcome.code for outcome in outcomes)
