"""The WSGI handler gunicorn serves (config/wsgi.py): Django's, with a request that does not take a
charset it cannot decode with.

Django takes the ``charset`` of a request's Content-Type for its query string and body whenever
Python knows a codec of that name, and Python knows codecs that are no text encoding (``rot13``,
``zlib``, ``base64``) or fail on ordinary input (``punycode``). Taking one decoded the query string
at once, while Django was still building the request: a 500 for a client's mistake, before any
middleware could answer. Here such a charset is not taken: the query string is read as UTF-8 (what
URLs are written in), and reading the body, which the client said is in that charset, is Django's
``BadRequest``, a 400. The refusal sits in the body's stream, not in a method of this class:
pghistory's middleware gives a write request a class of its own.
"""

import codecs
from functools import lru_cache

from django.core.exceptions import BadRequest
from django.core.handlers.wsgi import WSGIHandler, WSGIRequest
from django.utils.http import parse_header_parameters


@lru_cache(maxsize=64)
def decodes_text(charset):
    """True when bytes decode to text with ``charset``, whatever they are (errors replaced)."""
    try:
        return isinstance(bytes(range(256)).decode(charset, "replace"), str)
    except (LookupError, UnicodeError, TypeError, ValueError):
        return False


def known(charset):
    try:
        codecs.lookup(charset)
    except LookupError:
        return False
    return True


class UndecodableBody:
    """The body's stream of a request whose charset no text decodes with: reading it is a 400."""

    def __init__(self, charset):
        self.charset = charset

    def read(self, *args, **kwargs):
        raise BadRequest(f"The body cannot be decoded as {self.charset!r}.")

    readline = read

    def __iter__(self):
        return self.read()

    def close(self):
        pass


class Request(WSGIRequest):
    def __init__(self, environ):
        self.undecodable_charset = None
        super().__init__(environ)
        if self.undecodable_charset is not None:
            self._stream = UndecodableBody(self.undecodable_charset)

    def _set_content_type_params(self, meta):
        """Django's, except that a charset Python knows but cannot decode text with is not taken (Django
        would decode the query string with it at once); an unknown one is ignored, as Django does."""
        self.content_type, self.content_params = parse_header_parameters(meta.get("CONTENT_TYPE", ""))
        charset = self.content_params.get("charset")
        if charset is None or not known(charset):
            return
        if decodes_text(charset):
            self.encoding = charset
        else:
            self.undecodable_charset = charset


class Handler(WSGIHandler):
    request_class = Request
