"""One way for admin actions to change rows: through the manager, one row at a time, each result reported.

The admin toolkit, with ``core.admin_forms``:

- ``apply_to_each``: the per-row helper every action uses (refusals reported on their row), and
  ``row_action``, which declares such an action in one call;
- ``ActionsOnlyMixin``: a model admin (or inline) whose detail page is view-only;
- ``BadInputMixin``: a forged or garbled query string or selection is a message or Django's "bad
  parameters" page, never a 500 (every admin);
- ``refusal_text``: how a refusal reads in a message, "<message> (<code>)";
- ``confirm_first``: a money or irreversible action shows what it will do to each row, and acts
  only on the confirming POST.
"""

import functools

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import ValidationError
from django.db import DataError
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from core.exceptions import DomainError
from core.guards import database_refusals

NOTHING_TO_DO = _("nothing to do.")  # what a row reports when its operation returned False


class BadInputMixin:
    """What Django's admin takes as it comes, checked first: a forged or garbled request is a message, Django's
    "bad parameters" page or an empty answer, never a 500.

    - an action on a selection that is not row ids changes nothing and says so (Django filters on
      the posted ids as they came: a text where an integer goes);
    - a list's filter or date drill-down that Python or the database cannot take (``?date__year=9999``
      drills to year 10000, ``?created_at__year=0``, a value outside an enum) is Django's bad parameters
      page (``?e=1``): BadInputChangeList;
    - a search term with a NUL (PostgreSQL text cannot hold one: the autocomplete's) finds nothing.
    """

    def response_action(self, request, queryset):
        if not self.selection_is_row_ids(request):
            self.message_user(request, gettext("No such rows: nothing was changed."), messages.WARNING)
            return HttpResponseRedirect(request.get_full_path())
        return super().response_action(request, queryset)

    def selection_is_row_ids(self, request):
        """Whether the action's posted selection could be row ids (what a mixin filtering on it checks first)."""
        return _are_row_ids(self.model, request.POST.getlist(helpers.ACTION_CHECKBOX_NAME))

    def get_changelist(self, request, **kwargs):
        # the model admin's own list (DRF's tokens link each row by its user) with the refusals below
        return _refusing_bad_input(super().get_changelist(request, **kwargs))

    def get_search_results(self, request, queryset, search_term):
        if "\x00" in search_term:
            return queryset.none(), False
        return super().get_search_results(request, queryset, search_term)


class BadInputChangeList(ChangeList):
    """A list whose filters Python or the database refuses answers Django's bad parameters page, never a 500."""

    def get_filters(self, request):
        try:
            return super().get_filters(request)
        except (ValueError, OverflowError) as exc:
            raise IncorrectLookupParameters(exc) from exc

    def get_queryset(self, request, exclude_parameters=None):
        try:
            return super().get_queryset(request, exclude_parameters)
        except (ValueError, OverflowError) as exc:
            raise IncorrectLookupParameters(exc) from exc

    def get_results(self, request):
        try:
            return super().get_results(request)
        except (DataError, ValueError, OverflowError) as exc:  # counted: the database refused a value
            raise IncorrectLookupParameters(exc) from exc


@functools.cache
def _refusing_bad_input(changelist):
    """``changelist`` (a ChangeList class) whose bad filter parameters are BadInputChangeList's refusals."""
    if issubclass(changelist, BadInputChangeList):
        return changelist
    return type(changelist.__name__, (BadInputChangeList, changelist), {"__module__": __name__})


def _are_row_ids(model, values):
    """Whether every value could be one of ``model``'s primary keys (an integer within bigint's range)."""
    field = model._meta.pk
    try:
        keys = [field.to_python(value) for value in values]
    except ValidationError:
        return False
    return all(not isinstance(key, int) or -(2**63) <= key < 2**63 for key in keys)


