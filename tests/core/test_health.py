"""/health answers without the database; /ready checks the database, migrations, effective timeouts, worker."""

import pytest
from django.db import connection

from core.health import readiness


def test_health_is_alive_without_touching_the_database(client):
    response = client.get("/health")  # no db fixture: any query would raise
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.fixture
def worker_alive(db):
    """A worker's heartbeat row, as procrastinate's worker writes it (tests/core/test_worker.py runs real ones)."""
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO procrastinate_workers (last_heartbeat) VALUES (clock_timestamp())")


def test_ready_when_migrated_and_the_timeouts_in_effect_are_the_configured_ones(client, worker_alive, settings):
    response = client.get("/ready")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["lock_timeout"] == {
        "ok": True,
        "effective_ms": settings.LOCK_TIMEOUT_MS,
        "configured_ms": settings.LOCK_TIMEOUT_MS,
    }
    assert body["checks"]["migrations"] == {"ok": True, "pending": 0}
    assert body["checks"]["worker"]["ok"] is True


def test_not_ready_when_a_timeout_is_missing_on_the_connection(client, worker_alive):
    # What a pooler that drops startup options leaves behind: no lock timeout at all.
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL lock_timeout = 0")  # the test's transaction ends it
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["status"] == "not_ready"
    assert response.json()["checks"]["lock_timeout"]["ok"] is False
    assert response.json()["checks"]["lock_timeout"]["effective_ms"] == 0


def test_not_ready_when_the_configuration_differs_from_the_connection(db, settings):
    assert readiness()["statement_timeout"]["ok"] is True  # the connection (behind a pooler: the test's transaction)
    settings.STATEMENT_TIMEOUT_MS += 1  # ...took its timeouts before this change
    checks = readiness()
    assert checks["statement_timeout"]["ok"] is False
    assert checks["lock_timeout"]["ok"] is True


def test_only_get(client, db):
    assert client.post("/ready").status_code == 405


def test_not_ready_with_pending_migrations_says_so_even_before_the_workers_table_exists(client, db, monkeypatch):
    """Regression: before procrastinate's migrations ran, reading the workers' heartbeat failed and /ready
    blamed the database; it names the pending migrations (and no worker seen) instead."""
    from django.db.migrations.executor import MigrationExecutor

    monkeypatch.setattr(MigrationExecutor, "migration_plan", lambda self, targets: [("procrastinate", "0001")])
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE procrastinate_workers RENAME TO procrastinate_workers_not_yet")
    body = client.get("/ready").json()
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["migrations"] == {"ok": False, "pending": 1}
    assert body["checks"]["worker"]["ok"] is False
