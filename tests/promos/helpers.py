from contextlib import contextmanager

from django.db import connection
from django.db.models import Count, Q

from promos.models import PromoCode


def assert_invariant(promo):
    """times_used == count(non-voided usages) <= total_usage_limit."""
    promo = PromoCode.objects.annotate(live=Count("usages", filter=Q(usages__voided_at__isnull=True))).get(pk=promo.pk)
    assert promo.times_used == promo.live, (promo.times_used, promo.live)
    if promo.total_usage_limit is not None:
        assert promo.times_used <= promo.total_usage_limit
    return promo.times_used


def statements(queries):
    """The SQL a CaptureQueriesContext saw, without the test transaction's savepoints."""
    return [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]


@contextmanager
def bypassing(model, *, triggers=(), constraints=()):
    """Inside the test's transaction, switch off ``triggers`` (by name) and drop ``constraints`` of ``model``.

    For planting a defect the guards would refuse; the test transaction's rollback restores both.
    """
    assert connection.in_atomic_block, "bypass only inside the test's transaction"
    table = model._meta.db_table
    by_name = {trigger.name: trigger for trigger in model._meta.triggers}
    with connection.cursor() as cursor:
        # ALTER TABLE refuses a table with deferred foreign-key checks still queued: run them now.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")
        for name in triggers:
            cursor.execute(f'ALTER TABLE "{table}" DISABLE TRIGGER "{by_name[name].get_pgid(model)}"')
        for name in constraints:
            cursor.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT "{name}"')
    yield