def refusal_text(refusal, *, code_first=False):
    """Return the refusal as the operator reads it: "<message> (<code>)", or "<code>: <message>"."""
    if code_first:
        return f"{refusal.code}: {refusal.render()}"
    return f"{refusal.render()} ({refusal.code})"


def apply_to_each(
    modeladmin,
    request,
    rows,
    operation,
    *,
    describe,
    done_message=None,
    done_each=None,
    nothing_to_do=NOTHING_TO_DO,
    code_first=False,
    remedy=None,
):
    """Call ``operation(row)`` for each row and tell the operator how each one went; return the rows done.

    Each call is the manager's own transaction, so a refused row does not undo the
    others. A refusal (a domain error, or a row busy past lock_timeout, which is
    that row's ``resource_locked``) is a warning "<describe(row)>: <refusal_text>";
    ``code_first`` puts the code first, as the profiles admin and its commands print it.
    An operation returning ``False`` did nothing: "<describe(row)>: <nothing_to_do>".
    ``remedy(refusal)`` may add a link to what would unblock a refused row (restore a parent).
    Rows done are summed up by ``done_message(count)`` (an ``ngettext``), or named
    one by one by ``done_each(row, outcome)`` (what the operation returned: say what happened).
    """
    done = 0
    for row in rows:
        try:
            with database_refusals():
                outcome = operation(row)
        except DomainError as refusal:
            text = refusal_text(refusal, code_first=code_first)
            fix = remedy(refusal) if remedy is not None else None  # safe HTML: a link to what unblocks it
            message = format_html("{}: {} {}", describe(row), text, fix) if fix else f"{describe(row)}: {text}"
            modeladmin.message_user(request, message, messages.WARNING)
            continue
        if outcome is False:
            modeladmin.message_user(request, f"{describe(row)}: {nothing_to_do}", messages.WARNING)
            continue
        done += 1
        if done_each is not None:
            modeladmin.message_user(request, done_each(row, outcome), messages.SUCCESS)
    if done and done_message is not None:
        modeladmin.message_user(request, done_message(done), messages.SUCCESS)
    return done


class ActionsOnlyMixin:
    """For a model admin (or an inline) whose rows change only through actions or the code that owns them.

    The detail page stays view-only: its Save is a full-row save() that would write
    back a status read a moment earlier. No add, no delete. The change list has the
    change permission only where an action declared with ``permissions=["change"]``
    needs it (it calls the managers).
    """

    def has_add_permission(self, request, obj=None):  # ``obj``: an inline is asked with its parent
        return False

    def has_change_permission(self, request, obj=None):
        return obj is None and self._has_change_actions() and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None):
        return False

    def _has_change_actions(self):
        for action in getattr(self, "actions", None) or ():  # an inline has no actions
            function = action if callable(action) else getattr(type(self), action, None)
            if "change" in getattr(function, "allowed_permissions", ()):
                return True
        return False


# What a confirming POST without a row's version carries for it: versions start at 1.
NOT_SEEN = 0


def confirm_first(
    modeladmin, request, queryset, *, title, explanation, columns, effect, confirm_label, form=None, seen=None, **apply
):
    """Show each selected row and ``effect(row)`` (what will happen to it); act on the confirming POST.

    ``columns``: {header: row -> cell}. The confirming POST (``apply``) runs ``apply_to_each`` with
    ``apply``'s arguments, so each row is acted on and reported as every action's rows are.
    ``form``: a form class the operator fills in on the page (a reason); the operation is then
    called with its cleaned data as keywords, and an invalid form shows the page again.
    ``seen``: row -> an integer (its version) the page carries for each row; on the confirming
    POST each row gets it back as ``row.seen``, so the operation acts at what the operator saw, not
    at the rows as read again then. A POST that lacks a row's version (a page from before, a
    script) carries NOT_SEEN for it, which no row has: refused version_conflict, never acted on
    as the row now stands.
    """
    rows = list(queryset)
    filled = form(request.POST if "apply" in request.POST else None) if form is not None else None
    if "apply" in request.POST and (filled is None or filled.is_valid()):
        if filled is not None:
            apply["operation"] = functools.partial(apply["operation"], **filled.cleaned_data)
        if seen is not None:
            for row in rows:
                row.seen = carried_version(request.POST.get(f"seen_{row.pk}", ""))
        apply_to_each(modeladmin, request, rows, **apply)
        return None
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "explanation": explanation,
        "opts": modeladmin.model._meta,
        "headers": list(columns),
        "rows": [([cell(row) for cell in columns.values()], effect(row)) for row in rows],
        "selected": [(row.pk, None if seen is None else seen(row)) for row in rows],
        "action": request.POST.get("action", ""),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "confirm_label": confirm_label,
        "form": filled,
    }
    return TemplateResponse(request, "admin/lockstep/confirm_action.html", context)


