"""What must hold for promo codes and redemption sessions, recomputed from the rows."""

from django.db.models import Count, F, Q

from core.invariants import invariant
from promos.models import PromoCode, PromoUsage, RedemptionSession


def _scoped(queryset, tenant):
    return queryset.filter(tenant=tenant) if tenant is not None else queryset


@invariant("times_used equals the code's non-voided usages and never exceeds total_usage_limit")
def usage_counter_matches_usages(tenant):
    codes = _scoped(PromoCode.objects.all(), tenant).annotate(
        live=Count("usages", filter=Q(usages__voided_at__isnull=True))
    )
    broken = codes.filter(
        ~Q(times_used=F("live")) | Q(total_usage_limit__isnull=False, live__gt=F("total_usage_limit"))
    )
    return [
        f"code {code.code!r}: times_used={code.times_used}, live usages={code.live}, limit={code.total_usage_limit}"
        for code in broken
    ]


@invariant("no customer holds more non-voided usages of a code than its per_customer_limit")
def per_customer_limit_respected(tenant):
    over = (
        _scoped(PromoUsage.objects.filter(voided_at__isnull=True, promo__per_customer_limit__isnull=False), tenant)
        .values("promo_id", "customer", "promo__per_customer_limit")
        .annotate(live=Count("id"))
        .filter(live__gt=F("promo__per_customer_limit"))
    )
    return [f"code {row['promo_id']} customer {row['customer']!r}: {row['live']} usages" for row in over]


@invariant("a session is used at most once, before it expired, for no more than its max_amount")
def sessions_consumed_within_terms(tenant):
    sessions = _scoped(RedemptionSession.objects.all(), tenant)
    broken = sessions.filter(
        Q(status=RedemptionSession.Status.USED, used_at__isnull=True)
        | Q(used_at__isnull=False) & ~Q(status=RedemptionSession.Status.USED)
        | Q(used_at__gte=F("expires_at"))
        | Q(used_amount__gt=F("max_amount"))
    )
    return [f"session {sid}" for sid in broken.values_list("session_id", flat=True)]
