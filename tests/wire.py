"""What reaches the server, read off the wire: libpq's own trace of a Django connection."""

import contextlib
import tempfile

from psycopg import pq


@contextlib.contextmanager
def wire(django_connection):
    """The queries the client sends on this connection while the block runs (a list, filled at its end)."""
    sent = []
    with tempfile.TemporaryFile() as trace:
        pgconn = django_connection.connection.pgconn
        pgconn.trace(trace.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            yield sent
        finally:
            pgconn.untrace()
            trace.seek(0)
            for line in trace.read().decode().splitlines():
                direction, _length, message, *rest = line.split("\t")
                if direction == "F" and message in ("Query", "Parse"):
                    sent.append(rest[0].strip())
