"""``python -m bench --server``: the command each server is started with, and a clear stop where it is not installed."""

import os

import pytest
from django.db import connection

from bench import http


def test_gunicorn_is_served_as_production_runs_it_with_keep_alive():
    command = http.server_command("gunicorn", 8123, workers=2, threads=8)

    assert os.path.basename(command[0]) == "gunicorn"
    assert command[1] == "config.wsgi"
    assert command[command.index("--config") + 1] == http.GUNICORN_CONFIG  # make serve's (tests/core/test_serving.py)
    assert command[command.index("--workers") + 1] == "2"
    assert command[command.index("--threads") + 1] == "8"
    assert "--keep-alive" in command
    assert "127.0.0.1:8123" in command


@pytest.mark.parametrize("kind", ["uwsgi", "granian"])
def test_a_server_to_compare_with_that_is_not_installed_stops_the_run_saying_what_to_install(kind, monkeypatch):
    monkeypatch.setattr(http.os.path, "exists", lambda path: False)

    with pytest.raises(SystemExit) as stopped:
        http.server_command(kind, 8123, workers=2, threads=8)

    assert f"pip install {http.SERVERS[kind]}" in str(stopped.value)
    assert "==" in http.SERVERS[kind]  # the version measured, pinned


@pytest.mark.parametrize(
    ("kind", "processes", "threads"),
    [("uwsgi", "--processes", "--threads"), ("granian", "--workers", "--blocking-threads")],
)
def test_a_server_to_compare_with_gets_the_same_processes_threads_and_app(kind, processes, threads, monkeypatch):
    monkeypatch.setattr(http.os.path, "exists", lambda path: True)

    command = http.server_command(kind, 8123, workers=3, threads=5)

    assert os.path.basename(command[0]) == kind
    assert "config.wsgi:application" in command
    assert command[command.index(processes) + 1] == "3"
    assert command[command.index(threads) + 1] == "5"
    assert "8123" in " ".join(command)


@pytest.mark.parametrize(
    ("asked", "free", "fitted"),
    [
        ((2, 8), 95, (2, 8)),  # this machine: 16 connections
        ((16, 8), 95, (16, 5)),  # 16 cores: 128 would not fit in a server of 100
        ((16, 8), 10, (10, 1)),  # fewer free than processes: one thread each, fewer processes
        ((4, 4), 16, (4, 4)),  # exactly fits
    ],
)
def test_the_http_server_asks_no_more_connections_than_the_database_has_free(asked, free, fitted):
    workers, threads = http.fit_to_connections(*asked, free)

    assert (workers, threads) == fitted
    assert workers * threads <= free


@pytest.mark.django_db
def test_free_connections_are_the_servers_limit_less_those_open_reserved_and_kept_spare():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int"
        )
        most, reserved = cursor.fetchone()
    free = http.free_connections()

    assert 0 < free <= most - reserved - 1 - http.CONNECTION_HEADROOM  # this test's own connection is open
