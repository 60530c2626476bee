"""One way for admin actions to change rows: through the manager, one row at a time, each result reported."""

from django.contrib import messages

from core.exceptions import DomainError
from core.guards import database_refusals

NOTHING_TO_DO = object()


def apply_to_each(modeladmin, request, rows, operation, *, describe, done_message, nothing_to_do=None):
    """Call ``operation(row)`` for each row and tell the operator how each one went.

    Each call is the manager's own transaction, so a refused row does not undo the
    others. A refusal (a domain error, or a row busy past lock_timeout, which is
    that row's ``resource_locked``) is reported as "<describe(row)>: <message>
    (<code>)"; an operation returning ``NOTHING_TO_DO`` is reported with
    ``nothing_to_do``; ``done_message(count)`` sums up the rows done.
    """
    done = 0
    for row in rows:
        try:
            with database_refusals():
                outcome = operation(row)
        except DomainError as refusal:
            modeladmin.message_user(request, f"{describe(row)}: {refusal.render()} ({refusal.code})", messages.WARNING)
            continue
        if outcome is NOTHING_TO_DO:
            modeladmin.message_user(request, f"{describe(row)}: {nothing_to_do}", messages.WARNING)
            continue
        done += 1
    if done:
        modeladmin.message_user(request, done_message(done), messages.SUCCESS)
    return done


class ActionsOnlyMixin:
    """For a ModelAdmin whose rows change only through its actions (which call the managers).

    The detail page stays view-only: its Save is a full-row save() that would write
    back a status read a moment earlier. Actions still need the change permission.
    """

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None):
        return False
