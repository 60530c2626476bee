"""Lockstep over HTTP: gunicorn (gthread, several workers) and a small Python load generator.

``--server`` serves it with uWSGI or Granian instead, to compare: see ``SERVERS``.

The load generator is ``multiprocessing`` x threads, each thread holding one
keep-alive ``http.client`` connection and timing every request. It needs nothing
beyond the standard library, so ``make bench`` runs on a fresh machine (wrk, hey
or locust are not installed there), and it picks targets from the same shared
counter as the other variants, so HOT and SPREAD mean the same thing everywhere.
"""

import http.client
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from urllib.parse import quote

from bench.runner import WON, target_of

CTX = multiprocessing.get_context("fork")


def database_url(db):
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    host = quote(db["HOST"] or "localhost", safe="")
    return f"postgres://{quote(db['USER'] or 'postgres', safe='')}{password}@{host}:{db['PORT'] or 5432}/{db['NAME']}"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# What serves config.wsgi over HTTP (--server). gunicorn is what production runs (``make serve``); the
# others are there to compare with, to read how much of a request's server CPU is the server's own
# loop rather than the app's: a C or Rust loop against gunicorn's Python one. They are not in the
# requirements; install the version measured to run them.
SERVERS = {
    "gunicorn": None,
    "uwsgi": "pyuwsgi==2.0.30.post1",
    "granian": "granian==2.8.9",
}


# make serve's settings: gunicorn is measured as production runs it (worker model, access log, metrics)
GUNICORN_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "gunicorn.py")


def server_command(kind, port, *, workers, threads):
    """The command serving config.wsgi on 127.0.0.1:``port``: ``workers`` processes of ``threads`` threads,
    keep-alive on; gunicorn with make serve's settings (its access log too), the others without a log."""
    executable = os.path.join(os.path.dirname(sys.executable), kind)
    if not os.path.exists(executable):
        raise SystemExit(f"--server {kind}: {executable} not found (pip install {SERVERS[kind]})")
    if kind == "uwsgi":
        return [
            *(executable, "--http11-socket", f"127.0.0.1:{port}", "--http-keepalive"),
            *("--module", "config.wsgi:application", "--need-app", "--master", "--die-on-term"),
            *("--processes", str(workers), "--threads", str(threads), "--enable-threads", "--lazy-apps"),
            "--disable-logging",
        ]
    if kind == "granian":
        return [
            *(executable, "--interface", "wsgi", "config.wsgi:application", "--host", "127.0.0.1"),
            *("--port", str(port), "--workers", str(workers), "--blocking-threads", str(threads)),
            *("--runtime-threads", "1", "--log-level", "warning"),
        ]
    return [
        *(executable, "config.wsgi", "--config", GUNICORN_CONFIG, "--bind", f"127.0.0.1:{port}"),
        *("--workers", str(workers), "--threads", str(threads), "--keep-alive", "30", "--log-level", "warning"),
    ]


