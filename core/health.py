"""Liveness and readiness, as JSON, for load balancers and orchestrators.

- ``/health``: the process answers (no database work: a slow database must not get healthy
  workers restarted).
- ``/ready``: this worker can serve guarded requests now — the database answers, every migration
  is applied, and the lock, statement and idle-in-transaction timeouts *in effect* on its
  connection are the configured ones (a pooler that drops startup options would otherwise
  leave lock waits unbounded), and some worker's heartbeat is fresh (no worker: holds would
  stay held, refunds unretried). 503 with the failing checks otherwise.
"""

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.db.migrations.executor import MigrationExecutor
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from core.db_backend.base import TIMEOUTS


@require_GET
def health(request):
    return JsonResponse({"status": "ok"})


@require_GET
def ready(request):
    checks = readiness()
    ready = all(check["ok"] for check in checks.values())
    return JsonResponse({"status": "ready" if ready else "not_ready", "checks": checks}, status=200 if ready else 503)


def readiness(using=DEFAULT_DB_ALIAS):
    """Each check: {"ok": bool, ...what was seen}. Never raises."""
    connection = connections[using]
    try:
        # Inside a transaction: what a guarded operation gets (behind a pooler, set per transaction).
        with transaction.atomic(using=using), connection.cursor() as cursor:
            cursor.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                [list(TIMEOUTS)],
            )
            effective = {name: int(value) for name, value in cursor.fetchall()}
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
        heartbeat_age = None
        if not pending:  # procrastinate's table comes with its migrations: missing, it is those that fail
            with transaction.atomic(using=using), connection.cursor() as cursor:
                # procrastinate's workers beat every few seconds; the youngest beat, by the database clock
                cursor.execute(
                    "SELECT extract(epoch FROM clock_timestamp() - max(last_heartbeat)) FROM procrastinate_workers"
                )
                (heartbeat_age,) = cursor.fetchone()
    except DatabaseError as error:
        return {"database": {"ok": False, "error": error.__class__.__name__}}
    checks = {"database": {"ok": True}, "migrations": {"ok": not pending, "pending": len(pending)}}
    oldest_allowed = settings.WORKER_HEARTBEAT_MAX_AGE_S
    heartbeat_age = None if heartbeat_age is None else round(float(heartbeat_age), 1)
    checks["worker"] = {
        "ok": heartbeat_age is not None and heartbeat_age <= oldest_allowed,
        "heartbeat_age_s": heartbeat_age,
        "max_age_s": oldest_allowed,
    }
    for parameter, setting in TIMEOUTS.items():
        wanted = getattr(settings, setting)
        checks[parameter] = {
            "ok": effective.get(parameter) == wanted,
            "effective_ms": effective.get(parameter),
            "configured_ms": wanted,
        }
    return checks
