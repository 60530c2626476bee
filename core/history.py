"""The history of every guarded row, whatever wrote it: captured by the database, in the same transaction.

Why django-pghistory (pinned in requirements.txt): its events are written by PostgreSQL triggers
(installed by migrations, like our state machines, through django-pgtrigger), so a raw
``.update()``, a sweep, the webhook and the admin are recorded alike — a model-level history
library (``save()`` signals) misses exactly the filtered UPDATEs our guards are made of. Each
event row snapshots the row after the change (or before a delete) and points at a context: who
and through what. ``HistoryMiddleware`` (pghistory's, below) attaches the user (also a DRF token's, set in the view)
and the URL to every write request; commands attach their name (``core.management.base``), the
payment webhook its provider event (``bookings.services``). The context is passed with
``set_config(…, true)`` (transaction-local): safe behind a transaction-mode pooler.

pghistory sends it with every writing statement; ``set_once_per_transaction`` (installed in
place of its injector) sends it with the first write of each transaction only, and again when
the context changes or a rolled-back savepoint took it back (see there).

Events are append-only (a trigger refuses UPDATE and DELETE of them).
"""

import json
from dataclasses import dataclass

import pghistory
import pghistory.middleware
import pghistory.runtime
from django.conf import settings
from django.contrib.auth import get_user_model
from django.urls import NoReverseMatch, reverse
from django.utils import formats
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _


def tracked(**options):
    """Decorate a model: record its inserts, changes (rows that really changed) and deletes."""
    return pghistory.track(
        pghistory.InsertEvent(),
        pghistory.UpdateEvent(),
        pghistory.DeleteEvent(),
        obj_field=pghistory.ObjForeignKey(related_name="row_history"),  # "events", "history": taken
        append_only=True,
        **options,
    )


# Statements that write no tracked row: pghistory's own list, and the savepoint commands it would prefix too.
_NOT_WRITES = (*pghistory.runtime.IGNORED_SQL_PREFIXES, "savepoint", "release", "rollback")
_SEND = "SELECT set_config('pghistory.context_id', {}, true), set_config('pghistory.context_metadata', {}, true); "


def set_once_per_transaction(execute, sql, params, many, context):
    """pghistory's context injector, sending the context once per transaction instead of once per write.

    What it sends is pghistory's (the two ``set_config(…, true)`` its triggers read), prefixed to
    the first write of a transaction. A transaction-local setting lasts until the transaction
    ends, or until a savepoint rolled back after it: the write that sends it registers a marker
    with ``on_commit``, which Django drops at commit, at rollback, and at the rollback of any
    savepoint the marker was registered in. Where the marker is still there and the context has
    not changed, the setting is still in force. Outside an atomic block every write is its own
    transaction, and sends it. Reads, savepoints and named cursors are sent as they are.
    """
    text = sql.decode() if isinstance(sql, bytes) else sql
    cursor, connection = context["cursor"], context["connection"]
    if text.lstrip()[:16].lower().startswith(_NOT_WRITES) or getattr(cursor, "name", None):
        return execute(sql, params, many, context)
    if pghistory.runtime._is_transaction_errored(cursor):
        return execute(sql, params, many, context)
    tracker = pghistory.runtime._tracker.value
    sent = getattr(connection, "history_context_sent", None) if connection.in_atomic_block else None
    if sent is not None and sent[1] == (tracker.id, tracker.metadata):
        if any(hook[1] is sent[0] for hook in connection.run_on_commit):
            return execute(sql, params, many, context)
    values = (str(tracker.id), json.dumps(tracker.metadata, cls=pghistory.config.json_encoder()))
    if isinstance(params, dict):  # psycopg takes named or positional parameters, not both
        names = ("pghistory__context_id", "pghistory__context_metadata")
        params = {**params, **dict(zip(names, values, strict=True))}
        prefix = _SEND.format(*(f"%({name})s" for name in names))
    else:
        params = (*values, *(params or ()))
        prefix = _SEND.format("%s", "%s")
    result = pghistory.runtime._execute_wrapper(execute(prefix + text, params, many, context))
    if connection.in_atomic_block:

        def marker():  # a new function each time: the marker is found by identity
            pass

        connection.on_commit(marker)
        connection.history_context_sent = (marker, (tracker.id, dict(tracker.metadata)))
    return result


class HistoryMiddleware(pghistory.middleware.HistoryMiddleware):
    """pghistory's, without resolving the user of a request that has no session to resolve it from.

    pghistory names the request's user when the context opens: for a request without a session
    cookie (every API call with a token) that user is anonymous, and finding it out builds the
    session store and runs the auth middleware's lookup, some 60 calls, for the same ``None``.
    Such a request's user is named later, when DRF authenticates the token and sets
    ``request.user`` (pghistory's request class updates the context then).
    """

    def get_context(self, request):
        if settings.SESSION_COOKIE_NAME not in request.COOKIES:
            return {"user": None, "url": request.path}
        return super().get_context(request)


