"""Each pgbench baseline sends what the app sends: the same statement shapes, locks and indexes.

``bench/`` reads "Lockstep call / raw SQL" as the cost of the ORM over the same transaction; a
script that drifted from the app (an index the app no longer uses, a lock it now takes) makes
that ratio a lie. For each operation, one won and one refused attempt of the app (captured on
Django's connection) and of its script (``pgbench --debug`` on the same database) are compared:

- statement by statement, as shapes: literals, parameters and pgbench ``:variables`` become
  ``?``, and an expression of nothing but those (``'c' || :k``, ``DATE '2000-01-01' + :day``,
  a cast) one ``?``; savepoints stay (the scripts mirror them), their names do not;
- by the index, or sequential scan, the planner picks for every statement (EXPLAIN).

Filtered, and nothing else: the script head's attempt counter (``nextval('bench_k')``, pgbench's
own bookkeeping), and what a script adds to decide like the app's Python does, marked
``pgbench_*`` (pgbench cannot test a NULL or read a row count).
"""

import re
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from bench import pgbench
from bench.operations import OPERATIONS, PGBENCH_HEAD
from bookings.models import Package
from core.exceptions import DomainError

ROWS = 2_000  # enough rows that the planner takes an index wherever one serves the lookup

STRINGS = re.compile(r"(?<![\w'])[eE]'(?:[^'\\]|\\.)*'|'(?:[^']|'')*'")
PGBENCH_VARIABLE = re.compile(r"(?<!:):(?!:)\w+")
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")
TOKEN = re.compile(r"\?|\w+|::|\|\||[<>!]=|<>|\S")
SAVEPOINT_NAME = re.compile(r"\b(savepoint|release savepoint|rollback to savepoint) \w+")
# Applied until nothing changes: an expression of placeholders only is one placeholder.
CONSTANT_EXPRESSIONS = [
    re.compile(r"\? :: \w+(?: \[ \])?"),  # '…'::uuid
    re.compile(r"\b(?:date|interval|timestamptz) \?"),  # DATE '2000-01-01'
    re.compile(r"\? (?:\|\||[-+*/]) \?"),  # 'c' || :k, :base_day + :t
    re.compile(r"\bmd5 \( \? \)"),
    re.compile(r"(?<!\w )\( \? \)"),  # parentheses, not a function's
]
PGBENCH_DECISIONS = re.compile(r" , \( [^()]* \) as pgbench_\w+| returning \? as pgbench_\w+")


def shape(sql):
    """The statement with its values abstracted away, as tokens: comparable between Django and pgbench."""
    text = PGBENCH_VARIABLE.sub("?", STRINGS.sub("?", sql))
    text = NUMBER.sub("?", text.replace('"', "").lower().rstrip().rstrip(";"))
    text = SAVEPOINT_NAME.sub(r"\1 ?", " ".join(TOKEN.findall(text)))
    previous = None
    while text != previous:
        previous = text
        for pattern in CONSTANT_EXPRESSIONS:
            text = pattern.sub("?", text)
    return PGBENCH_DECISIONS.sub("", text)


# The first line of every script's head: pgbench's attempt counter, not the app's work.
ATTEMPT_COUNTER = shape(PGBENCH_HEAD.splitlines()[0].removesuffix("\\gset"))


def scans(sql):
    """What the planner reads for ``sql``: the index names, or "Seq Scan on <table>"."""
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql.rstrip().rstrip(';')}")
        nodes, found = [cursor.fetchone()[0][0]["Plan"]], []
    while nodes:
        node = nodes.pop()
        if "Index Name" in node:
            found.append(node["Index Name"])
        elif node["Node Type"] == "Seq Scan":
            found.append(f"Seq Scan on {node['Relation Name']}")
        nodes.extend(node.get("Plans", []))
    return sorted(found)


PLANNED = ("select", "insert", "update", "delete", "with")  # not BEGIN, SAVEPOINT, COMMIT...


def planned(statements):
    queries = [part for sql in statements for part in split_compound(sql)]
    return [scans(sql) for sql in queries if sql.split(None, 1)[0].lower() in PLANNED]


def split_compound(sql):
    """The statements of one query that sends several (a lock timeout before its lock, a place's locks
    before its read: app "; ", pgbench " ;"), split at the semicolons outside string literals."""
    masked = STRINGS.sub(lambda literal: "'" * len(literal.group()), sql)
    parts, start = [], 0
    for at in (n for n, character in enumerate(masked) if character == ";"):
        parts.append(sql[start:at])
        start = at + 1
    return [part.strip() for part in [*parts, sql[start:]] if part.strip()]


@pytest.fixture
def bench_context(tenant, member, settings):
    """What bench/__main__.py's Context gives the operations, on the test database."""
    settings.PAYMENT_PROVIDER = "sandbox"  # the bench pays through the sandbox
    package = Package.objects.create(tenant=tenant, name="Bench day", price="100.00", currency="USD", daily_capacity=1)
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_date + 1 - DATE '2000-01-01'")
        base_day = cursor.fetchone()[0]
    return SimpleNamespace(tenant=tenant, user=member, slug=tenant.slug, package=package, base_day=base_day)


@pytest.fixture(params=OPERATIONS, ids=lambda operation: operation.name)
def attempts(request, bench_context):
    """A won and a refused attempt, each as the statements it sent: ``(app, script)``."""
    operation = request.param(bench_context)
    operation.setup(ROWS)
    # HOT with 2 clients: the script's attempts k = 0 and 1 both aim at target 0, the first wins.
    sent = pgbench.sent(
        pgbench.find_pgbench(),
        operation.pgbench_script("hot"),
        variables={**operation.variables(), "rows": ROWS, "clients": 2},
        transactions=2,
        db=connection.settings_dict,
    )
    script = []
    for sql in sent:
        if shape(sql) == ATTEMPT_COUNTER:
            script.append([])
        else:
            script[-1].append(sql)
    app, refusals = [], []
    for k in (2, 3):  # target 1, so the two sides never meet
        with CaptureQueriesContext(connection) as queries:
            try:
                operation.lockstep(1, k)
                refusals.append(None)
            except DomainError as refusal:
                refusals.append(refusal.code)
        app.append([query["sql"] for query in queries.captured_queries])
    assert refusals[0] is None and refusals[1] is not None, refusals
    return app, script


@pytest.mark.django_db(transaction=True)
def test_script_sends_the_statements_of_the_app(attempts):
    app, script = attempts
    for outcome, app_sql, script_sql in zip(("won", "refused"), app, script, strict=True):
        assert [shape(sql) for sql in script_sql] == [shape(sql) for sql in app_sql], outcome


@pytest.mark.django_db(transaction=True)
def test_script_reads_through_the_indexes_of_the_app(attempts):
    app, script = attempts
    for outcome, app_sql, script_sql in zip(("won", "refused"), app, script, strict=True):
        assert planned(script_sql) == planned(app_sql), outcome
