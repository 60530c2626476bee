"""Request ids, request-scoped log fields, JSON logs and Prometheus metrics (core/observability.py, core/metrics.py).

Metrics are process-wide counters, so every test compares a scrape of ``/metrics``
before and after what it does. The multiprocess tests run real separate processes
(two ``python -c`` writers, then gunicorn with two workers) against one
PROMETHEUS_MULTIPROC_DIR and check that a scrape sums them.
"""

import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.db.models.functions import Now
from django.http import JsonResponse
from django.test.utils import CaptureQueriesContext
from django.urls import path
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from bookings.models import Checkout
from bookings.services import retry_refund
from core import metrics
from core.discovery import PROJECT_ROOT
from core.observability import JSONFormatter, RequestContextFilter
from tests.bookings.factories import PackageFactory, book
from tests.bookings.test_payments import checkout_of, paid_then_cancelled
from tests.conftest import token_client
from tests.core.urls import handler400, handler404, handler500  # noqa: F401 - the JSON handlers
from tests.core.urls import urlpatterns as core_test_urlpatterns
from tests.factories import MembershipFactory, TenantFactory
from tests.promos.factories import PromoCodeFactory
from tests.races import run_concurrently

view_logger = logging.getLogger("tests.observability")


def logging_view(request, tenant):
    view_logger.warning("inside the view", extra={"detail": "from the view"})
    return JsonResponse({})


# This module is the URL map of its tests: the real one, the test-bump views, and a view that logs.
urlpatterns = [path("api/t/<slug:tenant>/test-log", logging_view), *core_test_urlpatterns]
pytestmark = pytest.mark.urls(__name__)

REDEEM_ROUTE = "/api/t/<slug:tenant>/promo-codes/redeem"
HEX32 = re.compile(r"[0-9a-f]{32}")


def scrape(client, **headers):
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return response.content.decode()


def value(text, sample, **labels):
    """Sum of the samples named ``sample`` whose labels include ``labels`` (0 when none)."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and labels.items() <= s.labels.items()
    )


class Scrape:
    """Differences between two scrapes: ``delta("lockstep_refusals_total", code=…)``."""

    def __init__(self, client):
        self.client, self.before = client, scrape(client)

    def delta(self, sample, **labels):
        return value(scrape(self.client), sample, **labels) - value(self.before, sample, **labels)


# --- request id -------------------------------------------------------------------------


def test_every_answer_carries_a_new_request_id_when_the_client_sends_none(client):
    first, second = client.get("/health"), client.get("/health")
    assert HEX32.fullmatch(first["X-Request-ID"]) and HEX32.fullmatch(second["X-Request-ID"])
    assert first["X-Request-ID"] != second["X-Request-ID"]


@pytest.mark.parametrize("given", ["abc-123", "req_01HZX.~:/+=@!", "x" * 128, "7"])
def test_a_clients_request_id_is_answered_as_given(client, given):
    assert client.get("/health", HTTP_X_REQUEST_ID=given)["X-Request-ID"] == given


@pytest.mark.parametrize("given", ["", "x" * 129, "with space", "tab\there", "line\nbreak", "caf\u00e9", "nul\x00"])
def test_a_bad_client_request_id_is_replaced(client, given):
    answered = client.get("/health", HTTP_X_REQUEST_ID=given)["X-Request-ID"]
    assert HEX32.fullmatch(answered) and answered != given


def test_errors_and_api_refusals_carry_the_request_id_too(api_client, tenant):
    response = api_client.get("/api/t/acme/no-such-thing", HTTP_X_REQUEST_ID="trace-1")
    assert response.status_code == 404 and response["X-Request-ID"] == "trace-1"


# --- logs -------------------------------------------------------------------------------


@pytest.fixture
def request_logs(caplog):
    """caplog with the filter the console handler has (config/settings.py LOGGING)."""
    caplog.handler.addFilter(RequestContextFilter())
    caplog.set_level(logging.INFO)
    return caplog


def test_a_record_logged_during_a_request_carries_its_request_id_and_tenant(api_client, tenant, request_logs):
    response = api_client.get("/api/t/acme/test-log")
    assert response.status_code == 200
    [record] = [r for r in request_logs.records if r.name == "tests.observability"]
    assert record.request_id == response["X-Request-ID"]
    assert record.tenant == "acme"


def test_a_record_outside_a_request_says_so(request_logs):
    view_logger.warning("no request here")
    [record] = request_logs.records
    assert (record.request_id, record.tenant) == ("-", "-")


def test_each_refused_api_request_is_one_info_line_with_code_and_status(api_client, tenant, request_logs):
    refused = api_client.post(
        "/api/t/acme/promo-codes/redeem", {"code": "NOPE", "customer": "c", "amount": "1.00"}, format="json"
    )
    assert refused.status_code == 404
    api_client.get("/api/t/acme/")  # an answer, not a refusal: no line
    [line] = [r for r in request_logs.records if r.name == "lockstep.refusals"]
    assert line.levelno == logging.INFO
    assert (line.code, line.status, line.route) == ("promo_not_found", 404, REDEEM_ROUTE)
    assert (line.request_id, line.tenant) == (refused["X-Request-ID"], "acme")
    assert line.getMessage() == "refused POST /api/t/acme/promo-codes/redeem: 404 promo_not_found"


def test_a_refusal_line_cannot_be_split_by_the_path(api_client, tenant, request_logs):
    assert api_client.get("/api/t/acme/promo-codes/x%0AFORGED").status_code == 404
    [line] = [r for r in request_logs.records if r.name == "lockstep.refusals"]
    assert "\n" not in line.getMessage() and "/promo-codes/x%0AFORGED" in line.getMessage()


def console_lines(formatter, call):
    """What the console handler of LOGGING would print while ``call()`` runs: filter, then formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestContextFilter())
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        call()
    finally:
        root.removeHandler(handler)
    return stream.getvalue().splitlines()


