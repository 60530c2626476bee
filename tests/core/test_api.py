import pgtrigger
import pytest
from django.db.models.functions import Now
from django.utils import translation

from core.exceptions import Conflict, DomainError
from core.models import IdempotencyKey, Tenant
from tests.conftest import token_client
from tests.factories import MembershipFactory, TenantFactory, UserFactory
from tests.races import row_locked, run_concurrently, tally
from tests.refusals import assert_error, refused_by

pytestmark = pytest.mark.urls("tests.core.urls")


# --- tenancy ---------------------------------------------------------------


def test_member_sees_its_tenant(api_client, tenant):
    response = api_client.get("/api/t/acme/")
    assert response.status_code == 200
    assert response.json() == {"slug": "acme", "name": "Acme", "time_zone": "UTC", "role": "staff"}


def test_non_member_and_unknown_tenant_get_the_same_404(outsider_client, tenant, api_client):
    assert_error(outsider_client.get("/api/t/acme/"), 404, "not_found")
    assert_error(api_client.get("/api/t/no-such-tenant/"), 404, "not_found")


def test_anonymous_gets_401(anon_client, tenant):
    assert_error(anon_client.get("/api/t/acme/"), 401, "not_authenticated")


def test_bad_token_gets_401(anon_client, tenant):
    anon_client.credentials(HTTP_AUTHORIZATION="Token nope")
    assert_error(anon_client.get("/api/t/acme/"), 401, "authentication_failed")


def test_unknown_api_path_is_json_404(api_client):
    assert_error(api_client.get("/api/nothing-here/"), 404, "not_found")


def test_malformed_json_is_400(api_client, tenant):
    response = api_client.post("/api/t/acme/test-bump", data="{not json", content_type="application/json")
    assert_error(response, 400, "malformed_request")


@pytest.mark.parametrize(
    "path", ["/api/t/acme/test-bump", "/api/t/acme/packages", "/api/public/acme/checkouts", "/api/webhooks/payments"]
)
def test_json_nested_past_the_recursion_limit_is_400_never_a_500(api_client, tenant, path):
    """Regression: ``json`` raises RecursionError, not ValueError, about a thousand levels down: a 2 KB body
    of brackets was a 500 on every JSON endpoint (the public checkout's throttle read it before the view)."""
    api_client.raise_request_exception = False
    body = "[" * 100_000 + "]" * 100_000
    response = api_client.post(path, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE="t=1,v1=00")
    assert response.status_code == 400, response.status_code
    assert response.json()["error"]["code"] in ("malformed_request", "invalid_signature")


def test_wrong_method_is_405(api_client, tenant):
    assert_error(api_client.delete("/api/t/acme/"), 405, "method_not_allowed")


def test_domain_error_message_is_localized(api_client, tenant):
    english = assert_error(
        api_client.post("/api/t/acme/test-bump", {"fail": "conflict"}, format="json"), 409, "conflict"
    )
    arabic = assert_error(
        api_client.post("/api/t/acme/test-bump", {"fail": "conflict"}, format="json", HTTP_ACCEPT_LANGUAGE="ar"),
        409,
        "conflict",
    )
    assert english["message"] != arabic["message"]
    with translation.override("ar"):
        assert arabic["message"] == str(Conflict.message)


def test_lock_contended_is_409_with_retry_after(api_client, tenant):
    response = api_client.post("/api/t/acme/test-bump", {"fail": "locked"}, format="json")
    assert_error(response, 409, "resource_locked")
    assert int(response["Retry-After"]) >= 1


@pytest.mark.django_db(transaction=True)
def test_real_nowait_conflict_is_409_resource_locked():
    """The tenant row held FOR UPDATE by another connection: NOWAIT is refused, the API says resource_locked."""
    tenant = TenantFactory(slug="acme")
    client = token_client(MembershipFactory(tenant=tenant).user)
    with row_locked(Tenant.objects.filter(pk=tenant.pk)):
        response = client.post("/api/t/acme/test-lock-nowait", {}, format="json")
        assert_error(response, 409, "resource_locked")
        assert int(response["Retry-After"]) >= 1
    assert client.post("/api/t/acme/test-lock-nowait", {}, format="json").status_code == 200


# --- idempotency -----------------------------------------------------------


# What keeps a key's "exactly once" in the database: a test that plants a stale claim sets them aside.
KEY_ANSWERED_ONCE = (
    "core.IdempotencyKey:idempotency_key_state_transition",
    "core.IdempotencyKey:idempotency_key_stored_answer_transition",
)


