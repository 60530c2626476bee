"""Rate limits that hold under concurrency: DRF throttles whose buckets live in PostgreSQL.

DRF's ``SimpleRateThrottle`` keeps a request history in Django's cache and does a
read, then a write. On a shared cache without an atomic increment (Django's
DatabaseCache has none) concurrent requests overwrite each other's history, so a
storm of 50 parallel requests passes a limit of 10. These throttles keep DRF's
conventions (``scope``, rates such as ``"60/minute"``, ``get_cache_key``, ``wait``)
and replace the storage: each bucket is a row of ``core_throttlebucket`` and each
request costs ONE statement, a GCRA (generic cell rate algorithm) upsert:

- a rate of N per period P spaces requests by the emission interval T = P / N;
- the row holds ``tat``, the theoretical arrival time of the next request;
- a request at ``now`` is allowed when ``max(tat, now) + T - now <= P``, and then
  ``tat`` becomes ``max(tat, now) + T``.

So a full bucket lets N requests through at once, then one every T. The
``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` row-locks the bucket and judges each
request against the value the previous one committed; no row back means refused,
and only then a second statement reads how long to wait (``Retry-After``).
Statements run in autocommit (``ATOMIC_REQUESTS`` is off and throttles run in
``initial()``, before any view opens a transaction), so a bucket's row lock lasts one
statement. Time is the database's clock: ``statement_timestamp()``, the moment the
request's statement arrived, so every app server agrees.

Rates come from ``settings.LOCKSTEP_THROTTLE_RATES`` at each request (config/settings.py);
a scope whose rate is empty is off and costs no statement.
"""

import hashlib
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router
from rest_framework import exceptions
from rest_framework.throttling import SimpleRateThrottle

from core.models import ThrottleBucket

PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
PERIODS |= {"d": 86400, "day": 86400}


