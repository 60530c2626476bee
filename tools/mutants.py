"""``make mutants``: remove each guard, one at a time, and check that some test fails.

A guard that no test notices is not proven. Each mutant in ``tools/mutants.json``
names a file, an exact piece of code (a WHERE condition, a lock, a NOWAIT, a
re-check, a constraint or trigger in a migration, a timeout) and what it becomes
without the guard, plus the tests that should catch it. The runner copies the tree
once (the venv is linked, not copied), applies one mutant at a time, runs its tests
against a throwaway database and restores the file. The tree is HEAD's
(``git archive``): commit before running. A mutant that leaves every
test green is reported as SURVIVED, one whose tests only error (a broken migration,
fixture or import: no test got to check the guard) as ERROR, and the run exits 1.

    .venv/bin/python tools/mutants.py            # all
    .venv/bin/python tools/mutants.py -k refund  # names containing "refund"

Not part of ``make test`` (each mutant needs a fresh database: minutes in all).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = Path(__file__).with_name("mutants.json")


def copy_tree(target):
    """The committed tree (HEAD), so work in progress never decides a verdict; the venv is linked."""
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    (target / ".venv").symlink_to(ROOT / ".venv")


def run(mutant, tree, database):
    path = tree / mutant["file"]
    original = path.read_text()
    count = original.count(mutant["old"])
    if count != 1:
        return "STALE", f"the guarded code occurs {count} times in {mutant['file']} (expected once)"
    path.write_text(original.replace(mutant["old"], mutant["new"]))
    try:
        env = {**os.environ, "TEST_DATABASE_NAME": database, "PYTEST_ADDOPTS": "--create-db -x -q -p no:randomly"}
        started = time.monotonic()
        done = subprocess.run(
            [str(ROOT / ".venv/bin/pytest"), *mutant["tests"]],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        took = f"{time.monotonic() - started:.0f} s"
        if done.returncode == 0:
            return "SURVIVED", took
        failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
        if done.returncode == 1 and failed:
            return "KILLED", f"{took}: {failed[0]}"
        # An error is not a failed assertion: a mutant that breaks its migration, a fixture or an import
        # errors every test before any checks the guard, so the guard is not proven by it.
        errors = [line for line in done.stdout.splitlines() if line.startswith("ERROR")]
        said = errors[0] if errors else done.stdout[-400:] + done.stderr[-400:]
        return "ERROR", f"pytest exited {done.returncode}: {said}"
    finally:
        path.write_text(original)


DROP_TEST_DATABASE = """
import sys, django, psycopg, psycopg.sql
django.setup()
from django.db import connection
params = connection.get_connection_params()
params["dbname"] = "postgres"
with psycopg.connect(**params, autocommit=True) as conn:
    conn.execute("DROP DATABASE IF EXISTS " + psycopg.sql.Identifier(sys.argv[1]).as_string(conn) + " WITH (FORCE)")
"""


def drop_database(tree, database):
    """pytest-django keeps a test database under --reuse-db (the project's addopts): drop the one the mutants used."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    subprocess.run([str(ROOT / ".venv/bin/python"), "-c", DROP_TEST_DATABASE, database], cwd=tree, env=env, check=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", default="", help="only mutants whose name contains this")
    args = parser.parse_args()
    mutants = [m for m in json.loads(MUTANTS.read_text()) if args.k.lower() in m["name"].lower()]
    results = []
    database = f"test_lockstep_mutant_{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="lockstep-mutants-") as tmp:
        tree = Path(tmp) / "tree"
        copy_tree(tree)
        try:
            for number, mutant in enumerate(mutants, 1):
                verdict, detail = run(mutant, tree, database=database)
                results.append((mutant["name"], verdict))
                print(f"[{number}/{len(mutants)}] {verdict:8} {mutant['name']}  ({detail})", flush=True)
        finally:
            drop_database(tree, database)
    survived = [name for name, verdict in results if verdict != "KILLED"]
    print(f"\n{len(results) - len(survived)} of {len(results)} guards proven (a test failed without each).")
    for name in survived:
        print(f"  not proven: {name}")
    sys.exit(1 if survived else 0)


if __name__ == "__main__":
    main()