def bump(client, body=None, key="key-1", path="/api/t/acme/test-bump", **extra):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    return client.post(path, body or {}, format="json", **headers, **extra)


def test_same_key_same_body_replays_without_redoing_work(api_client, tenant):
    first = bump(api_client)
    second = bump(api_client)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json() == {"name": "Acme+"}
    assert second["Idempotent-Replayed"] == "true"
    assert Tenant.objects.get(pk=tenant.pk).name == "Acme+"


def test_same_key_different_body_is_422(api_client, tenant):
    bump(api_client, {"a": 1})
    assert_error(bump(api_client, {"a": 2}), 422, "idempotency_key_reused")


def test_same_key_other_path_is_422(api_client, tenant):
    bump(api_client)
    assert_error(bump(api_client, path="/api/t/acme/test-bump-two-phase"), 422, "idempotency_key_reused")


def test_keys_are_per_principal(api_client, tenant):
    other_member = token_client(MembershipFactory(tenant=tenant, user=UserFactory(username="second")).user)
    bump(api_client)
    response = bump(other_member)
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response
    assert Tenant.objects.get(pk=tenant.pk).name == "Acme++"


def test_without_key_every_post_does_work(api_client, tenant):
    bump(api_client, key=None)
    bump(api_client, key=None)
    assert Tenant.objects.get(pk=tenant.pk).name == "Acme++"


def test_refusals_replay_but_lock_contention_does_not_stick(api_client, tenant):
    assert_error(bump(api_client, {"fail": "conflict"}, key="k-conflict"), 409, "conflict")
    replay = bump(api_client, {"fail": "conflict"}, key="k-conflict")
    assert replay["Idempotent-Replayed"] == "true"
    bump(api_client, {"fail": "locked"}, key="k-locked")
    assert not IdempotencyKey.objects.filter(key="k-locked").exists()


def test_invalid_key_is_400(api_client, tenant):
    assert_error(bump(api_client, key="x" * 300), 400, "idempotency_key_invalid")


def test_expired_records_are_pruned_and_free_their_key(api_client, tenant):
    from django.core.management import call_command
    from django.db.models.functions import Now

    bump(api_client)
    IdempotencyKey.objects.update(expires_at=Now())
    call_command("prune_idempotency_keys")
    assert not IdempotencyKey.objects.exists()
    assert bump(api_client).status_code == 201
    assert Tenant.objects.get(pk=tenant.pk).name == "Acme++"


@pytest.mark.django_db(transaction=True)
def test_the_prune_and_a_retry_reclaiming_an_expired_key_never_lose_the_retrys_claim():
    """Forced interleavings of the two writers of an expired record. The prune deleting it (its row held, not yet
    committed) while a retry with its key arrives: the retry waits for that row, then claims the key anew and
    runs the work (the record had expired). A retry reclaiming it (the expired row deleted and its own claim
    written, not yet committed) while the prune runs: the prune skips the held row at once, never waits, and the
    retry's claim survives it."""
    from datetime import timedelta

    from django.db.models.functions import Now

    from tests.races import OpenTransaction, attempted_while_held, lock_timeout

    tenant = TenantFactory(slug="acme", name="Acme")
    user = MembershipFactory(tenant=tenant).user
    bump(token_client(user), key="old")  # Acme+
    expired = IdempotencyKey.objects.filter(key="old")
    expired.update(expires_at=Now())

    outcome = attempted_while_held(lambda: expired.delete(), lambda i: bump(token_client(user), key="old"))
    assert outcome.ok and outcome.value.status_code == 201, outcome
    assert "Idempotent-Replayed" not in outcome.value
    assert Tenant.objects.get(pk=tenant.pk).name == "Acme++"
    assert list(IdempotencyKey.objects.values_list("state", flat=True)) == ["completed"]

    expired.update(expires_at=Now())
    first = expired.get()
    claim = dict(principal=f"user:{user.pk}", key="old", method="POST", path=first.path, fingerprint=first.fingerprint)
    reclaiming = OpenTransaction(lambda: IdempotencyKey.objects.claim(**claim)).start()
    try:
        with lock_timeout(2000):  # a prune that waited for the retry's row would fail here, not hang
            assert IdempotencyKey.objects.prune() == 0
    finally:
        record, replay = reclaiming.commit()
    assert not replay
    kept = IdempotencyKey.objects.get(key="old")
    assert kept.pk == record.pk != first.pk and kept.state == "in_progress"
    assert IdempotencyKey.objects.filter(pk=kept.pk, expires_at__gt=Now() + timedelta(hours=1)).exists()
    assert IdempotencyKey.objects.prune() == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/api/t/acme/test-bump", "/api/t/acme/test-bump-two-phase"])
