"""The embedded PostgreSQL: two processes starting it at once share one server; failures explain themselves."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.embedded_db import EmbeddedDatabaseError, embedded_database, stop_embedded_database

ROOT = Path(__file__).resolve().parents[2]

START = """
import json, sys
from pathlib import Path
from config.embedded_db import embedded_database
import psycopg
db = embedded_database(Path(sys.argv[1]))
with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"]) as conn:
    pid = conn.execute("SELECT pg_postmaster_start_time()::text").fetchone()[0]
print(json.dumps({"host": db["HOST"], "started": pid}))
"""


def test_two_processes_starting_at_once_share_one_server(tmp_path):
    var = tmp_path / "var"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", START, str(var)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    try:
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
        assert results[0] == results[1]  # same socket, same postmaster start time: one server
        assert (var / "pgdata" / "PG_VERSION").exists()
    finally:
        stopped = subprocess.run(
            [sys.executable, "-m", "config.embedded_db", "stop"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "LOCKSTEP_VAR_DIR": str(var)},
            timeout=60,
        )
    # make clean stops it (SIGINT: a fast shutdown), and says so; a second stop finds nothing to stop
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    assert not (var / "pgdata" / "postmaster.pid").exists()
    assert stop_embedded_database(var) is False


def test_failure_to_start_says_how_to_use_database_url(tmp_path, capsys):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(EmbeddedDatabaseError) as failed:
        embedded_database(blocker / "var")
    assert "DATABASE_URL" in str(failed.value)
    assert "DATABASE_URL" in capsys.readouterr().err
