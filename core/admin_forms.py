"""Admin change forms that write only what the operator changed, through the manager, with the version read.

Django admin's default ``save_model`` is ``obj.save()``: every column written back as
it was read when the POST arrived, undoing a payment, a confirmation or a redeem that
committed meanwhile. ``GuardedChangeFormMixin`` replaces it:

- the form carries the row's ``version`` as it was when the page was opened
  (a hidden ``expected_version`` field);
- Save sends only ``form.changed_data`` to the model admin's ``guarded_edit`` (a manager
  method that locks the row, checks the version and writes those columns);
- a refusal (VersionConflict, a capacity below occupancy, a lock held elsewhere…)
  re-renders the same POST with the localized message and the operator's input, and
  nothing is written (``RefusalMixin``, which also reports a refused delete).
"""

import functools
import json
import logging
from contextlib import contextmanager

from django import forms
from django.contrib import messages
from django.contrib.admin.options import IS_POPUP_VAR, TO_FIELD_VAR
from django.contrib.admin.templatetags.admin_urls import add_preserved_filters
from django.core.exceptions import ValidationError
from django.db import IntegrityError, router, transaction
from django.http import HttpResponseRedirect
from django.urls import reverse

from core.admin_actions import carried_version, refusal_text
from core.exceptions import ChangedMeanwhile, DeletedMeanwhile, DomainError, VersionConflict
from core.guards import database_refusals

logger = logging.getLogger(__name__)

VERSION_FIELD = "expected_version"
SEEN_VERSION_FIELD = "seen_version"  # on the delete page: the version it showed
REFUSAL_ATTR = "_guarded_refusal"  # on the request: the refusal the re-rendered form shows


@contextmanager
def admin_refusals():
    """``database_refusals()``, and a refusal no guard names as ChangedMeanwhile: a foreign key to a row a
    colleague deleted meanwhile, a unique index two pages met at once, Django's PROTECT. Nothing was written
    either way; the operator reads why on the page, not a 500 (the API answers 409 ``conflict`` so)."""
    try:
        with database_refusals():
            yield
    except IntegrityError as exc:  # not a refusal any guard names: database_refusals let it through
        logger.error("unmapped integrity error in the admin: %s", exc)
        raise ChangedMeanwhile() from exc


class RefusalMixin:
    """Mix into a ModelAdmin whose saves and deletes go through managers that may refuse (a DomainError).

    A refused save renders the same POST again, invalid this time: the operator keeps
    what they typed, sees the localized reason on the field it concerns (else above the
    form), and no "changed successfully" follows. A refused delete is reported on the
    change list. Either way the admin's transaction rolled back: nothing was written.
    """

    # error code -> the form field the message belongs on (others go above the form)
    refusal_fields: dict = {}

    def get_form(self, request, obj=None, change=False, **kwargs):
        # ``change=`` by name: Django's UserAdmin.get_form takes it only so (passed by position: a 500)
        refusal = getattr(request, REFUSAL_ATTR, None)
        if refusal is None:
            return super().get_form(request, obj, change=change, **kwargs)
        base = kwargs.pop("form", None) or self.form
        field = self.refusal_fields.get(refusal.code) or getattr(refusal, "field", None)

        class RefusedForm(base):
            def _post_clean(self):
                super()._post_clean()
                self.add_error(field if field in self.fields else None, refusal.render())

        RefusedForm.__name__ = base.__name__
        return super().get_form(request, obj, change=change, form=RefusedForm, **kwargs)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            # The admin's own atomic block commits after the manager returned: a refusal at that
            # COMMIT (a deferred foreign key) is outside the manager's translation, so map it here.
            with admin_refusals():
                return super().changeform_view(request, object_id, form_url, extra_context)
        except DomainError as refusal:
            setattr(request, REFUSAL_ATTR, refusal)
            return super().changeform_view(request, object_id, form_url, extra_context)

    def judge_now(self):
        """Have the database judge this transaction's deferred checks (foreign keys, constraint triggers such
        as a tenant's last owner) now, not at the admin's COMMIT: a refusal must come before the admin
        reports success and logs the change, so that both roll back with the refused write."""
        transaction.get_connection(router.db_for_write(self.model)).check_constraints()

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        self.judge_now()

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        self.judge_now()

    def delete_queryset(self, request, queryset):
        super().delete_queryset(request, queryset)
        self.judge_now()

    def get_actions(self, request):
        actions = super().get_actions(request)
        if "delete_selected" in actions:
            function, name, description = actions["delete_selected"]
            actions["delete_selected"] = (_all_or_nothing(function), name, description)
        return actions

    def delete_view(self, request, object_id, extra_context=None):
        try:
            with admin_refusals():
                return super().delete_view(request, object_id, extra_context)
        except DomainError as refusal:  # in use, locked, or gone meanwhile: the list is there either way
            self.message_user(request, refusal_text(refusal), messages.ERROR)
            opts = self.opts
            name = f"admin:{opts.app_label}_{opts.model_name}_changelist"
            changelist = reverse(name, current_app=self.admin_site.name)
            # as the page was opened: in a popup (a related field's delete link) the list stays a popup, and
            # the list's filters the operator came from stay applied
            kept = {"preserved_filters": self.get_preserved_filters(request), "opts": opts}
            popup = IS_POPUP_VAR in request.POST or IS_POPUP_VAR in request.GET
            to_field = request.POST.get(TO_FIELD_VAR, request.GET.get(TO_FIELD_VAR))
            return HttpResponseRedirect(add_preserved_filters(kept, changelist, popup=popup, to_field=to_field))