def test_json_lines_parse_and_carry_request_id_tenant_and_extras(api_client, tenant):
    responses = []
    lines = console_lines(JSONFormatter(), lambda: responses.append(api_client.get("/api/t/acme/test-log")))
    entries = [json.loads(line) for line in lines]
    [entry] = [e for e in entries if e["logger"] == "tests.observability"]
    assert entry["request_id"] == responses[0]["X-Request-ID"] and entry["tenant"] == "acme"
    assert entry["level"] == "WARNING" and entry["message"] == "inside the view"
    assert entry["detail"] == "from the view"  # extra= fields are kept
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["time"])


def test_json_lines_keep_exceptions_and_never_fail_on_odd_values():
    def log():
        try:
            raise ValueError("boom")
        except ValueError:
            view_logger.exception("failed %s", "here", extra={"amount": Decimal("1.50"), "level": "not mine"})

    [line] = console_lines(JSONFormatter(), log)
    entry = json.loads(line)
    assert entry["message"] == "failed here" and entry["level"] == "ERROR"  # an extra never overwrites a field
    assert entry["amount"] == "1.50" and "ValueError: boom" in entry["exception"]
    assert (entry["request_id"], entry["tenant"]) == ("-", "-")


def test_the_text_format_names_request_id_and_tenant(api_client, tenant):
    text = logging.Formatter(django_settings.LOGGING["formatters"]["text"]["format"])
    responses = []
    lines = console_lines(text, lambda: responses.append(api_client.get("/api/t/acme/test-log")))
    assert any(f"[{responses[0]['X-Request-ID']} acme] inside the view" in line for line in lines), lines


def test_the_console_handler_is_configured_with_the_filter_and_the_chosen_format():
    console = django_settings.LOGGING["handlers"]["console"]
    assert console["filters"] == ["request_context"]
    assert console["formatter"] == django_settings.LOG_FORMAT in ("json", "text")


