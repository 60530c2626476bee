"""The served WSGI handler (core/wsgi.py, what config/wsgi.py serves): a charset Django cannot decode with
is the client's mistake, a 400, never a 500. Driven through the handler itself, as gunicorn calls it (the
test client brings a handler of its own)."""

import json
from importlib.util import find_spec

import pytest
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import RequestFactory
from django.test.client import FakePayload
from rest_framework.authtoken.models import Token

from core.wsgi import Handler

CHARSETS = ["rot13", "zlib", "base64", "punycode"]


def served(method, path, body, content_type, **headers):
    path, _sep, query = path.partition("?")
    environ = RequestFactory()._base_environ(
        PATH_INFO=path,
        REQUEST_METHOD=method,
        QUERY_STRING=query,
        CONTENT_TYPE=content_type,
        CONTENT_LENGTH=str(len(body)),
        **{"wsgi.input": FakePayload(body)},
        **headers,
    )
    status = []
    # As the test client does: the handler would close the connection the test's transaction is on.
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    try:
        response = Handler()(environ, lambda line, headers, exc_info=None: status.append(line))
        body = b"".join(response)
    finally:
        for signal in (request_started, request_finished):
            signal.connect(close_old_connections)
    return int(status[0].split()[0]), body


@pytest.mark.django_db
@pytest.mark.parametrize("charset", CHARSETS)
@pytest.mark.parametrize("query", ["", "?a=%C3%A9"])
def test_a_charset_no_text_decodes_with_is_400_to_a_member(tenant, member, charset, query):
    # The body the client says is in that charset is refused; with an escape in the query string, this
    # was a 500 raised while Django built the request.
    code, body = served(
        "POST",
        f"/api/t/{tenant.slug}/promo-codes{query}",
        b'{"code": "X"}',
        f"application/json; charset={charset}",
        HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=member).key}",
    )
    assert (code, json.loads(body)["error"]["code"]) == (400, "bad_request"), body


@pytest.mark.django_db
@pytest.mark.parametrize("charset", CHARSETS)
def test_a_query_string_sent_with_such_a_charset_is_read_as_utf8(charset):
    # It was decoded with the charset while Django built the request: a 500 before any middleware.
    code, body = served("GET", "/admin/login/?next=/admin/%C3%A9", b"", f"text/plain; charset={charset}")
    assert code == 200 and "/admin/é".encode() in body


@pytest.mark.django_db
def test_a_charset_it_can_decode_with_is_served_as_before(tenant):
    code, body = served("GET", f"/api/t/{tenant.slug}/?a=%E9", b"", "application/json; charset=latin-1")
    assert (code, json.loads(body)["error"]["code"]) == (401, "not_authenticated")


def test_the_served_application_is_this_handler():
    from django.conf import settings

    module, _dot, _name = settings.WSGI_APPLICATION.rpartition(".")
    with open(find_spec(module).origin) as source:  # not imported: it would refuse the tests' settings
        assert "application = Handler()" in source.read()
