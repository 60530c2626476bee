from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class SafeJSONParser(JSONParser):
    """DRF's JSON parser, but a body nested deeper than Python's recursion limit is a 400, never a 500.

    ``json`` raises RecursionError (not the ValueError DRF turns into ``malformed_request``) from
    about a thousand levels: a 2 KB body of brackets, from anyone, on every JSON endpoint.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None