class DeleteAtSeenVersionMixin:
    """Mix in before RefusalMixin where the manager deletes at a version: Django's delete page carries the
    version it shows, and ``delete_model`` gets it back (``version_seen_on_delete_page``), as the bulk delete's
    confirmation does, so a row changed after the page showed it is refused ``version_conflict``, not
    deleted as it now stands. A POST without it (a page from before, a script) is refused the same way."""

    delete_confirmation_template = "admin/lockstep/delete_confirmation.html"

    def render_delete_form(self, request, context):
        context["seen_version"] = context["object"].version
        return super().render_delete_form(request, context)

    def version_seen_on_delete_page(self, request):
        return carried_version(request.POST.get(SEEN_VERSION_FIELD, ""))


def _all_or_nothing(delete_selected):
    """Django's bulk delete in one transaction: its log entries, the rows, and the database's verdict on
    them (``judge_now``) stand or fall together; a refusal is reported on the list and nothing is deleted."""

    @functools.wraps(delete_selected)  # its name, description and permissions
    def action(modeladmin, request, queryset):
        try:
            with admin_refusals(), transaction.atomic(using=router.db_for_write(modeladmin.model)):
                return delete_selected(modeladmin, request, queryset)
        except DomainError as refusal:
            modeladmin.message_user(request, refusal_text(refusal), messages.ERROR)
            return None

    return action


class GuardedChangeFormMixin(RefusalMixin):
    """Mix into a ModelAdmin whose model has ``version``; implement ``guarded_edit`` (and ``guarded_create``)."""

    def guarded_edit(self, request, obj, changes, *, version):
        """Write ``changes`` (field -> cleaned value) to ``obj`` through its manager; return the saved row."""
        raise NotImplementedError

    def guarded_create(self, request, form):
        """Create the row through its manager; return it."""
        raise NotImplementedError

    def editable_changes(self, form):
        return {name: form.cleaned_data[name] for name in form.changed_data if name != VERSION_FIELD}

    def save_model(self, request, obj, form, change):
        if change:
            changes = self.editable_changes(form)
            version = form.cleaned_data.get(VERSION_FIELD)
            if version is None:  # a form without the version it was read at cannot prove it is current
                raise VersionConflict(current=obj.version)
            saved = self.guarded_edit(request, obj, changes, version=version) if changes else obj
        else:
            saved = self.guarded_create(request, form)
        for field in type(obj)._meta.concrete_fields:  # the admin logs and redirects using ``obj``
            setattr(obj, field.attname, getattr(saved, field.attname))

    def get_form(self, request, obj=None, change=False, **kwargs):
        # The version field is declared on the base form handed to the admin's factory, so the
        # fieldsets may name it like any other field.
        base = kwargs.pop("form", None) or self.form

        class GuardedForm(base):
            expected_version = forms.IntegerField(widget=forms.HiddenInput, required=False)

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                if self.instance.pk is not None:
                    self.fields[VERSION_FIELD].initial = self.instance.version

        GuardedForm.__name__ = base.__name__
        return super().get_form(request, obj, change=change, form=GuardedForm, **kwargs)

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or any(VERSION_FIELD in options.get("fields", ()) for _name, options in fieldsets):
            return fieldsets
        (name, options), *rest = fieldsets
        return [(name, {**options, "fields": [*options["fields"], VERSION_FIELD]}), *rest]


