"""A row's ``version`` never goes down, whoever writes it: the database refuses it for every versioned model.

Each optimistic check (API PATCH, admin forms, deletes at a version) compares the version a client read with
the row's. A full-row ``save()`` of a row read before a colleague's edit writes the old version back with the
old values; BumpVersion leaves a version the writer set alone, so without this refusal the stale write would
pass, undo the edit, and let a page from before it pass its check too.
"""

import io

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import transaction
from django.db.models import F

from bookings.models import Package
from bookings.services import start_checkout
from core.exceptions import TransitionRefused
from core.guards import database_refusals
from core.integrity import BumpVersion, VersionOnlyIncreases
from tests.bookings.factories import future

VERSIONED = sorted(
    (
        model
        for model in apps.get_models()
        if any(isinstance(t, BumpVersion) for t in getattr(model._meta, "triggers", []))
    ),
    key=lambda model: model._meta.label,
)


def test_every_versioned_model_refuses_a_version_that_goes_down():
    assert len(VERSIONED) == 7  # tenant, membership, package, booking, promo code, proposal, profile
    for model in VERSIONED:
        refusals = [t for t in model._meta.triggers if isinstance(t, VersionOnlyIncreases)]
        assert len(refusals) == 1, model._meta.label


@pytest.fixture
def seeded(db):
    """The demo's rows, and a held booking."""
    call_command("seed_demo", "--without-admin", stdout=io.StringIO())
    package = Package.objects.order_by("pk").first()
    start_checkout(
        tenant=package.tenant, package_id=package.pk, date=future(20), customer_name="C", customer_email="c@d.co"
    )


@pytest.mark.parametrize("model", VERSIONED, ids=lambda model: model._meta.label)
def test_an_update_lowering_the_version_is_refused_and_one_raising_it_passes(seeded, model):
    row = model._default_manager.order_by("pk").first()
    assert row is not None, f"seed_demo made no {model._meta.label}"
    (refusal,) = [t for t in model._meta.triggers if isinstance(t, VersionOnlyIncreases)]

    rows = model._default_manager.filter(pk=row.pk)

    def set_version(expression):  # a plain .update(), as a writer that skips the managers would send
        with database_refusals(), transaction.atomic():
            rows.update(version=expression)
        return rows.values_list("version", flat=True).get()

    raised = set_version(F("version") + 2)
    assert raised == row.version + 2
    with pytest.raises(TransitionRefused) as refused:
        set_version(F("version") - 1)
    assert refused.value.params == {"old": str(raised), "new": str(raised - 1)}
    assert rows.values_list("version", flat=True).get() == raised
    assert refusal.name.endswith("_version_transition")
