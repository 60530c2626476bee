"""The history context is sent once per transaction, and is still in force for every write (core/history.py)."""

from decimal import Decimal

import pghistory
import pghistory.runtime
import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from bookings.models import Package
from core.history import set_once_per_transaction
from promos.models import RedemptionSession
from tests.bookings.factories import PackageFactory
from tests.promos.factories import RedemptionSessionFactory

pytestmark = pytest.mark.django_db(transaction=True)

SENT = "SELECT set_config('pghistory.context_id'"


def rename(package, name):
    Package.objects.filter(pk=package.pk).update(name=name)


def sent(queries):
    return sum(SENT in query["sql"] for query in queries)


def contexts(package):
    """The context metadata of each of the package's events after its creation, oldest first."""
    events = Package.objects.get(pk=package.pk).row_history.select_related("pgh_context").order_by("pgh_id")
    return [event.pgh_context.metadata if event.pgh_context else None for event in events][1:]


@pytest.fixture
def package(tenant):
    return PackageFactory(tenant=tenant, name="Cruise")


def test_pghistory_installs_the_once_per_transaction_injector():
    assert pghistory.runtime._inject_history_context is set_once_per_transaction
    with pghistory.context(command="test"):
        assert set_once_per_transaction in connection.execute_wrappers


def test_a_transaction_sends_the_context_once_and_every_write_carries_it(package):
    with pghistory.context(command="one"), CaptureQueriesContext(connection) as queries, transaction.atomic():
        for name in ("A", "B", "C"):
            rename(package, name)
    assert sent(queries) == 1
    assert contexts(package) == [{"command": "one"}] * 3


def test_each_transaction_sends_it_again(package):
    with pghistory.context(command="two"), CaptureQueriesContext(connection) as queries:
        for name in ("A", "B"):
            with transaction.atomic():
                rename(package, name)
        rename(package, "C")  # autocommit: a transaction of its own
        rename(package, "D")
    assert sent(queries) == 4
    assert contexts(package) == [{"command": "two"}] * 4


def test_a_rolled_back_savepoint_took_it_back_so_the_next_write_sends_it_again(package):
    with pghistory.context(command="three"), CaptureQueriesContext(connection) as queries, transaction.atomic():
        with pytest.raises(RuntimeError), transaction.atomic():
            rename(package, "lost")  # sent inside the savepoint...
            raise RuntimeError  # ...and rolled back with it
        rename(package, "kept")
        with transaction.atomic():
            rename(package, "released")  # the setting from the outer level is still in force
    assert sent(queries) == 2
    assert contexts(package) == [{"command": "three"}] * 2


def test_a_released_savepoint_keeps_it(package):
    with pghistory.context(command="four"), CaptureQueriesContext(connection) as queries, transaction.atomic():
        with transaction.atomic():
            rename(package, "A")
        rename(package, "B")
    assert sent(queries) == 1
    assert contexts(package) == [{"command": "four"}] * 2


def test_a_context_that_changes_mid_transaction_is_sent_again(package):
    with pghistory.context(url="/x"), CaptureQueriesContext(connection) as queries, transaction.atomic():
        rename(package, "A")
        pghistory.context(provider_event="evt_1")  # joins the open context: its metadata grows
        rename(package, "B")
        rename(package, "C")
    assert sent(queries) == 2
    # One context row per context, its metadata the latest sent (pghistory's upsert): without the second
    # send it would still read {"url": "/x"}.
    assert contexts(package) == [{"url": "/x", "provider_event": "evt_1"}] * 3


def test_savepoints_and_reads_do_not_send_it(package):
    with pghistory.context(command="five"), CaptureQueriesContext(connection) as queries, transaction.atomic():
        with transaction.atomic():
            list(Package.objects.filter(pk=package.pk))
    assert sent(queries) == 0
    assert all(query["sql"].startswith(("SAVEPOINT", "RELEASE", "SELECT", "BEGIN", "COMMIT")) for query in queries)


@pytest.mark.parametrize("pooled", [False, True], ids=["direct", "behind a transaction-mode pooler"])
def test_a_one_statement_guard_outside_a_transaction_carries_the_context(tenant, monkeypatch, pooled):
    """Behind the pooler such a statement also carries the timeouts, put in front after the injector
    ran (core.db_backend.execute_carrying_timeouts): the injector still sees a write, and sends the context."""
    session = RedemptionSessionFactory(tenant=tenant, status=RedemptionSession.Status.APPROVED)
    monkeypatch.setitem(connection.settings_dict, "TIMEOUTS_PER_TRANSACTION", pooled)
    with pghistory.context(command="consume"):
        RedemptionSession.objects.consume(session.session_id, tenant=tenant, amount=Decimal("10.00"))
    consumed = session.row_history.select_related("pgh_context").order_by("-pgh_id").first()
    assert consumed.status == RedemptionSession.Status.USED
    assert consumed.pgh_context is not None and consumed.pgh_context.metadata == {"command": "consume"}


def consumed_through_the_api(client, tenant):
    """Consume an approved session through the API; the metadata of the context of its ``used`` event."""
    session = RedemptionSessionFactory(tenant=tenant, status=RedemptionSession.Status.APPROVED)
    path = f"/api/t/{tenant.slug}/redemption-sessions/{session.session_id}/consume"
    response = client.post(path, {"amount": "10"}, format="json")
    assert response.status_code == 200, response.content
    consumed = session.row_history.select_related("pgh_context").order_by("-pgh_id").first()
    assert consumed.status == RedemptionSession.Status.USED
    return consumed.pgh_context.metadata, path


def test_a_token_request_names_the_tokens_user_though_it_has_no_session(tenant, api_client, member):
    """core.history.HistoryMiddleware opens the context without a user for a request with no session
    cookie; DRF's authentication names the token's user before the write."""
    metadata, path = consumed_through_the_api(api_client, tenant)
    assert metadata == {"user": member.pk, "url": path}


def test_an_admin_write_names_the_logged_in_user(tenant, admin_client, admin_user):
    """The admin's user comes from the session when the context opens (no DRF to name it later)."""
    session = RedemptionSessionFactory(tenant=tenant)
    url = reverse("admin:promos_redemptionsession_changelist")
    form = {"action": "cancel_selected", "apply": "1", "_selected_action": [str(session.pk)]}
    assert admin_client.post(url, form).status_code == 302
    cancelled = session.row_history.select_related("pgh_context").order_by("-pgh_id").first()
    assert cancelled.status == RedemptionSession.Status.CANCELLED
    assert cancelled.pgh_context.metadata == {"user": admin_user.pk, "url": url}