class Buckets:
    """GCRA buckets in ``core_throttlebucket``: one atomic upsert per request."""

    TAKE = """
        INSERT INTO {table} AS bucket (key, tat)
        VALUES (%(key)s, statement_timestamp() + %(interval)s)
        ON CONFLICT (key) DO UPDATE
            SET tat = greatest(bucket.tat, statement_timestamp()) + %(interval)s
            WHERE greatest(bucket.tat, statement_timestamp()) + %(interval)s - statement_timestamp() <= %(period)s
        RETURNING tat
    """
    # Seconds until max(tat, now) + T - now <= P holds again, i.e. until now = tat + T - P.
    WAIT = """
        SELECT extract(epoch FROM tat + %(interval)s - %(period)s - statement_timestamp())
        FROM {table} WHERE key = %(key)s
    """

    def take(self, key, *, limit, period):
        """Take one cell of ``key``'s bucket (``limit`` per ``period`` seconds).

        Return ``None`` when allowed, else the seconds to wait before the next cell frees.
        """
        params = self._params(key, limit=limit, period=period)
        with self._cursor() as cursor:
            cursor.execute(self.TAKE.format(table=self._table()), params)
            if cursor.fetchone() is not None:
                return None
            cursor.execute(self.WAIT.format(table=self._table()), params)
            row = cursor.fetchone()
        return float(row[0]) if row is not None else 0.0

    @staticmethod
    def _params(key, *, limit, period):
        # T rounded down to whole microseconds (the resolution of an interval), so that
        # limit * T never exceeds the period: a full bucket always lets ``limit`` through.
        interval = timedelta(microseconds=period * 1_000_000 // limit)
        return {"key": key, "interval": interval, "period": timedelta(seconds=period)}

    @staticmethod
    def _table():
        return connections[router.db_for_write(ThrottleBucket)].ops.quote_name(ThrottleBucket._meta.db_table)

    @staticmethod
    def _cursor():
        return connections[router.db_for_write(ThrottleBucket)].cursor()


# A key is the bucket table's primary key, whose btree entry cannot pass about 2.7 kB (SQLSTATE 54000, which
# answered 503 database_unavailable): a longer key (a path's slug of any length) is stored as its digest.
LONGEST_KEY = 200


def bounded(key):
    if key is None or len(key) <= LONGEST_KEY:
        return key
    return f"{key[:100]}…{hashlib.sha256(key.encode('utf-8', 'replace')).hexdigest()}"


class PostgresRateThrottle(SimpleRateThrottle):
    """``SimpleRateThrottle`` with its history in a PostgreSQL GCRA bucket instead of the cache.

    Subclasses set ``scope`` and ``get_cache_key`` as with DRF (``None`` = not counted).
    """

    buckets = Buckets()
    cache = None  # not used: see Buckets
    cache_format = "throttle_%(scope)s_%(ident)s"

    def get_rate(self):
        if not self.scope:
            raise ImproperlyConfigured(f"{type(self).__name__} needs a scope")
        return settings.LOCKSTEP_THROTTLE_RATES.get(self.scope) or None

    def parse_rate(self, rate):
        if rate is None:
            return (None, None)
        try:
            number, period = rate.split("/")
            number, period = int(number), PERIODS[period.strip()]
        except (ValueError, KeyError):
            raise ImproperlyConfigured(f"throttle rate {rate!r} for {self.scope!r}: expected e.g. '60/minute'")
        if number < 1:
            raise ImproperlyConfigured(f"throttle rate {rate!r} for {self.scope!r}: at least 1 request")
        return number, period

    def allow_request(self, request, view):
        if self.rate is None:
            return True
        self.key = bounded(self.get_cache_key(request, view))
        if self.key is None:
            return True
        self._wait = self.buckets.take(self.key, limit=self.num_requests, period=self.duration)
        return self._wait is None

    def wait(self):
        """Seconds until the next request is allowed; at least 1, so Retry-After is never 0."""
        return max(1.0, self._wait or 0.0)


class CheckoutAddressThrottle(PostgresRateThrottle):
    """Public checkouts per client address (DRF's ``get_ident``, which honours NUM_PROXIES)."""

    scope = "checkout_address"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


def shop_of(view):
    """The tenant slug of the request's path (``/api/public/<tenant>/…``, ``/api/t/<tenant>/…``), or ''."""
    return str(getattr(view, "kwargs", {}).get("tenant", ""))


class CheckoutEmailThrottle(PostgresRateThrottle):
    """Public checkouts per customer e-mail at one shop (lower-cased; hashed, so no address is stored). Per
    shop: checkouts sent to another shop's path (or to a slug of no shop) in a customer's name must not use up
    what that customer may send to this one."""

    scope = "checkout_email"

    def get_cache_key(self, request, view):
        data = request.data
        customer = data.get("customer") if isinstance(data, dict) else None
        email = customer.get("email") if isinstance(customer, dict) else None
        if not isinstance(email, str) or not email.strip():
            return None  # not counted: the view refuses it as invalid input
        digest = hashlib.sha256(email.strip().lower().encode("utf-8", "replace")).hexdigest()
        return self.cache_format % {"scope": self.scope, "ident": f"{shop_of(view)}:{digest}"}


class TenantApiThrottle(PostgresRateThrottle):
    """Every request under /api/t/<tenant>/, per authenticated user (per address otherwise) and tenant: one
    integration serving two shops has each shop's budget, and one shop's load never throttles the other."""

    scope = "tenant_api"

    def get_cache_key(self, request, view):
        user = getattr(request, "user", None)
        ident = f"user:{user.pk}" if user is not None and user.is_authenticated else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": f"{shop_of(view)}:{ident}"}


class AuthFailureThrottle(PostgresRateThrottle):
    """Failed authentications per client address: a bad token (counted by the authentication class)
    or a wrong approval secret (a redemption session's public approve or reject); see ``count_failure``."""

    scope = "auth_failure"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


def count_failure(request):
    """Take a cell of this address's ``auth_failure`` bucket for a failed authentication; raise
    Throttled (429, ``Retry-After``) when it is empty, so guessing is slowed to the scope's rate."""
    throttle = AuthFailureThrottle()
    if not throttle.allow_request(request, None):
        raise exceptions.Throttled(wait=throttle.wait())