def install_context_injector():
    """Make ``pghistory.context()`` install ``set_once_per_transaction`` (called once, by CoreConfig.ready)."""
    pghistory.runtime._inject_history_context = set_once_per_transaction


@dataclass
class Entry:
    """One event of a row, as an operator reads it."""

    when: object
    what: str
    who: str
    changes: list  # (field label, before, after), shown as text


LABELS = {"insert": _("created"), "update": _("changed"), "delete": _("deleted")}


def _who(context, users):
    """Who and through what: the user and URL of a request, a command, a payment event, or the database."""
    metadata = context.metadata if context is not None else {}
    parts = []
    if metadata.get("user") is not None:
        parts.append(users.get(metadata["user"], f"user #{metadata['user']}"))
    if metadata.get("command"):
        parts.append(_("command %(name)s") % {"name": metadata["command"]})
    if metadata.get("provider_event"):
        parts.append(_("payment event %(id)s") % {"id": metadata["provider_event"]})
    if metadata.get("url"):
        parts.append(metadata["url"])
    return " · ".join(str(part) for part in parts) or str(_("a direct write (no request, no command)"))


def _shown(field, value, names):
    if value is None or value == "":
        return "-"
    if field.is_relation:
        name = names.get((field.related_model, value), f"#{value}")
        opts = field.related_model._meta
        try:  # linked to the related row's admin page when it has one
            url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[value])
        except NoReverseMatch:
            return name
        return format_html('<a href="{}">{}</a>', url, name)
    if field.choices:
        return str(dict(field.flatchoices).get(value, value))
    return formats.localize(value)


def row_history(obj, *, limit=200):
    """The row's events, newest first, each with its changes from the event before (all fields tracked)."""
    events = list(obj.row_history.select_related("pgh_context").order_by("-pgh_id")[: limit + 1])[::-1]
    fields = [f for f in obj._meta.concrete_fields if hasattr(events[0], f.attname)] if events else []
    users = dict(get_user_model().objects.filter(pk__in=_user_ids(events)).values_list("pk", "username"))
    names = _related_names(events, fields)
    entries, previous = [], None
    for event in events:
        changes = []
        if previous is not None and event.pgh_label == "update":
            for field in fields:
                before, after = getattr(previous, field.attname), getattr(event, field.attname)
                if before != after:
                    changes.append((field.verbose_name, _shown(field, before, names), _shown(field, after, names)))
        what = LABELS.get(event.pgh_label, event.pgh_label)
        entries.append(Entry(event.pgh_created_at, what, _who(event.pgh_context, users), changes))
        previous = event
    return entries[::-1][:limit]


def _user_ids(events):
    return {e.pgh_context.metadata.get("user") for e in events if e.pgh_context is not None} - {None}


def _related_names(events, fields):
    """{(model, pk): its name} for every foreign key value in the events, one query per related model."""
    names = {}
    for field in (f for f in fields if f.is_relation):
        pks = {getattr(e, field.attname) for e in events} - {None}
        for related in field.related_model._base_manager.filter(pk__in=pks):
            names[(field.related_model, related.pk)] = str(related)
    return names


@dataclass
class Activity:
    """One event of any tracked row, for the recent-activity page."""

    when: object
    what: str
    who: str
    model: object  # the tracked model's _meta
    obj_id: object
    label: str  # the row as it read at that event


def recent_activity(tenant_ids, *, limit=100):
    """The newest events of every tracked model whose rows have a tenant, in those tenants (None: all)."""
    events = []
    for model in tracked_models():
        event_model = model.row_history.rel.related_model
        rows = event_model.objects.select_related("pgh_context").order_by("-pgh_id")
        if tenant_ids is not None:
            rows = rows.filter(tenant_id__in=tenant_ids)
        events += [(event, model) for event in rows[:limit]]
    events.sort(key=lambda pair: pair[0].pgh_created_at, reverse=True)
    events = events[:limit]
    users = dict(
        get_user_model().objects.filter(pk__in=_user_ids([e for e, _m in events])).values_list("pk", "username")
    )
    return [
        Activity(
            event.pgh_created_at,
            LABELS.get(event.pgh_label, event.pgh_label),
            _who(event.pgh_context, users),
            model._meta,
            event.pgh_obj_id,
            f"{model._meta.verbose_name} #{event.pgh_obj_id}",
        )
        for event, model in events
    ]


def tracked_models():
    """The models whose rows have a history and a tenant of their own (a checkout's is its booking's)."""
    from django.apps import apps

    return [
        model
        for model in apps.get_models()
        if hasattr(model, "row_history") and any(field.name == "tenant" for field in model._meta.fields)
    ]