# --- metrics ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_metrics_scraped_after_a_storm_show_the_refusals(client):
    """20 concurrent redeems of a code limited to 5, over HTTP: 5 created, 15 promo_exhausted, all counted."""
    promo = PromoCodeFactory(tenant=TenantFactory(slug="storm"), total_usage_limit=5)
    member = MembershipFactory(tenant=promo.tenant).user
    token_client(member)  # the token exists before the threads start
    scraped = Scrape(client)
    retries = []

    def redeem(i):
        api = token_client(member)
        for _attempt in range(20):
            response = api.post(
                "/api/t/storm/promo-codes/redeem",
                {"code": promo.code, "customer": f"customer-{i}", "amount": "40.00"},
                format="json",
            )
            if response.status_code != 409 or response.json()["error"]["code"] != "resource_locked":
                return response
            retries.append(i)  # what a client does with Retry-After: back off, try again
            time.sleep(0.05)
        raise AssertionError("still locked after 20 attempts")

    outcomes = run_concurrently(redeem, 20)
    answers = Counter(outcome.value.status_code if outcome.ok else repr(outcome.error) for outcome in outcomes)
    assert answers == {201: 5, 409: 15}, answers
    assert scraped.delta("lockstep_refusals_total", code="promo_exhausted", status="409") == 15
    assert scraped.delta("lockstep_http_request_duration_seconds_count", route=REDEEM_ROUTE) == 20 + len(retries)
    assert scraped.delta("lockstep_http_request_duration_seconds_count", route=REDEEM_ROUTE, status="201") == 5
    assert scraped.delta("lockstep_lock_conflicts_total", code="resource_locked") == len(retries)
    assert scraped.delta("lockstep_refusals_total") == 15 + len(retries)


def test_a_lock_conflict_is_counted_as_one_and_as_a_refusal(client, api_client, tenant):
    scraped = Scrape(client)
    response = api_client.post("/api/t/acme/test-bump", {"fail": "locked"}, format="json")
    assert response.status_code == 409 and response["Retry-After"]
    assert scraped.delta("lockstep_lock_conflicts_total", code="resource_locked") == 1
    assert scraped.delta("lockstep_refusals_total", code="resource_locked", status="409") == 1


def test_lock_conflict_series_exist_before_any_conflict(client, db):
    text = scrape(client)
    for code in ("resource_locked", "operation_locked", "parent_locked"):
        assert f'lockstep_lock_conflicts_total{{code="{code}"}}' in text


def test_an_idempotent_replay_is_counted_once_and_not_again_as_a_refusal(client, api_client, tenant):
    scraped = Scrape(client)
    for _ in range(2):
        api_client.post("/api/t/acme/test-bump", {}, format="json", HTTP_IDEMPOTENCY_KEY="ok-1")
    for _ in range(3):
        refused = api_client.post(
            "/api/t/acme/test-bump", {"fail": "conflict"}, format="json", HTTP_IDEMPOTENCY_KEY="refused-1"
        )
    assert refused.status_code == 409 and refused["Idempotent-Replayed"] == "true"
    assert scraped.delta("lockstep_idempotency_replays_total") == 1 + 2
    assert scraped.delta("lockstep_refusals_total", code="conflict") == 1  # the replays answered it again, not anew


def test_a_refund_given_up_on_is_counted_when_its_state_commits(
    client, tenant, settings, django_capture_on_commit_callbacks
):
    settings.REFUND_MAX_ATTEMPTS = 2
    booking = paid_then_cancelled(client, PackageFactory(tenant=tenant), settings, "RefundDownProvider")
    scraped = Scrape(client)
    Checkout.objects.filter(booking=booking).update(next_retry_at=None)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert retry_refund(booking.pk) == "exhausted"
    assert checkout_of(booking).refund_state == "exhausted"
    assert scraped.delta("lockstep_refunds_failed_total") == 0  # not before the commit
    for callback in callbacks:
        callback()
    assert scraped.delta("lockstep_refunds_failed_total") == 1


