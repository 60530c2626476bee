"""How many gunicorn processes and threads serve Lockstep by default: ``make serve``'s
(config/gunicorn.py) and the benchmark's (bench/http.py), one rule for both.

The worker model the benchmark measured and chose (docs/performance.md, "gunicorn threads per
worker"): gthread, one process per core of up to 8 threads. Each thread keeps its own database
connection, so the threads stay within ``CONNECTION_BUDGET`` in all (16 cores: 4 threads each),
which leaves a server's usual 100 connections room for the job worker, the shell and the pooler's own.
Importing this sets nothing (config/gunicorn.py, by contrast, sets the metrics directory).
"""

import os

CONNECTION_BUDGET = 64
MAX_THREADS = 8


def default_workers():
    """One per core. Measured on 2 cores (gthread, 8 threads each), the framework floor costs 2.4-2.8 ms
    of server CPU per request with 2 workers, 2.4-3.8 with 4 and 3.4-4.5 with 8: more processes than
    cores only add switching."""
    return os.cpu_count() or 1


def default_threads(workers):
    """Up to ``MAX_THREADS``, fewer where ``workers`` of them would pass ``CONNECTION_BUDGET`` connections."""
    return max(1, min(MAX_THREADS, CONNECTION_BUDGET // workers))
