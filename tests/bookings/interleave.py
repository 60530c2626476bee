"""Helpers for deterministic interleavings: hold a transaction open on another connection, see who waits."""

import threading
import time

from django import forms
from django.db import connection, connections, transaction


class OpenTransaction:
    """Run ``work()`` inside a transaction on another connection and keep it open until ``commit()``.

    Whatever locks ``work`` took (row locks, advisory locks) stay held meanwhile: the
    exact lock another path would wait for. ``result``/``error`` hold its outcome.
    """

    def __init__(self, work):
        self.work, self.result, self.error = work, None, None
        self.ready, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self):
        try:
            with transaction.atomic():
                self.result = self.work()
                self.ready.set()
                self.release.wait(30)
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            self.error = exc
        finally:
            self.ready.set()
            connections.close_all()

    def start(self):
        self.thread.start()
        assert self.ready.wait(15), "the holding transaction never got its locks"
        if self.error is not None:
            raise self.error
        return self

    def commit(self):
        self.release.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.result

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.release.set()
        self.thread.join(30)


class Background:
    """Run ``fn()`` on its own connection in a thread; ``done`` is set when it returned or raised."""

    def __init__(self, fn):
        self.fn, self.result, self.error = fn, None, None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self):
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            self.error = exc
        finally:
            self.done.set()
            connections.close_all()

    def join(self):
        self.thread.join(30)
        assert not self.thread.is_alive(), "the background path hung"
        return self


def lock_waiters():
    """How many other sessions of this database are waiting for a lock right now."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def wait_until_blocked_or_done(background, timeout=10):
    """Wait until ``background`` waits for a lock (True) or finished without waiting (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if background.done.is_set():
            return False
        if lock_waiters():
            return True
        time.sleep(0.01)
    raise AssertionError("neither blocked nor done")


def admin_change_data(response, **changes):
    """The POST a browser would send back from an admin change page, with ``changes`` typed in.

    Reads the rendered form (editable fields and the hidden ``expected_version``) and
    every inline's management form and hidden fields from the GET response.
    """
    form = response.context["adminform"].form
    data = {}
    for name, field in form.fields.items():
        value = form[name].value()
        if isinstance(field.widget, forms.CheckboxInput):
            if value:
                data[name] = "on"
            continue
        data[name] = "" if value is None else value
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        for name in formset.management_form.fields:
            data[f"{formset.prefix}-{name}"] = formset.management_form[name].value()
        for subform in formset.forms:
            for bound in subform.hidden_fields():
                data[bound.html_name] = "" if bound.value() is None else bound.value()
    data.update(changes)
    return data
