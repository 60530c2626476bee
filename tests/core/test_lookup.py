"""core.api.lookup: an id from the URL becomes one row of this tenant, or the error the view names."""

import uuid

import pytest

from bookings.models import Checkout
from core.api.inputs import MAX_ID
from core.api.lookup import get_for_tenant, valid_id, valid_uuid
from core.exceptions import NotFound
from promos.exceptions import PromoNotFound, SessionNotFound
from promos.models import PromoCode, PromoUsage, RedemptionSession
from proposals.exceptions import ProposalNotFound
from proposals.models import Proposal
from tests.promos.factories import PromoCodeFactory, PromoUsageFactory, RedemptionSessionFactory
from tests.proposals.factories import make_proposal

MALFORMED_IDS = [
    "abc",
    "",
    "1.5",
    "-1",
    "+5",
    " 5",
    "5 ",
    "5\n",
    "1_0",
    "٥",  # an Arabic-Indic five: a digit to int(), not an id
    "0x10",
    "9" * 5000,  # more digits than int() converts
    None,
    True,
    1.0,
]
OUT_OF_RANGE_IDS = [0, "0", "000", -1, MAX_ID + 1, str(MAX_ID + 1), "99999999999999999999999"]


class GivenNotFound(NotFound):
    code = "given_not_found"


# --- valid_id / valid_uuid -----------------------------------------------------------------------


@pytest.mark.parametrize("raw", MALFORMED_IDS + OUT_OF_RANGE_IDS, ids=repr)
def test_valid_id_refuses_with_the_given_error(raw):
    with pytest.raises(GivenNotFound):
        valid_id(raw, GivenNotFound)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(1, 1), ("1", 1), ("0042", 42), (MAX_ID, MAX_ID), (str(MAX_ID), MAX_ID)],
)
def test_valid_id_returns_the_bigint(raw, expected):
    assert valid_id(raw, GivenNotFound) == expected


@pytest.mark.parametrize("raw", ["abc", "", "0000", "00000000-0000-0000-0000-00000000000g", None, 5])
def test_valid_uuid_refuses_with_the_given_error(raw):
    with pytest.raises(GivenNotFound):
        valid_uuid(raw, GivenNotFound)


def test_valid_uuid_reads_every_form_uuid_reads():
    value = uuid.uuid4()
    for raw in (value, str(value), value.hex, str(value).upper(), f"{{{value}}}", f"urn:uuid:{value}"):
        assert valid_uuid(raw, GivenNotFound) == value


# --- get_for_tenant --------------------------------------------------------------------------------


@pytest.fixture
def promo(tenant):
    return PromoCodeFactory(tenant=tenant)


@pytest.mark.django_db
@pytest.mark.parametrize("raw", MALFORMED_IDS + OUT_OF_RANGE_IDS, ids=repr)
def test_malformed_or_out_of_range_id_is_the_given_error_without_a_query(raw, tenant, django_assert_num_queries):
    with django_assert_num_queries(0), pytest.raises(PromoNotFound):
        get_for_tenant(PromoCode, tenant, PromoNotFound, pk=raw)


@pytest.mark.django_db
def test_another_tenants_row_is_the_given_error(tenant, other_tenant):
    theirs = PromoCodeFactory(tenant=other_tenant)
    for raw in (theirs.pk, str(theirs.pk)):
        with pytest.raises(PromoNotFound):
            get_for_tenant(PromoCode, tenant, PromoNotFound, pk=raw)
    assert get_for_tenant(PromoCode, other_tenant, PromoNotFound, pk=theirs.pk) == theirs


@pytest.mark.django_db
def test_absent_row_is_the_given_error(tenant, promo):
    absent = PromoCode.objects.order_by("-pk").values_list("pk", flat=True).first() + 1000
    with pytest.raises(PromoNotFound) as refused:
        get_for_tenant(PromoCode, tenant, PromoNotFound, pk=absent)
    assert refused.type is PromoNotFound  # the given error itself, not a bare NotFound


@pytest.mark.django_db
@pytest.mark.parametrize("as_text", [False, True])
def test_found_row_in_one_query(tenant, promo, as_text, django_assert_num_queries):
    with django_assert_num_queries(1):
        found = get_for_tenant(PromoCode, tenant, PromoNotFound, pk=str(promo.pk) if as_text else promo.pk)
    assert found == promo


@pytest.mark.django_db
def test_a_queryset_keeps_what_it_carries(tenant, promo, django_assert_num_queries):
    usage = PromoUsageFactory(promo=promo)
    with django_assert_num_queries(1):
        found = get_for_tenant(PromoUsage.objects.select_related("promo"), tenant, GivenNotFound, pk=usage.pk)
        assert found.promo == promo  # fetched by the one query

    proposal = make_proposal(tenant)
    found = get_for_tenant(Proposal.objects.with_effective_status(), tenant, ProposalNotFound, pk=proposal.pk)
    assert found.effective_status == Proposal.Status.PENDING


@pytest.mark.django_db
def test_uuid_lookup(tenant, other_tenant, django_assert_num_queries):
    ours = RedemptionSessionFactory(tenant=tenant)
    theirs = RedemptionSessionFactory(tenant=other_tenant)
    with django_assert_num_queries(1):
        assert get_for_tenant(RedemptionSession, tenant, SessionNotFound, session_id=str(ours.session_id)) == ours
    for raw in ("abc", str(theirs.session_id), str(uuid.uuid4())):
        with pytest.raises(SessionNotFound):
            get_for_tenant(RedemptionSession, tenant, SessionNotFound, session_id=raw)


@pytest.mark.django_db
def test_other_lookups_pass_as_they_are(tenant, promo):
    found = get_for_tenant(PromoCode, tenant, PromoNotFound, code__iexact=promo.code.lower())
    assert found == promo


def test_refuses_a_model_outside_the_tenant_scope_and_an_empty_lookup(tenant):
    with pytest.raises(TypeError, match="TenantScopedQuerySet"):
        get_for_tenant(Checkout, tenant, NotFound, pk=1)
    with pytest.raises(TypeError, match="lookup"):
        get_for_tenant(PromoCode, tenant, PromoNotFound)