def test_twenty_concurrent_same_key_posts_do_the_work_once(path):
    tenant = TenantFactory(slug="acme", name="Acme")
    user = MembershipFactory(tenant=tenant).user
    clients = [token_client(user) for _ in range(20)]

    outcomes = run_concurrently(lambda i: bump(clients[i], {"sleep": 0.2}, key="storm", path=path), 20)

    responses = [outcome.value for outcome in outcomes]
    assert all(outcome.ok for outcome in outcomes), tally(outcomes)
    statuses = sorted(r.status_code for r in responses)
    assert Tenant.objects.get(pk=tenant.pk).name == "Acme+"  # the work ran exactly once
    assert set(statuses) <= {201, 409}
    originals = [r for r in responses if r.status_code == 201 and "Idempotent-Replayed" not in r]
    assert len(originals) == 1
    for r in responses:
        if r.status_code == 409:
            assert r.json()["error"]["code"] == "idempotency_key_in_progress"
            assert int(r["Retry-After"]) >= 1  # a lock conflict like any other
        else:
            assert r.json() == {"name": "Acme+"}
    # after the storm, the key replays
    replay = bump(clients[0], {"sleep": 0.2}, key="storm", path=path)
    assert replay.status_code == 201 and replay["Idempotent-Replayed"] == "true"


@pytest.mark.django_db(transaction=True)
def test_a_stale_two_phase_attempt_never_releases_the_claim_a_retry_took_over(settings, monkeypatch):
    """Regression: a two-phase attempt that outlived IDEMPOTENCY_IN_PROGRESS_TIMEOUT (its key reclaimed by a
    retry) then failed deleted the record by id, the retry's claim included: a third request with the key
    ran the work once more while the retry was still running, instead of 409 idempotency_key_in_progress."""
    import threading
    import time
    from datetime import timedelta

    from django.db import connection

    from tests.core import urls

    settings.IDEMPOTENCY_IN_PROGRESS_TIMEOUT = timedelta(seconds=3)
    monkeypatch.setattr(urls, "LOCKED_ONCE", ["the first attempt to finish"])
    tenant = TenantFactory(slug="acme", name="Acme")
    user = MembershipFactory(tenant=tenant).user
    path, body = "/api/t/acme/test-bump-two-phase", {"sleep": 5}
    answers = {}

    def attempt(name):
        try:
            answers[name] = bump(token_client(user), body, key="slow", path=path)
        finally:
            connection.close()

    first = threading.Thread(target=attempt, args=("first",))
    first.start()  # claims, works, then sleeps 5 s and meets lock contention (409 + Retry-After)
    time.sleep(3.8)  # margins of 0.8 s or more either side: a loaded machine may start a thread late
    retry = threading.Thread(target=attempt, args=("retry",))
    retry.start()  # the claim is older than the timeout: taken over, the work runs again, 5 s
    time.sleep(2.2)  # the first has failed by now (at 5 s); the retry, its claim 2.2 s old, is still running
    third = bump(token_client(user), body, key="slow", path=path)
    first.join()
    retry.join()

    assert_error(answers["first"], 409, "resource_locked")
    assert_error(third, 409, "idempotency_key_in_progress")
    assert answers["retry"].status_code == 201
    assert Tenant.objects.get(pk=tenant.pk).name == "Acme++"  # the first attempt and the retry, no third
    replay = bump(token_client(user), body, key="slow", path=path)
    assert replay["Idempotent-Replayed"] == "true" and replay.json() == answers["retry"].json()


@pytest.mark.django_db(transaction=True)
def test_a_stale_claim_completed_while_a_retry_takes_it_over_is_replayed_not_run_again():
    """Regression: the takeover of a two-phase claim past IDEMPOTENCY_IN_PROGRESS_TIMEOUT judged it stale on
    one read, then updated it by id: when the late first attempt stored its answer in between (the UPDATE
    waited for that row lock), the retry still took the key over and ran the work a second time."""
    from datetime import timedelta

    from tests.races import attempted_while_held

    tenant = TenantFactory(slug="acme", name="Acme")
    user = MembershipFactory(tenant=tenant).user
    path = "/api/t/acme/test-bump-two-phase"
    answer = bump(token_client(user), key="late", path=path).json()  # the work, once: Acme+
    with pgtrigger.ignore(*KEY_ANSWERED_ONCE):  # ... its claim as if still running, an hour on (planted)
        IdempotencyKey.objects.filter(key="late").update(
            state=IdempotencyKey.State.IN_PROGRESS,
            response_status=None,
            response_body=None,
            created_at=Now() - timedelta(hours=1),
        )
    late = IdempotencyKey.objects.get(key="late")

    outcome = attempted_while_held(
        lambda: IdempotencyKey.objects.complete(late, status=201, body=answer),  # the first attempt stores it
        lambda i: bump(token_client(user), key="late", path=path),  # a retry, meanwhile
    )

    assert outcome.ok, outcome
    assert outcome.value.status_code == 201 and outcome.value["Idempotent-Replayed"] == "true"
    assert outcome.value.json() == answer == {"name": "Acme+"}
    assert Tenant.objects.get(pk=tenant.pk).name == "Acme+"


