"""Timing core: targets, client threads, percentiles, one result row per measurement.

Every measurement ("cell") is: one operation, one variant, one case, N clients.
Attempt k (a shared counter, so the clients stay in step) aims at target
``k // clients`` in the HOT case (about ``clients`` contenders per target, all
at once) and at target ``k`` in the SPREAD case (no two attempts share a
target). A cell ends after ``duration`` seconds or when the targets run out.
"""

import itertools
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from django.db import connections

from core.exceptions import DomainError

HOT, SPREAD = "hot", "spread"
WON = "ok"


def target_of(k, *, case, clients):
    return k // clients if case == HOT else k


def percentile(sorted_values, q):
    """Nearest-rank percentile of an already sorted list (0 < q <= 100)."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


@dataclass
class Cell:
    operation: str
    variant: str
    case: str
    clients: int
    attempts: int = 0
    wins: int = 0
    seconds: float = 0.0
    tps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    refusals: dict = field(default_factory=dict)
    anomalies: int = 0
    retries: int = 0
    errors: dict = field(default_factory=dict)
    # CPU per attempt: the benchmark process and its reaped children (the Python
    # clients running Lockstep in-process, pgbench, the HTTP load generator),
    # the gunicorn workers, and PostgreSQL.
    client_cpu_ms: float | None = None
    server_cpu_ms: float | None = None
    db_cpu_ms: float | None = None
    note: str = ""

    def finish(self, latencies_s, codes, span_s):
        """Fill attempts, TPS and percentiles from per-attempt latencies and outcome codes."""
        latencies = sorted(latencies_s)
        self.attempts = len(latencies)
        self.seconds = round(span_s, 3)
        self.tps = round(self.attempts / span_s, 1) if span_s > 0 else 0.0
        self.p50_ms = _ms(percentile(latencies, 50))
        self.p99_ms = _ms(percentile(latencies, 99))
        self.wins = codes.pop(WON, 0)
        self.errors = {code[6:]: n for code, n in codes.items() if code.startswith("error:")}
        self.refusals = {code: n for code, n in codes.items() if not code.startswith("error:")}
        return self

    def charge(self, used):
        """Record CPU seconds used ({"client", "server", "db"}) per attempt."""
        for side, seconds in used.items():
            value = None if seconds is None or not self.attempts else round(seconds * 1000 / self.attempts, 3)
            setattr(self, f"{side}_cpu_ms", value)

    def as_dict(self):
        return asdict(self)


def _ms(seconds):
    return None if seconds is None else round(seconds * 1000, 2)


def outcome(attempt, *args):
    """Run one attempt; return (code, retries): ``ok``, a domain refusal code, or ``error:<Type>``."""
    try:
        result = attempt(*args)
    except DomainError as exc:
        return exc.code, 0
    except Exception as exc:  # noqa: BLE001 - a benchmark reports failures, it does not stop on them
        return f"error:{type(exc).__name__}", 0
    if isinstance(result, tuple):
        return result
    return (result or WON), 0


def run_threads(attempt, *, clients, case, duration, targets):
    """Run ``attempt(t, k)`` from ``clients`` threads, each on its own connection.

    Returns (latencies in seconds, Counter of codes, retries, span in seconds).
    """
    counter = itertools.count()
    barrier = threading.Barrier(clients + 1)
    results = []
    lock = threading.Lock()

    def client():
        latencies, codes, retries = [], Counter(), 0
        first = last = None
        try:
            connections["default"].ensure_connection()
            barrier.wait()
            deadline = time.perf_counter() + duration
            while True:
                k = next(counter)
                t = target_of(k, case=case, clients=clients)
                start = time.perf_counter()
                if t >= targets or start >= deadline:
                    break
                code, tries = outcome(attempt, t, k)
                end = time.perf_counter()
                first = start if first is None else first
                last = end
                latencies.append(end - start)
                codes[code] += 1
                retries += tries
        finally:
            connections.close_all()
            with lock:
                results.append((latencies, codes, retries, first, last))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    for thread in threads:
        thread.join()
    latencies, codes, retries = [], Counter(), 0
    for lat, cod, ret, _first, _last in results:
        latencies += lat
        codes += cod
        retries += ret
    starts = [r[3] for r in results if r[3] is not None]
    ends = [r[4] for r in results if r[4] is not None]
    span = (max(ends) - min(starts)) if starts else 0.0
    return latencies, codes, retries, span
