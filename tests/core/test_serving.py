"""make serve's gunicorn runs the worker model the benchmark measured (config/gunicorn.py), and the
benchmark serves with those settings (bench/http.py)."""

import os
import subprocess
import sys
from pathlib import Path

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


def test_make_serve_runs_gthread_workers_of_eight_threads(tmp_path):
    """A request waiting for a row lock holds a thread, not its whole process as a sync worker would."""
    settings = effective_settings(MAKE_SERVE, tmp_path)

    assert settings["worker_class"] == "gthread"
    assert settings["threads"] == "8"
    assert settings["accesslog"] == "-"


def test_threads_per_worker_come_from_the_environment(tmp_path):
    assert effective_settings(MAKE_SERVE, tmp_path, THREADS="3")["threads"] == "3"


def test_the_benchmark_serves_with_make_serves_settings_in_the_shape_it_measures(tmp_path):
    settings = effective_settings(http.server_command("gunicorn", 8123, workers=2, threads=8), tmp_path)

    assert settings["worker_class"] == "gthread"
    assert (settings["workers"], settings["threads"], settings["keepalive"]) == ("2", "8", "30")
    assert settings["accesslog"] == "-"  # production's access log is part of what a request costs