@pytest.mark.django_db(transaction=True)
def test_record_and_work_commit_together():
    """A handler that crashes leaves neither work nor a replayable record."""
    tenant = TenantFactory(slug="acme", name="Acme")
    client = token_client(MembershipFactory(tenant=tenant).user)
    client.raise_request_exception = False
    response = bump(client, {"sleep": "not-a-number"})
    assert response.status_code == 500
    assert not IdempotencyKey.objects.exists()
    assert Tenant.objects.get(pk=tenant.pk).name == "Acme"


def test_a_kept_answer_is_never_taken_back_or_rewritten_whoever_writes(api_client, tenant):
    """The database keeps a key's "exactly once", not only the managers: a completed key sent back to in progress
    (its retry would run the work again), its answer rewritten (a replay would tell another story), the request
    it answers changed (another body would be replayed its answer), a key born completed, an answer on a claim
    still in progress or a completed key without one: each refused."""
    first = bump(api_client, key="once")
    rows = IdempotencyKey.objects.filter(key="once")
    in_progress, completed = IdempotencyKey.State.IN_PROGRESS, IdempotencyKey.State.COMPLETED

    assert refused_by(lambda: rows.update(state=in_progress)) == "idempotency_key_state_transition"
    taken_back = {"state": in_progress, "response_status": None, "response_body": None}
    assert refused_by(lambda: rows.update(**taken_back)) == "idempotency_key_state_transition"
    assert refused_by(lambda: rows.update(response_status=500)) == "idempotency_key_stored_answer_transition"
    assert refused_by(lambda: rows.update(response_body={"name": "?"})) == "idempotency_key_stored_answer_transition"
    for change in ({"principal": "user:0"}, {"key": "other"}, {"method": "PUT"}, {"path": "/x"}, {"fingerprint": "0"}):
        assert refused_by(lambda change=change: rows.update(**change)) == "idempotency_key_request_transition", change

    claim = {"principal": "user:0", "method": "POST", "path": "/x", "fingerprint": "0", "expires_at": Now()}
    born = {"state": completed, "response_status": 200, "response_body": {}}
    assert refused_by(lambda: IdempotencyKey.objects.create(key="born", **claim, **born)) == (
        "idempotency_key_state_transition"
    )
    pending = IdempotencyKey.objects.filter(pk=IdempotencyKey.objects.create(key="pending", **claim).pk)
    assert refused_by(lambda: pending.update(response_status=200)) == "idempotency_key_answer_when_completed"
    assert refused_by(lambda: pending.update(state=completed)) == "idempotency_key_answer_when_completed"

    replay = bump(api_client, key="once")  # what the managers write still passes, and the answer is the first one
    assert replay["Idempotent-Replayed"] == "true" and replay.json() == first.json()
    assert Tenant.objects.get(pk=tenant.pk).name == "Acme+"


def test_domain_error_str_is_readable():
    assert str(DomainError()).startswith("domain_error: ")