def test_the_refunds_under_way_are_counted_from_the_rows_whichever_process_moved_them(client, tenant, settings):
    """Regression: refunds given up on by the worker (its retry_refunds, where most reach REFUND_MAX_ATTEMPTS)
    were counted in the worker's memory, which a scrape of the web server never sees: the alert stayed quiet.
    The gauge reads the rows at the scrape."""
    before = scrape(client)
    assert [value(before, "lockstep_refunds", state=state) for state in ("pending", "failed", "exhausted")] == [0] * 3
    settings.REFUND_MAX_ATTEMPTS = 2
    booking = paid_then_cancelled(client, PackageFactory(tenant=tenant), settings, "RefundDownProvider")
    assert value(scrape(client), "lockstep_refunds", state="failed") == 1
    Checkout.objects.filter(booking=booking).update(next_retry_at=None)
    assert retry_refund(booking.pk) == "exhausted"
    after = scrape(client)
    assert (value(after, "lockstep_refunds", state="failed"), value(after, "lockstep_refunds", state="exhausted")) == (
        0,
        1,
    )


def test_notifications_left_sending_by_a_dead_worker_are_counted_at_the_scrape(client, tenant):
    """A worker that died between a notification's claim and the mail server's answer left it ``sending``, and
    nothing told anyone (the claim is at most once: no retry sends it). The gauge counts such rows, a claim in
    flight (younger than SENDING_LEFT_AFTER) not among them."""
    from core.models import SENDING_LEFT_AFTER, Notification

    assert "lockstep_notifications_left_sending 0.0" in scrape(client)
    book(PackageFactory(tenant=tenant, name="Cruise")), book(PackageFactory(tenant=tenant, name="Dhow"))
    left, in_flight = Notification.objects.filter(kind="booking_held").order_by("pk")
    for row in (left, in_flight):
        assert Notification.objects.claim(row.pk) is not None
    Notification.objects.filter(pk=left.pk).update(claimed_at=Now() - SENDING_LEFT_AFTER)
    assert value(scrape(client), "lockstep_notifications_left_sending") == 1


def test_the_route_label_is_the_url_pattern_never_the_path(client, api_client, tenant):
    api_client.get("/api/t/acme/promo-codes/CODE-ZQX")
    client.get("/nowhere-at-all-zqx")
    text = scrape(client)
    assert "zqx" not in text.lower()
    assert value(
        text, "lockstep_http_request_duration_seconds_count", route="/api/t/<slug:tenant>/promo-codes/<str:pk>"
    )
    assert value(text, "lockstep_http_request_duration_seconds_count", route="<unmatched>", status="404")


def statements(client, url):
    client.get(url)  # warm: one-time lookups are not the middleware's
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    return len(queries), response


def test_metrics_add_no_database_statement(member, tenant, settings):
    observed = token_client(member)
    assert statements(observed, "/health")[0] == 0
    assert statements(observed, "/metrics")[0] == 3  # the scrape's own: jobs, refunds under way, e-mails left sending
    with_middleware, response = statements(observed, "/api/t/acme/promo-codes/NOPE")
    assert response.status_code == 404 and "X-Request-ID" in response
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != "core.observability.ObservabilityMiddleware"]
    without_middleware, response = statements(token_client(member), "/api/t/acme/promo-codes/NOPE")
    assert "X-Request-ID" not in response  # the middleware really was off
    assert with_middleware == without_middleware > 0


def test_a_metrics_token_is_required_when_set(client, settings, db):
    settings.METRICS_TOKEN = "s3cret-token"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Token s3cret-token").status_code == 401
    assert "lockstep_refusals" in scrape(client, HTTP_AUTHORIZATION="Bearer s3cret-token")


# --- several processes ------------------------------------------------------------------

WRITER = """
import sys
from core import metrics
metrics.REFUSALS.labels("promo_exhausted", "409").inc(int(sys.argv[1]))
metrics.REQUEST_DURATION.labels("POST", "/x", "409").observe(0.02)
print("ok")
"""


def write_in_another_process(directory, amount):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(amount)], cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, text=True
    )


