"""Token authentication that generated clients can use, with failed attempts rate-limited.

``Authorization: Token <key>`` (DRF's scheme) and ``Authorization: Bearer <key>``
(RFC 6750's, which OpenAPI generators send: openapi-python-client's
AuthenticatedClient, openapi-generator, Swagger UI) are both accepted, the keyword
case-insensitively. Everything else is DRF's TokenAuthentication: the same token
model, 401 ``authentication_failed`` for a bad token, ``WWW-Authenticate: Token``.

Under /api/t/<tenant>/ the token, its user, their membership and the tenant come back
from one query (``TokenAuthentication.member``); the view's tenancy uses that row
instead of reading them again. A token that is not a member there takes DRF's own
lookup, so a bad token is still 401 and a non-member still 404.

A failed authentication takes a cell of the ``auth_failure`` bucket of the client's
address (core/api/throttles.py); once it is empty, failed attempts answer 429
``throttled`` with ``Retry-After`` instead of 401. A valid token costs nothing extra.
"""

import functools

from django.contrib.auth import get_user_model
from django.db import DEFAULT_DB_ALIAS, connections
from django.utils.translation import gettext_lazy as _
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from core import rows
from core.api.throttles import count_failure
from core.models import Membership, Tenant

KEYWORDS = ("Token", "Bearer")


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's TokenAuthentication, also under the ``Bearer`` keyword; failures are throttled per address."""

    keywords = KEYWORDS

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() not in {keyword.lower().encode() for keyword in self.keywords}:
            return None  # another scheme, or none: not ours to refuse
        try:
            key = self._key(header)
            membership = self.member(key, tenant_slug=_tenant_slug(request))
            if membership is not None:
                request.lockstep_membership = membership  # read by core.api.tenancy
                return membership.user, membership.user.auth_token
            return self.authenticate_credentials(key)
        except exceptions.AuthenticationFailed:
            count_failure(request)
            raise

    @staticmethod
    def member(key, *, tenant_slug, using=DEFAULT_DB_ALIAS):
        """The active user's membership of the tenant, with user, token and tenant: one query (None if not).

        Every API request asks this, so its SQL is written once per process (``_member_sql``)
        rather than built and compiled by the ORM each time, which cost a third of a request.
        """
        if not tenant_slug:
            return None
        connection = connections[using]
        with connection.cursor() as cursor:
            cursor.execute(_member_sql(connection.ops.quote_name), [key, tenant_slug])
            row = cursor.fetchone()
        if row is None:
            return None
        membership, tenant, user, token = rows.load_joined(_member_models(), row, connection, using)
        membership.tenant, membership.user, token.user = tenant, user, user  # token.user also caches user.auth_token
        return membership

    def _key(self, header):
        # DRF's checks and messages (so its translations apply), for either keyword.
        if len(header) == 1:
            raise exceptions.AuthenticationFailed(_("Invalid token header. No credentials provided."))
        if len(header) > 2:
            raise exceptions.AuthenticationFailed(_("Invalid token header. Token string should not contain spaces."))
        try:
            key = header[1].decode()
        except UnicodeError:
            key = None
        if key is None or "\x00" in key:  # a NUL no token has, and no PostgreSQL text can hold (not a 400)
            raise exceptions.AuthenticationFailed(
                _("Invalid token header. Token string should not contain invalid characters.")
            )
        return key


def _member_models():
    return (Membership, Tenant, get_user_model(), Token)


@functools.cache
def _member_sql(quote):
    membership, tenant, user, token = (model._meta for model in _member_models())

    def column(meta, name):
        return quote(meta.get_field(name).column)

    select = ", ".join(
        rows.columns(meta.model, alias, quote)
        for meta, alias in zip((membership, tenant, user, token), ("m", "t", "u", "k"), strict=True)
    )
    return (
        f"SELECT {select} FROM {quote(membership.db_table)} m "  # noqa: S608 - identifiers from model meta
        f"JOIN {quote(tenant.db_table)} t ON t.{quote(tenant.pk.column)} = m.{column(membership, 'tenant')} "
        f"JOIN {quote(user.db_table)} u ON u.{quote(user.pk.column)} = m.{column(membership, 'user')} "
        f"JOIN {quote(token.db_table)} k ON k.{column(token, 'user')} = u.{quote(user.pk.column)} "
        f"WHERE k.{column(token, 'key')} = %s AND u.{column(user, 'is_active')} AND t.{column(tenant, 'slug')} = %s"
    )


def _tenant_slug(request):
    """The <tenant> of the URL the request is routed to (DRF passes the view's kwargs)."""
    return (getattr(request, "parser_context", None) or {}).get("kwargs", {}).get("tenant")


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """The OpenAPI security scheme: HTTP bearer, so generated clients send ``Bearer <key>``."""

    target_class = "core.api.authentication.TokenAuthentication"
    name = "bearerAuth"
    match_subclasses = True

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "The API token of a member of the tenant: `Authorization: Bearer <key>`; "
            "`Authorization: Token <key>` is accepted too.",
        }