class ChangedFieldsOnlyMixin:
    """Mix into the admin of a model without ``version`` (Django's user): a Save writes only what the operator
    changed on the page, never back what the page read.

    Django's change form is a full-row ``save()`` of every field with the values the page showed: a
    colleague's change committed meanwhile (a user deactivated, made staff) is silently undone by a Save
    that only fixed a name. Here each field also posts the value it showed (Django's hidden initial), so
    ``changed_data`` is what this operator changed since the page opened, and only those columns are
    updated; an unchanged Save writes nothing. A many-to-many field (a user's groups, a group's
    permissions) gets only the operator's additions and removals, never the whole set as the page showed
    it (Django's ``save_m2m``: a group a colleague granted meanwhile would be taken away again). A row
    deleted meanwhile is refused (DeletedMeanwhile).
    """

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        if not change:
            return form

        class ShownValuesForm(form):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                for field in self.fields.values():
                    if field.disabled:  # never posted, never saved; and a user's password hash must not be shown
                        continue
                    field.show_hidden_initial = True
                    if issubclass(field.hidden_widget, forms.MultipleHiddenInput):
                        field.hidden_widget = ShownChoicesInput

            def _save_m2m(self):  # what form.save_m2m() runs: the admin's save_related calls it
                save_changed_relations(self)

        ShownValuesForm.__name__ = form.__name__
        return ShownValuesForm

    def save_model(self, request, obj, form, change):
        if not change:
            return super().save_model(request, obj, form, change)
        columns = {field.name for field in obj._meta.concrete_fields}
        changed = [name for name in form.changed_data if name in columns]
        if changed and not type(obj)._default_manager.filter(pk=obj.pk).update(
            **{name: getattr(obj, name) for name in changed}
        ):
            raise DeletedMeanwhile()
        return None


class ShownChoicesInput(forms.HiddenInput):
    """What a multiple choice showed, as one hidden input (a JSON list), posted even when the list is empty.

    Django's MultipleHiddenInput writes one input per value, so an empty list posts nothing; a page shown
    again after an error then takes the operator's own selection for what it first showed, and the next
    Save sees no change: a group added on that page was silently dropped.
    """

    def format_value(self, value):
        return json.dumps([str(item) for item in value or ()])

    def value_from_datadict(self, data, files, name):
        try:
            shown = json.loads(data.get(name) or "[]")
        except ValueError:
            return []  # not a page's: nothing was shown, so nothing is taken away
        return [str(item) for item in shown] if isinstance(shown, list) else []


def save_changed_relations(form):
    """Apply to each many-to-many field the operator changed only what they added and removed, against the
    values the page showed (its hidden initial); leave the others as they now stand. The row is locked first
    (FOR NO KEY UPDATE): one deleted meanwhile is refused (DeletedMeanwhile), not a foreign key at COMMIT."""
    instance = form.instance
    changed = [field for field in instance._meta.many_to_many if field.name in form.changed_data]
    if not changed:
        return
    still_there = type(instance)._default_manager.filter(pk=instance.pk).select_for_update(no_key=True)
    if not still_there.values_list("pk", flat=True):
        raise DeletedMeanwhile()
    for field in changed:
        bound, related = form[field.name], field.related_model
        key = bound.field.to_field_name or related._meta.pk.name  # what the choices post: pk, or to_field_name
        posted = bound.field.hidden_widget().value_from_datadict(form.data, form.files, bound.html_initial_name)
        valid = list(_parsed(related._meta.get_field(key), posted or ()))
        shown = set(related._default_manager.filter(**{f"{key}__in": valid}))  # the rows still there
        chosen = set(form.cleaned_data[field.name])
        relation = getattr(instance, field.name)
        relation.remove(*(shown - chosen))
        relation.add(*(chosen - shown))


def _parsed(key, values):
    """The values of the model field ``key`` among ``values`` (a hidden input's strings); one that does not
    parse was never shown."""
    for value in values:
        try:
            yield key.to_python(value)
        except ValidationError:
            continue
