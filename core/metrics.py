"""Prometheus metrics: what they are, and the ``/metrics`` view that exposes them.

Plain ``prometheus_client``. Under gunicorn every worker is its own process, so the
values live in files under ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's
multiprocess mode, chosen by that variable when prometheus_client is first imported;
``config/gunicorn.py`` sets it) and ``/metrics`` sums the files of every worker, so
any worker answers the scrape with the totals of all of them. Without the variable
(``runserver``, tests, one process) the values are in memory.

Labels are bounded: a route is the URL *pattern* (``/api/t/<slug:tenant>/promo-codes/redeem``),
never the path; a code is one of the error catalog's codes. No tenant, user or id is a label.
Recording costs a few in-memory (or mmap) writes per request and no database statement; a
scrape costs one statement per gauge read at that moment (``AT_SCRAPE``: the worker's jobs, the
refunds under way, the e-mails left sending).
"""

import hmac
import os

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    Metric,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if MULTIPROC_DIR:
    # A process started by hand (a cron command) with the variable set but before the server
    # created the directory would fail on its first metric; its counts belong in the same files.
    os.makedirs(MULTIPROC_DIR, exist_ok=True)

disable_created_metrics()  # no *_created series: multiprocess mode has none, so one process looks like many

# Up to the statement timeout (15 s); 2.5 s sits just past the default lock timeout (2 s).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0)
LOCK_CODES = frozenset({"resource_locked", "operation_locked", "parent_locked"})

REQUEST_DURATION = Histogram(
    "lockstep_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, URL pattern and status.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
REFUSALS = Counter(
    "lockstep_refusals",
    "4xx answers, by the error envelope's code and the status (replayed answers are not counted again).",
    ["code", "status"],
)
LOCK_CONFLICTS = Counter(
    "lockstep_lock_conflicts",
    "Requests refused because a lock was held (409 with Retry-After), by code.",
    ["code"],
)
for _code in sorted(LOCK_CODES):
    LOCK_CONFLICTS.labels(_code)  # present at 0 from the start, so rate() and alerts see a series
IDEMPOTENCY_REPLAYS = Counter(
    "lockstep_idempotency_replays",
    "Answers replayed for a repeated Idempotency-Key (Idempotent-Replayed: true).",
)
REFUNDS_FAILED = Counter(
    "lockstep_refunds_failed",
    "Refunds given up on after REFUND_MAX_ATTEMPTS failed attempts (left exhausted for an operator).",
)


def registry():
    """The registry to expose: every worker's files in multiprocess mode, else this process's metrics."""
    if not MULTIPROC_DIR:
        return REGISTRY
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged, path=MULTIPROC_DIR)
    return merged


def _authorized(request):
    token = settings.METRICS_TOKEN
    if not token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


class CountsAtScrape:
    """A gauge of rows counted at scrape time by one grouped statement (``sql``: the label values, then the count).

    Read from the database, so every process answers the same, whichever process (a web worker, the
    job worker, a cron command) changed the rows; ``always`` label values are shown at 0 when none
    is counted. Nothing when the database does not answer (the scrape still succeeds).
    """

    def __init__(self, name, documentation, labels, sql, *, always=()):
        self.name, self.documentation, self.labels, self.sql, self.always = name, documentation, labels, sql, always

    def collect(self):
        gauge = Metric(self.name, self.documentation, "gauge")
        try:
            with connection.cursor() as cursor:
                cursor.execute(self.sql)
                counts = {tuple(row[:-1]): row[-1] for row in cursor.fetchall()}
        except DatabaseError:
            return
        for values in self.always:
            counts.setdefault(values, 0)
        for values, count in sorted(counts.items()):
            gauge.add_sample(self.name, dict(zip(self.labels, values, strict=True)), count)
        yield gauge


# The gauges read at scrape time, one statement each; an app adds its own (read_at_scrape) in its ready().
AT_SCRAPE = [
    CountsAtScrape(
        "lockstep_jobs",
        "Worker jobs by queue and status (procrastinate_jobs, now).",
        ("queue", "status"),
        "SELECT queue_name, status::text, count(*) FROM procrastinate_jobs GROUP BY 1, 2",
    ),
]


def read_at_scrape(collector):
    AT_SCRAPE.append(collector)


def counted_at_scrape():
    registry = CollectorRegistry()
    for collector in AT_SCRAPE:
        registry.register(collector)
    return registry


@require_GET
def metrics(request):
    """``GET /metrics``: the Prometheus text format; ``Authorization: Bearer <METRICS_TOKEN>`` when one is set."""
    if not _authorized(request):
        response = HttpResponse("metrics token required\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    scraped = generate_latest(registry()) + generate_latest(counted_at_scrape())
    return HttpResponse(scraped, content_type=CONTENT_TYPE_LATEST)