def _report_left_the_list(modeladmin, request, rows):
    """Name every row the operator confirmed that the list's filter no longer yields (it changed meanwhile):
    Django leaves it out of the action's rows, and it would go unmentioned."""
    if request.POST.get("select_across") == "1":
        return
    acted_on = {row.pk for row in rows} | getattr(request, "lockstep_left_alone", set())  # told already
    # as Django took each posted id ("05" is row 5), not as it was spelled (checked first: BadInputMixin)
    posted = {modeladmin.model._meta.pk.to_python(pk) for pk in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)}
    left = sorted(posted - acted_on)
    if left:
        modeladmin.message_user(
            request,
            _("Left unchanged, as they no longer match the list's filter (changed meanwhile): #%(ids)s.")
            % {"ids": ", #".join(str(pk) for pk in left[:20])},
            messages.WARNING,
        )


def carried_version(carried):
    """The version a page carried back in its POST, or NOT_SEEN when it is missing or no version."""
    return int(carried) if carried.isascii() and carried.isdigit() and len(carried) <= 10 else NOT_SEEN


def seen_version(row):
    """The version ``confirm_first``'s page showed of ``row`` (carried by its POST; NOT_SEEN if it lacked it)."""
    return row.seen


def row_action(
    description, operation, *, permissions=("change",), select_related=(), by_operator=False, confirm=None, **report
):
    """An admin action, declared: ``operation(row)`` on each selected row in primary-key order.

    ``report``: ``apply_to_each``'s reporting arguments (``describe``, str by default,
    ``done_message``, ``done_each``, ``nothing_to_do``...). ``by_operator``: the operation is
    called as ``operation(row, request.user)``. ``confirm``: ``confirm_first``'s page (title,
    explanation, columns, effect, confirm_label), so nothing happens before the confirming POST.
    ``permissions`` as ``@admin.action``'s: an action always declares what it needs.
    ``confirm`` may hold a ``form`` (see ``confirm_first``).
    """
    report.setdefault("describe", str)

    def action(modeladmin, request, queryset):
        rows = queryset.select_related(*select_related).order_by("pk")
        _report_left_the_list(modeladmin, request, rows)
        act = functools.partial(_as_operator, operation, request.user) if by_operator else operation
        if confirm is not None:
            return confirm_first(modeladmin, request, rows, **confirm, operation=act, **report)
        apply_to_each(modeladmin, request, rows, act, **report)
        return None

    return admin.action(description=description, permissions=list(permissions))(action)


def _as_operator(operation, operator, row, **filled):
    return operation(row, operator, **filled)


class DetailActionsMixin:
    """The row's actions as buttons on its own page (templates/admin/change_form_object_tools.html).

    Each posts the list's action for this one row, so it goes through the same permission check,
    confirmation page and per-row report as from the list.
    """

    def change_view(self, request, object_id, form_url="", extra_context=None):
        actions = [
            (name, description)
            for name, (_function, _name, description) in self.get_actions(request).items()
            if name != "delete_selected"
        ]
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), "detail_actions": actions})
