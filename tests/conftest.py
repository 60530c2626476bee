import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.factories import MembershipFactory, TenantFactory, UserFactory


@pytest.fixture
def tenant(db):
    return TenantFactory(slug="acme", name="Acme")


@pytest.fixture
def other_tenant(db):
    return TenantFactory(slug="globex", name="Globex")


@pytest.fixture
def member(tenant):
    return MembershipFactory(tenant=tenant, user=UserFactory(username="member")).user


@pytest.fixture
def outsider(other_tenant):
    """A user who belongs to another tenant only."""
    return MembershipFactory(tenant=other_tenant, user=UserFactory(username="outsider")).user


def token_client(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


@pytest.fixture
def api_client(member):
    """An API client authenticated as a member of ``tenant``."""
    return token_client(member)


@pytest.fixture
def outsider_client(outsider):
    """An API client authenticated as a user who is not a member of ``tenant``."""
    return token_client(outsider)


@pytest.fixture(scope="module")
def schema(django_db_blocker):
    """The served OpenAPI schema, as JSON (it does not depend on data)."""
    with django_db_blocker.unblock():
        response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    return response.json()


@pytest.fixture
def anon_client():
    return APIClient()


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Real hashing is deliberately slow; tests do not need it."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """Tests need no durability across a crash of the test server: skip the fsync wait on commit."""
    from django.conf import settings

    options = settings.DATABASES["default"].setdefault("OPTIONS", {})
    options["options"] = options.get("options", "") + " -c synchronous_commit=off"


@pytest.fixture(autouse=True)
def invariants_hold_after_races(request):
    """After every transactional (race, fault) test, every invariant must hold on the whole database.

    Controls (marked ``control``) run without the guard on purpose and are exempt:
    breaking the invariants is what they demonstrate. Afterwards the job queue is emptied
    too: Django's flush empties only its models' tables, and a job left queued here would
    be counted by a later test.
    """
    marker = request.node.get_closest_marker("django_db")
    transactional = marker is not None and marker.kwargs.get("transaction", False)
    transactional = transactional or {"transactional_db", "live_server"} & set(request.fixturenames)
    checked = transactional and request.node.get_closest_marker("control") is None
    if transactional:
        request.getfixturevalue("transactional_db")  # so the flush happens after this check
    yield
    try:
        if checked:
            from core.invariants import assert_invariants

            assert_invariants()
    finally:
        if transactional:
            from django.db import connection

            with connection.cursor() as cursor:
                cursor.execute("TRUNCATE procrastinate_jobs CASCADE")


@pytest.fixture
def locks_switched_off(monkeypatch):
    """``locks_switched_off(*namespaces)``: advisory locks of those namespaces (all, given none) are not taken.

    A control of a lock-based guard runs the product's own code with its lock switched off
    (core/db.py takes every advisory lock through ``_take_advisory``); a try-lock then succeeds.
    """
    from core import db

    take = db._take_advisory

    def switch_off(*namespaces):
        prefixes = tuple(f"{namespace.value}:" for namespace in namespaces)

        def off(key):
            return key.startswith(prefixes) if prefixes else True

        def take_the_others(connection, sql, key, shared=None, then=None, gated=None, condition=()):
            if isinstance(key, list):  # several keys in one statement (each with its mode, if given)
                kept = [n for n, k in enumerate(key) if not off(k)]
                if not kept:
                    return None if then is None else only(connection, then)
                modes = None if shared is None else [shared[n] for n in kept]
                return take(connection, sql, [key[n] for n in kept], modes, then, condition=condition)
            if off(key):  # a try lock, got; what it gates runs as it would
                return True if gated is None else take(connection, "SELECT %s::text IS NOT NULL", key, gated=gated)
            return take(connection, sql, key, gated=gated)

        def only(connection, then):  # the statement sent after the locks, without them
            with connection.cursor() as cursor:
                cursor.execute(*then)
                return cursor.fetchone()

        monkeypatch.setattr(db, "_take_advisory", take_the_others)

    return switch_off
