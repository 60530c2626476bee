"""Refusals of the profiles domain: each has a stable code and an English/Arabic message.

Errors that concern one parent role carry ``parent="father" | "mother"`` (the role
key, for callers that branch on it) and pick a role-specific message, so both
languages read naturally ("the father's profile is deleted", "ملف الأب محذوف")
instead of splicing a translated noun into a sentence.
"""

from django.utils.translation import gettext_lazy as _

from core.exceptions import Conflict, InvalidInput, LockContended, NotFound
from core.exceptions import VersionConflict as VersionConflict  # one class for every app; re-exported


class _ParentRoleError:
    """Mixin: pick the message for ``parent`` ("father" or "mother")."""

    messages = {}

    def __init__(self, *, parent, **params):
        super().__init__(self.messages[parent], parent=parent, **params)
        self.parent = parent
        self.field = parent  # the admin form puts the message on this field (core.admin_forms)


class ProfileNotFound(NotFound):
    code = "profile_not_found"
    message = _("Profile not found.")


class AuditEntryNotFound(NotFound):
    code = "audit_entry_not_found"
    message = _("Audit entry not found.")


class ProfileDeleted(Conflict):
    code = "profile_deleted"
    message = _("This profile is deleted. Restore it first.")


class ProfileNotDeleted(Conflict):
    code = "profile_not_deleted"
    message = _("This profile is not deleted.")


class ProfileHasChildren(Conflict):
    code = "profile_has_children"
    message = _("This profile is the father or mother of %(count)s living profile(s); it cannot be deleted.")


class SexChangeConflict(Conflict):
    code = "sex_change_conflict"
    message = _("This profile is the father or mother of living profiles; its sex cannot change.")


class InvalidDates(InvalidInput):
    code = "invalid_dates"
    message = _("The date of death cannot be before the date of birth.")


class DateNotParsable(InvalidInput):
    code = "date_not_parsable"
    message = _("%(field)s is not a date (YYYY-MM-DD).")


class UnknownField(InvalidInput):
    code = "unknown_field"
    message = _("Unknown or read-only profile field: %(field)s.")


class ParentNotFound(_ParentRoleError, InvalidInput):
    code = "parent_not_found"
    messages = {
        "father": _("The father's profile does not exist in this family tree."),
        "mother": _("The mother's profile does not exist in this family tree."),
    }


class ParentWrongSex(_ParentRoleError, InvalidInput):
    code = "parent_wrong_sex"
    messages = {
        "father": _("The father must be male."),
        "mother": _("The mother must be female."),
    }


class ParentDeleted(_ParentRoleError, Conflict):
    code = "parent_deleted"
    messages = {
        "father": _("The father's profile is deleted. Restore the father first."),
        "mother": _("The mother's profile is deleted. Restore the mother first."),
    }


class ParentLocked(_ParentRoleError, LockContended):
    code = "parent_locked"
    messages = {
        "father": _("The father's profile is being edited. Try again shortly."),
        "mother": _("The mother's profile is being edited. Try again shortly."),
    }


class WouldCreateCycle(_ParentRoleError, Conflict):
    code = "would_create_cycle"
    messages = {
        "father": _("This father would make the profile its own ancestor."),
        "mother": _("This mother would make the profile its own ancestor."),
    }


class AlreadyUndone(Conflict):
    code = "already_undone"
    message = _("This change has already been undone.")


class OperationLocked(LockContended):
    code = "operation_locked"
    message = _("This change is being undone by another request. Try again shortly.")


# The labels of the model's fields (same msgids as the verbose names), for messages that name fields.
FIELD_LABELS = {
    "first_name": _("first name"),
    "last_name": _("last name"),
    "sex": _("sex"),
    "birth_date": _("date of birth"),
    "death_date": _("date of death"),
    "father": _("father"),
    "mother": _("mother"),
    "deleted_at": _("deleted at"),
}


class _FieldList(str):
    """Field keys as a value, ``"first_name, last_name"``: what the API's ``details`` carry, the same in every
    language; the message names their ``label``s, in the language active when it is rendered."""

    def __new__(cls, fields):
        keys = super().__new__(cls, ", ".join(fields))
        keys.fields = tuple(fields)
        return keys

    @property
    def label(self):
        return str(_(", ")).join(str(FIELD_LABELS.get(field, field)) for field in self.fields)


class StaleVersion(Conflict):
    """``fields`` keeps the field keys (e.g. ``("first_name",)``); the message names their labels."""

    code = "stale_version"
    message = _("The profile changed after this entry; these fields no longer hold the values it wrote: %(fields)s.")

    def __init__(self, *, fields):
        self.fields = tuple(fields)
        super().__init__(fields=_FieldList(self.fields))


class UndoNotSupported(Conflict):
    code = "undo_not_supported"
    message = _("Entries of this kind (%(action)s) cannot be undone.")


# Every path that takes an undo's reason (API, admin, command) keeps it to this (UndoReasonTooLong).
UNDO_REASON_MAX_LENGTH = 500


class UndoReasonRequired(InvalidInput):
    code = "undo_reason_required"
    message = _("Give a reason for the undo.")


class UndoReasonTooLong(InvalidInput):
    code = "undo_reason_too_long"
    message = _("An undo's reason has at most %(maximum)s characters.")


class InvalidProfileData(InvalidInput):
    code = "invalid_profile_data"
    message = _("A profile needs a first name and a sex (male or female).")