class Server:
    """gunicorn (or ``kind``, to compare with) serving config.wsgi against the benchmark database."""

    def __init__(self, db, *, workers, threads, log, pool=False, kind="gunicorn"):
        self.port = free_port()
        command = server_command(kind, self.port, workers=workers, threads=threads)
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop(); the access log of this run only
        env = {**os.environ, "DATABASE_URL": database_url(db), "DEBUG": "false", "LOG_LEVEL": "ERROR"}
        # production's multi-process metrics (config/gunicorn.py), in files of the benchmark's own: a server
        # started on this checkout (var/prometheus) would have its files removed when this one starts
        env["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(os.path.dirname(os.path.abspath(log)), "prometheus")
        if pool:
            env.update(DJANGO_SETTINGS_MODULE="bench.pool_settings", BENCH_POOL_SIZE=str(threads))
        self.process = subprocess.Popen(
            command, env=env, start_new_session=True, stdout=self.log, stderr=subprocess.STDOUT
        )
        self._wait_ready()

    def _wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("the HTTP server exited during start-up")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/api/public/none/packages")
                conn.getresponse().read()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the HTTP server did not answer")

    def warm_up(self, path, token, *, requests=64, threads=8):
        """Send a few authenticated GETs so every worker has imported the app and opened its connection."""

        def client():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            for _ in range(requests // threads):
                conn.request("GET", path, headers={"Authorization": f"Token {token}"})
                conn.getresponse().read()
            conn.close()

        pool = [threading.Thread(target=client) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def generator_processes():
    """Load-generator processes: a quarter of the cores (at least 2), so the server keeps the rest."""
    return max(2, (os.cpu_count() or 1) // 4)


# Connections kept free of the HTTP server's: the benchmark's own, reopened between cells, and a spare.
CONNECTION_HEADROOM = 4


def free_connections():
    """Connections the database may still open for the HTTP server: ``max_connections`` less those
    reserved for superusers, those open now and ``CONNECTION_HEADROOM``."""
    from django.db import connection  # the load generator's processes need none of Django

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int"
            " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
        )
        return cursor.fetchone()[0] - CONNECTION_HEADROOM


def fit_to_connections(workers, threads, free):
    """Server processes and threads per process whose connections (one per thread) fit in ``free``:
    fewer threads per process first, then fewer processes. On many cores one worker per core x 8
    threads asks more than a server's usual 100 connections (16 cores: 128)."""
    if workers * threads <= free:
        return workers, threads
    threads = max(1, min(threads, free // workers))
    return max(1, min(workers, free // threads)), threads


def _code(status, body):
    if 200 <= status < 300:
        return WON
    try:
        return json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return f"error:http_{status}"


def _process(operation, port, token, counter, barrier, queue, threads, *, clients, case, duration, targets):
    results = []

    def client():
        latencies, codes, first, last = [], Counter(), None, None
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        barrier.wait()
        deadline = time.perf_counter() + duration
        while True:
            with counter.get_lock():
                k = counter.value
                counter.value += 1
            t = target_of(k, case=case, clients=clients)
            start = time.perf_counter()
            if t >= targets or start >= deadline:
                break
            path, body, auth = operation.http(t, k)
            headers = {"Content-Type": "application/json"} if body is not None else {}
            if auth:
                headers["Authorization"] = f"Token {token}"
            try:
                if body is None:  # the framework floor: an authenticated GET
                    conn.request("GET", path, headers=headers)
                else:
                    conn.request("POST", path, body=json.dumps(body), headers=headers)
                response = conn.getresponse()
                code = _code(response.status, response.read())
            except (OSError, http.client.HTTPException) as exc:
                code = f"error:{type(exc).__name__}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            end = time.perf_counter()
            first = start if first is None else first
            last = end
            latencies.append(end - start)
            codes[code] += 1
        conn.close()
        results.append((latencies, codes, first, last))

    pool = [threading.Thread(target=client) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    queue.put(results)


def run(operation, server, token, *, clients, case, duration, targets):
    """Drive ``clients`` concurrent keep-alive clients; return (latencies, codes, span)."""
    processes = min(clients, generator_processes())
    counter = CTX.Value("q", 0)
    barrier = CTX.Barrier(clients)
    queue = CTX.Queue()
    shares = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    workers = [
        CTX.Process(
            target=_process,
            args=(operation, server.port, token, counter, barrier, queue, share),
            kwargs=dict(clients=clients, case=case, duration=duration, targets=targets),
        )
        for share in shares
    ]
    for worker in workers:
        worker.start()
    gathered = []
    for _ in workers:
        gathered += queue.get(timeout=duration + 300)
    for worker in workers:
        worker.join()
    latencies, codes = [], Counter()
    for lat, cod, _first, _last in gathered:
        latencies += lat
        codes += cod
    starts = [g[2] for g in gathered if g[2] is not None]
    ends = [g[3] for g in gathered if g[3] is not None]
    return latencies, codes, (max(ends) - min(starts)) if starts else 0.0