def test_a_lone_surrogate_echoed_in_an_error_is_never_a_500(api_client, tenant):
    """A choice error quotes the input back; a lone surrogate must not break the JSON encoder."""
    from core.api.renderers import SafeJSONRenderer

    body = SafeJSONRenderer().render({"error": {"code": "invalid_input", "message": '"\ud800" is not a valid choice.'}})
    assert b"\\ud800" in body
    assert SafeJSONRenderer().render({"message": "مرحبا"}) == '{"message":"مرحبا"}'.encode()
    raw = '{"first_name": "A", "sex": "\\ud800"}'  # a lone surrogate, escaped as JSON allows
    response = api_client.post("/api/t/acme/profiles", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"


def test_anonymous_keys_are_scoped_to_the_path(anon_client, tenant, other_tenant):
    """Two anonymous storefronts that pick the same key for different tenants neither collide nor replay."""
    acme = bump(anon_client, key="order-1", path="/api/public/acme/test-bump")
    globex = bump(anon_client, key="order-1", path="/api/public/globex/test-bump")
    assert acme.status_code == globex.status_code == 201
    assert "Idempotent-Replayed" not in globex
    assert globex.json() == {"name": "Globex+"}
    replay = bump(anon_client, key="order-1", path="/api/public/acme/test-bump")
    assert replay["Idempotent-Replayed"] == "true" and replay.json() == {"name": "Acme+"}
    assert_error(
        bump(anon_client, {"a": 1}, key="order-1", path="/api/public/acme/test-bump"), 422, "idempotency_key_reused"
    )
    assert Tenant.objects.get(pk=tenant.pk).name == "Acme+"
    assert IdempotencyKey.objects.filter(key="order-1").values("principal").distinct().count() == 2


def test_a_value_the_orm_rejects_is_400_not_500(api_client, tenant):
    """The ORM raises Django's ValidationError for a value its field cannot take (a malformed date or UUID)."""
    response = api_client.post("/api/t/acme/test-bump", {"fail": "bad-value"}, format="json")
    error = assert_error(response, 400, "invalid_input")
    assert error["fields"]


@pytest.mark.django_db(transaction=True)
def test_a_constraint_no_guard_names_is_409_conflict_not_500_and_nothing_is_written(api_client, tenant):
    response = api_client.post("/api/t/acme/test-bump", {"fail": "duplicate"}, format="json")
    assert_error(response, 409, "conflict")
    tenant.refresh_from_db()
    assert tenant.name == "Acme"


def test_a_disallowed_host_under_api_is_the_json_envelope(api_client, tenant):
    assert_error(api_client.get("/api/t/acme/", HTTP_HOST="evil.example"), 400, "bad_request")


def _lockstep_issues(deploy):
    from django.core.checks import run_checks

    return sorted(m.id for m in run_checks(include_deployment_checks=deploy) if m.id.startswith("lockstep."))


@pytest.fixture
def production(settings):
    """DEBUG off with every production value set properly: no lockstep issue."""
    settings.DEBUG = False
    settings.SECRET_KEY = "a-real-production-secret-" + "x" * 40
    settings.PAYMENT_WEBHOOK_SECRET = "whsec_real_signing_secret"
    settings.PAYMENT_PROVIDER, settings.STRIPE_API_KEY = "", "sk_live_x"
    settings.PAYMENT_SANDBOX_ALLOWED = False
    return settings


@pytest.mark.parametrize(
    ("change", "number"),
    [
        ({"SECRET_KEY": "lockstep-insecure-development-key-change-me-in-production"}, "001"),
        ({"PAYMENT_WEBHOOK_SECRET": "whsec_lockstep_sandbox_secret"}, "002"),
        ({"STRIPE_API_KEY": ""}, "003"),  # no key: the sandbox provider is configured
        ({"PAYMENT_PROVIDER": "sandbox"}, "003"),
        ({"PAYMENT_PROVIDER": "stripe", "STRIPE_API_KEY": ""}, "004"),
    ],
)
def test_development_values_are_refused_when_debug_is_off(production, change, number):
    from django.core.exceptions import ImproperlyConfigured

    from core.checks import refuse_unsafe_production

    assert _lockstep_issues(deploy=True) == []
    refuse_unsafe_production()  # serves
    for name, value in change.items():
        setattr(production, name, value)
    assert _lockstep_issues(deploy=False) == [f"lockstep.W{number}"]
    assert _lockstep_issues(deploy=True) == [f"lockstep.E{number}", f"lockstep.W{number}"]
    with pytest.raises(ImproperlyConfigured, match=f"lockstep.E{number}"):
        refuse_unsafe_production()
    production.DEBUG = True
    assert _lockstep_issues(deploy=True) == []


def test_a_staging_site_may_allow_the_sandbox(production):
    production.STRIPE_API_KEY = ""
    production.PAYMENT_SANDBOX_ALLOWED = True
    assert _lockstep_issues(deploy=True) == []


def test_an_api_request_never_builds_the_admin_message_storage(api_client, tenant):
    """core.middleware.LazyMessageMiddleware: built on first use, and an API request never uses it (the
    admin's messages still reach the next page: tests/bookings/test_admin.py follows its redirects)."""
    from django.utils.functional import empty

    response = api_client.get(f"/api/t/{tenant.slug}/")
    assert response.status_code == 200
    assert response.wsgi_request._messages._wrapped is empty
    assert "messages" not in response.cookies
