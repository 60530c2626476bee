"""What must hold for promo codes and redemption sessions, recomputed from the rows.

Each check here has a test that plants its defect past the guards (tests/promos/test_invariants.py).
"""

from django.db.models import Count, F, Q
from django.db.models.functions import Round

from core.integrity import state_machines
from core.invariants import invariant
from promos.models import PromoCode, PromoUsage, RedemptionSession
from promos.money import currencies_coarser_than


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


@invariant("a usage belongs to its code's shop")
def usage_in_its_codes_tenant(tenant):
    stray = _scoped(PromoUsage.objects.exclude(tenant_id=F("promo__tenant_id")), tenant)
    return [
        f"usage {pk}: tenant {t}, code's tenant {pt}"
        for pk, t, pt in stray.values_list("pk", "tenant_id", "promo__tenant_id")
    ]


@invariant("a usage is in its code's currency; no usage or session has a fraction of a currency without one")
def amounts_in_their_currency(tenant):
    found = [
        f"usage {pk}: {currency}, code's {promo_currency}"
        for pk, currency, promo_currency in _scoped(
            PromoUsage.objects.exclude(currency=F("promo__currency")), tenant
        ).values_list("pk", "currency", "promo__currency")
    ]
    # Whole-unit currencies (JPY, KRW...): the commonest slip. Finer places (a fourth digit of
    # KWD) the columns cannot hold, and a third of USD is judged by every manager and API call.
    whole = currencies_coarser_than(1)
    fractional_usage = ~Q(base_amount=Round("base_amount")) | ~Q(bonus_amount=Round("bonus_amount"))
    usages = _scoped(PromoUsage.objects.filter(fractional_usage, currency__in=whole), tenant)
    found += [f"usage {pk}: a fraction of {currency}" for pk, currency in usages.values_list("pk", "currency")]
    fractional_session = ~Q(max_amount=Round("max_amount")) | (
        Q(used_amount__isnull=False) & ~Q(used_amount=Round("used_amount"))
    )
    sessions = _scoped(RedemptionSession.objects.filter(fractional_session, currency__in=whole), tenant)
    found += [
        f"session {sid}: a fraction of {currency}" for sid, currency in sessions.values_list("session_id", "currency")
    ]
    return found


def _session_states():
    (machine,) = state_machines(RedemptionSession)
    return machine.states


@invariant("every redemption session's status is a state of its machine")
def session_status_in_machine(tenant):
    outside = _scoped(RedemptionSession.objects.exclude(status__in=sorted(_session_states())), tenant)
    return [f"session {sid}: status {status!r}" for sid, status in outside.values_list("session_id", "status")]


@invariant("a used session has used_at and used_amount; a session not used has neither")
def session_used_iff_stamped(tenant):
    sessions = _scoped(RedemptionSession.objects.all(), tenant)
    broken = sessions.filter(
        Q(status=RedemptionSession.Status.USED) & (Q(used_at__isnull=True) | Q(used_amount__isnull=True))
        | ~Q(status=RedemptionSession.Status.USED) & (Q(used_at__isnull=False) | Q(used_amount__isnull=False))
    )
    return [f"session {sid}: status {status!r}" for sid, status in broken.values_list("session_id", "status")]


@invariant("a session is used before it expired, for no more than its max_amount")
def sessions_consumed_within_terms(tenant):
    sessions = _scoped(RedemptionSession.objects.all(), tenant)
    broken = sessions.filter(Q(used_at__gte=F("expires_at")) | Q(used_amount__gt=F("max_amount")))
    return [f"session {sid}" for sid in broken.values_list("session_id", flat=True)]
