"""Reading a refusal: the API's error envelope, or the constraint (or trigger) that refused a write."""

from django.db import IntegrityError, transaction

from core.guards import constraint_name


def assert_error(response, status, code):
    """Assert ``response`` is the one error envelope, ``{"error": {"code": …, "message": …}}``; return its error."""
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


def refused_by(write):
    """Run ``write`` in a savepoint; return the name of the constraint or trigger that refused it (None if none)."""
    try:
        with transaction.atomic():
            write()
    except IntegrityError as exc:
        return constraint_name(exc)
    return None
