"""gunicorn settings of ``make serve`` (``gunicorn config.wsgi -c config/gunicorn.py``).

Metrics: each worker is a process of its own, so prometheus_client keeps its values in
files under PROMETHEUS_MULTIPROC_DIR (default ``var/prometheus``) and ``/metrics``, answered
by any worker, sums every worker's files (core/metrics.py). The variable must be set before
prometheus_client is first imported, hence here, in the master, before any worker exists.

Access log: one line per request on stdout, ending with the request's ``X-Request-ID``
(the one the app answered: the client's or a new one) and its duration in microseconds.
"""

import os
import sys
from pathlib import Path

# gunicorn reads this file before it adds --chdir to sys.path: the project first, from wherever it runs
PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
from config.workers import default_threads, default_workers  # noqa: E402

_default_dir = PROJECT_ROOT / "var" / "prometheus"
PROMETHEUS_MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or str(_default_dir)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = PROMETHEUS_MULTIPROC_DIR
Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)

# gthread: a request waiting for a row lock (up to LOCK_TIMEOUT_MS) or for the database holds a
# thread, not its whole process as a sync worker would (two such waits would stall a 2-core server).
# WORKERS processes of THREADS threads, by default config/workers.py's (one rule with the benchmark's).
worker_class = "gthread"
workers = int(os.environ.get("WORKERS") or default_workers())
threads = int(os.environ.get("THREADS") or default_threads(workers))

accesslog = "-"
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(D)sus request_id=%({x-request-id}o)s'


def on_starting(server):
    """Start from zero: remove the metric files of a previous run (not on a HUP reload, whose workers live on)."""
    for stale in Path(PROMETHEUS_MULTIPROC_DIR).glob("*.db"):
        stale.unlink(missing_ok=True)


def child_exit(server, worker):
    """A worker exited: drop its live gauges (its counters and histograms stay in the sums)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
