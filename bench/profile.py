"""``python -m bench.profile``: where an operation's server CPU goes, per request, in one process.

Runs each operation's API request (and the framework floor) through Django's test
client on a fresh ``lockstep_bench`` database, one attempt per target (every attempt
wins), under cProfile, and prints the CPU per request and the functions it is spent
in, then the CPU one statement costs the app through Django's cursor and through psycopg alone. The
numbers are the app's own work without gunicorn and the network: they say where to cut, ``make
bench`` says what a request costs.

    python -m bench.profile [--operations proposal_confirm date_hold] [--attempts 400] [--top 25]
"""

import argparse
import cProfile
import io
import pstats
import time

from bench.__main__ import Context, fresh_database  # sets Django up as make bench does
from bench.floor import FrameworkFloor
from bench.operations import OPERATIONS

WARM_UP = 50
CALLEES = []  # --callees: functions whose callees to list


def requests_of(operation, ctx, attempts, *, refused=False):
    """``attempts`` requests after ``WARM_UP`` unmeasured ones, each on its own target: every one wins; or,
    with ``refused``, every one on the first target, which the first warm-up attempt won: each is refused
    (409), the HOT case's usual request."""
    from django.test import Client

    client = Client(HTTP_AUTHORIZATION=f"Token {ctx.token}")
    anonymous = Client()

    def send(k):
        path, body, authenticated = operation.http(0 if refused else k, k)
        sender = client if authenticated else anonymous
        response = sender.get(path) if body is None else sender.post(path, body, content_type="application/json")
        expected = 409 if refused and k else None
        if response.status_code != expected and (expected or response.status_code >= 300):
            raise SystemExit(f"{operation.name}: attempt {k} answered {response.status_code}: {response.content!r}")

    for k in range(WARM_UP):
        send(k)
    return [lambda k=k: send(k) for k in range(WARM_UP, WARM_UP + attempts)]


def profile(operation, ctx, attempts, top, *, refused=False):
    """CPU ms per request without the profiler (the first half), and the profile of the second half."""
    if hasattr(operation, "setup"):
        operation.setup(WARM_UP + 2 * attempts)
    requests = requests_of(operation, ctx, 2 * attempts, refused=refused)
    started = time.process_time()
    for request in requests[:attempts]:
        request()
    per_request_ms = (time.process_time() - started) * 1000 / attempts
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for request in requests[attempts:]:
        request()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    if CALLEES:
        stats.sort_stats("cumulative").print_callees(*CALLEES)
    return per_request_ms, stats.total_calls / attempts, out.getvalue()


def round_trip_cost(repeat=3000):
    """CPU per statement (µs) of one small SELECT with three parameters, in a transaction: through
    Django's cursor (what every Lockstep statement goes through), and through psycopg's own
    client-side-binding cursor on the same connection (what Django adds is the difference)."""
    import psycopg
    from django.db import connection, transaction

    def through_django():
        with connection.cursor() as cursor:
            cursor.execute("SELECT %s, %s, %s", [1, "abc", 2.5])
            cursor.fetchone()

    def through_psycopg():
        with psycopg.ClientCursor(connection.connection) as cursor:
            cursor.execute("SELECT %s, %s, %s", [1, "abc", 2.5])
            cursor.fetchone()

    costs = {}
    with transaction.atomic():
        for name, send in (("Django cursor", through_django), ("psycopg ClientCursor", through_psycopg)):
            send()
            started = time.process_time()
            for _ in range(repeat):
                send()
            costs[name] = (time.process_time() - started) * 1e6 / repeat
    return costs


def main():
    names = [op.name for op in OPERATIONS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", nargs="+", default=["floor", *names], choices=["floor", *names])
    parser.add_argument("--attempts", type=int, default=400)
    parser.add_argument("--top", type=int, default=25, help="functions listed per ordering (0: none)")
    parser.add_argument("--callees", nargs="*", default=[], help="also list what these functions call (regex)")
    parser.add_argument("--refused", action="store_true", help="every measured attempt refused (409), as in HOT")
    args = parser.parse_args()
    CALLEES.extend(args.callees)
    fresh_database()
    ctx = Context()
    kinds = {"floor": FrameworkFloor, **{op.name: op for op in OPERATIONS}}
    summary = []
    operations = [name for name in args.operations if not (args.refused and name == "floor")]  # nothing to refuse
    for name in operations:
        per_request_ms, calls, listing = profile(kinds[name](ctx), ctx, args.attempts, args.top, refused=args.refused)
        if args.top:
            print(f"=== {name}\n{listing}")
        summary.append((name, per_request_ms, calls))
    # Function calls per request do not move with the machine's speed: compare them across commits.
    for name, per_request_ms, calls in summary:
        print(f"{name:>18}: {per_request_ms:.2f} ms CPU per request (in process, not profiled), {calls:,.0f} calls")
    for name, cost in round_trip_cost().items():
        print(f"{'one statement':>18}: {cost:.0f} µs CPU through {name}")


if __name__ == "__main__":
    main()