def test_two_processes_writing_metrics_are_summed_by_one_scrape(client, tmp_path, monkeypatch, db):
    """What gunicorn's workers do: each process its own files, the scrape (any process) sums them."""
    writers = [write_in_another_process(tmp_path, 3), write_in_another_process(tmp_path, 4)]
    assert [writer.communicate(timeout=60)[0].strip() for writer in writers] == ["ok", "ok"]
    assert len(list(tmp_path.glob("counter_*.db"))) == 2  # one file per process

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    labels = {"code": "promo_exhausted", "status": "409"}
    assert registry.get_sample_value("lockstep_refusals_total", labels) == 7

    monkeypatch.setattr(metrics, "MULTIPROC_DIR", str(tmp_path))  # /metrics as a gunicorn worker answers it
    text = scrape(client)
    assert value(text, "lockstep_refusals_total", **labels) == 7
    assert value(text, "lockstep_http_request_duration_seconds_count", route="/x") == 2

    mark_process_dead(writers[0].pid, str(tmp_path))  # gunicorn's child_exit: a dead worker's counts stay
    assert value(scrape(client), "lockstep_refusals_total", **labels) == 7


def free_port():
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port != 8300:
            return port


def test_make_serve_gunicorn_sums_its_workers_and_logs_request_ids(tmp_path):
    """config/gunicorn.py with two workers, recycled every 8 requests: stale files removed at start, every
    request counted once whichever worker served it (exited ones too), an access log line with its request id."""
    stale = write_in_another_process(tmp_path, 100)  # a previous run's counts
    assert stale.communicate(timeout=60)[0].strip() == "ok"
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "DEBUG": "true"}
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "config.wsgi", "--config", "config/gunicorn.py"]
        # each worker exits after 8 requests and a new one (another pid, other files) takes its place; sync
        # workers of one thread here (more threads would make it gthread), so that it is exactly 8: a gthread
        # worker accepts more before it has counted them
        + [
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--worker-class",
            "sync",
            "--threads",
            "1",
            "--max-requests",
            "8",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=30).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"gunicorn did not start: {server.communicate()[1][-2000:]}")
                time.sleep(0.2)
        sent = []

        def get(i):
            request = urllib.request.Request(f"{base}/health", headers={"X-Request-ID": f"gunicorn-{i}"})
            with urllib.request.urlopen(request, timeout=10) as answer:
                sent.append(answer.headers["X-Request-ID"])

        threads = [threading.Thread(target=get, args=(i,)) for i in range(30)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(sent) == sorted(f"gunicorn-{i}" for i in range(30))
        text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    finally:
        server.terminate()
        out, err = server.communicate(timeout=30)
    access = [line for line in out.splitlines() if '"GET /health HTTP' in line]
    assert len(access) >= 31, (out[-2000:], err[-2000:])  # the start-up probe, then the 30
    # every request served, by whichever worker, counted once in the one scrape
    assert value(text, "lockstep_http_request_duration_seconds_count", route="/health") == len(access)
    assert value(text, "lockstep_refusals_total") == 0  # the stale run's file was removed at start
    assert len(list(tmp_path.glob("histogram_*.db"))) >= 4  # 31 requests, 8 per worker: 4 workers or more
    assert {line.rsplit("request_id=", 1)[1] for line in access} >= {f"gunicorn-{i}" for i in range(30)}


def test_the_queue_depth_and_failed_jobs_are_scraped(client, db):
    from bookings.services import start_checkout
    from tests.bookings.factories import PackageFactory, future

    assert value(scrape(client), "lockstep_jobs", queue="notifications") == 0
    package = PackageFactory()
    start_checkout(
        tenant=package.tenant, package_id=package.pk, date=future(), customer_name="A", customer_email="a@b.co"
    )  # owes the customer an e-mail: one job queued with it
    assert value(scrape(client), "lockstep_jobs", queue="notifications", status="todo") == 1
    with connection.cursor() as cursor:
        cursor.execute("UPDATE procrastinate_jobs SET status = 'failed'")  # what the worker does on its last retry
    assert value(scrape(client), "lockstep_jobs", queue="notifications", status="failed") == 1
