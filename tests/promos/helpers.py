from django.db.models import Count, Q

from promos.models import PromoCode


def assert_invariant(promo):
    """times_used == count(non-voided usages) <= total_usage_limit."""
    promo = PromoCode.objects.annotate(live=Count("usages", filter=Q(usages__voided_at__isnull=True))).get(pk=promo.pk)
    assert promo.times_used == promo.live, (promo.times_used, promo.live)
    if promo.total_usage_limit is not None:
        assert promo.times_used <= promo.total_usage_limit
    return promo.times_used


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


def statements(queries):
    """The SQL a CaptureQueriesContext saw, without the test transaction's savepoints."""
    return [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
