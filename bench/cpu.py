"""CPU seconds spent by each side of a measurement: the client, the app server, PostgreSQL.

Read with psutil (already a dependency). A process tree's total counts its live
processes plus the children it has already reaped, so backends and workers
that exit during a measurement are still counted. The database figure needs the
server on this machine; on a remote server it is left out.
"""

import resource
import time

import psutil
from django.db import connection, connections


def _tree(pid):
    try:
        root = psutil.Process(pid)
        times = root.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in root.children(recursive=True):
            try:
                t = child.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return None


def postmaster_pid():
    """The PostgreSQL postmaster's pid when the server runs on this machine, else None."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    host = connection.settings_dict.get("HOST") or ""
    if host and not host.startswith("/") and host not in ("localhost", "127.0.0.1", "::1"):
        return None
    try:
        return psutil.Process(backend).ppid()
    except psutil.Error:
        return None


def close_connections():
    """Close this process's connections and wait until the postmaster has reaped their backends.

    A backend that exits before a measurement starts but is reaped after it would be charged to
    the measurement: its whole life's CPU (the set-up's 10,000 cloned rows and ``ANALYZE``, some
    1.5 s) moves into the postmaster's reaped children while the meter runs. A measurement's
    start must not see it still pending."""
    backends = [c.connection.info.backend_pid for c in connections.all() if c.connection is not None]
    connections.close_all()
    deadline = time.monotonic() + 5
    # A zombie's pid still exists: it is gone once the postmaster has reaped it.
    while time.monotonic() < deadline and any(psutil.pid_exists(pid) for pid in backends):
        time.sleep(0.01)


class Meter:
    """CPU seconds of this process (and reaped children such as pgbench), of a server tree, of PostgreSQL."""

    def __init__(self, *, db_pid=None, server_pid=None):
        self.db_pid, self.server_pid = db_pid, server_pid

    def _read(self):
        me = time.process_time()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {
            "client": me + children.ru_utime + children.ru_stime,
            "server": _tree(self.server_pid) if self.server_pid else None,
            "db": _tree(self.db_pid) if self.db_pid else None,
        }

    def __enter__(self):
        self.start = self._read()
        return self

    def __exit__(self, *exc):
        time.sleep(0.3)  # let the postmaster reap the backends that just closed, or their CPU is lost
        end = self._read()
        self.used = {
            key: (end[key] - self.start[key]) if end[key] is not None and self.start[key] is not None else None
            for key in end
        }
