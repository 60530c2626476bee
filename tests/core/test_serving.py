"""make serve's gunicorn runs the worker model the benchmark measured (config/gunicorn.py), and the
benchmark serves with those settings (bench/http.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import http

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MAKE_SERVE = [str(Path(sys.executable).parent / "gunicorn"), "config.wsgi", "--config", "config/gunicorn.py"]


def effective_settings(command, tmp_path, **env):
    """The settings gunicorn would run ``command`` with (``--print-config``), by name."""
    printed = subprocess.run(
        [command[0], "--print-config", *command[1:]],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    pairs = (line.split(" = ", 1) for line in printed.splitlines() if " = " in line)
    return {name.strip(): value.strip() for name, value in pairs}


def test_make_serve_runs_gthread_workers_of_eight_threads_one_per_core(tmp_path):
    """A request waiting for a row lock holds a thread, not its whole process as a sync worker would."""
    settings = effective_settings(MAKE_SERVE, tmp_path, WORKERS="", THREADS="")

    assert settings["worker_class"] == "gthread"
    assert settings["workers"] == str(os.cpu_count())
    assert settings["threads"] == str(min(8, 64 // os.cpu_count()))
    assert settings["accesslog"] == "-"


@pytest.mark.parametrize(("workers", "threads"), [("2", "8"), ("8", "8"), ("16", "4"), ("32", "2"), ("128", "1")])
def test_many_workers_get_fewer_threads_each_so_their_connections_stay_within_64(tmp_path, workers, threads):
    """Each thread keeps a database connection: 16 cores x 8 threads would be 128, more than a server's usual 100."""
    settings = effective_settings(MAKE_SERVE, tmp_path, WORKERS=workers, THREADS="")

    assert (settings["workers"], settings["threads"]) == (workers, threads)


def test_workers_and_threads_are_the_operators_to_set(tmp_path):
    settings = effective_settings(MAKE_SERVE, tmp_path, WORKERS="3", THREADS="12")

    assert (settings["workers"], settings["threads"]) == ("3", "12")


def test_the_benchmark_serves_with_make_serves_settings_in_the_shape_it_measures(tmp_path):
    settings = effective_settings(http.server_command("gunicorn", 8123, workers=2, threads=8), tmp_path)

    assert settings["worker_class"] == "gthread"
    assert (settings["workers"], settings["threads"], settings["keepalive"]) == ("2", "8", "30")
    assert settings["accesslog"] == "-"  # production's access log is part of what a request costs


@pytest.mark.parametrize("cores", [2, 16])
def test_the_benchmark_serves_by_default_as_many_workers_and_threads_as_make_serve(tmp_path, cores):
    """One rule (config/workers.py): make bench measures the shape production runs, on any core count."""
    probe = f"import os; os.cpu_count = lambda: {cores}; from bench.__main__ import parse_args; a = parse_args([]); "
    probe += "print(a.workers, a.threads)"
    printed = subprocess.run(  # its own process: importing bench.__main__ sets the benchmark's environment
        [sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    settings = effective_settings(MAKE_SERVE, tmp_path, WORKERS=str(cores), THREADS="")

    assert printed.split() == [settings["workers"], settings["threads"]]
    assert printed.split() == [str(cores), "8" if cores == 2 else "4"]
