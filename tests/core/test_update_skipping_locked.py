"""core.db.update_skipping_locked: a sweep's UPDATE in batches, each its own transaction, skipping held rows."""

from datetime import timedelta

import pytest

from core.db import update_skipping_locked
from promos.models import RedemptionSession
from tests.factories import TenantFactory
from tests.promos.factories import RedemptionSessionFactory
from tests.races import row_locked

pytestmark = pytest.mark.django_db(transaction=True)


def test_every_matching_row_is_changed_across_batches_and_a_held_one_is_left_for_the_next_run():
    tenant = TenantFactory()
    due = [RedemptionSessionFactory(tenant=tenant, expires_in=timedelta(seconds=-1)) for _ in range(5)]
    live = RedemptionSessionFactory(tenant=tenant)
    overdue = RedemptionSession.objects.overdue()
    with row_locked(RedemptionSession.objects.filter(pk=due[2].pk)):
        assert update_skipping_locked(overdue, batch=2, status="expired") == 4  # 2 + 2, then none left but the held
    statuses = dict(RedemptionSession.objects.values_list("pk", "status"))
    assert [statuses[s.pk] for s in due] == ["expired", "expired", "pending", "expired", "expired"]
    assert statuses[live.pk] == "pending"  # not due: the queryset's conditions hold for every batch
    assert update_skipping_locked(overdue, batch=2, status="expired") == 1  # the next run's
    assert update_skipping_locked(overdue, batch=2, status="expired") == 0
