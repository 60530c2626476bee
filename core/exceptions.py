"""The kinds of domain error every app builds on.

Each leaf error names its stable ``code`` and a translatable ``message``; the API
(core.api.errors), the admin and the management commands all render the same
text, localized to the active language. Parameters are interpolated lazily, so a
message raised under one language can be rendered in another.
"""

from django.utils.translation import gettext_lazy as _


class DomainError(Exception):
    """A refusal the caller can act on; never a bug."""

    code = "domain_error"
    status_code = 400
    message = _("The request was refused.")
    # Nothing was refused for good: the row was busy, or a service did not answer. A command exits 3 for it.
    retry_later = False

    def __init__(self, message=None, **params):
        if message is not None:
            self.message = message
        self.params = params
        super().__init__(self.code)

    def render(self):
        """Return the message in the active language, parameters filled in (a choice by its label: its value
        is what ``details`` carries, stable for programs)."""
        params = {key: str(getattr(value, "label", value)) for key, value in self.params.items()}
        return str(self.message) % params if params else str(self.message)

    def __str__(self):
        return f"{self.code}: {self.render()}"


class InvalidInput(DomainError):
    code = "invalid_input"
    status_code = 400
    message = _("The request is not valid.")


class NotFound(DomainError):
    code = "not_found"
    status_code = 404
    message = _("Not found.")


class Conflict(DomainError):
    code = "conflict"
    status_code = 409
    message = _("The request conflicts with the current state.")


class ChangedMeanwhile(Conflict):
    """An admin write the database refused for a reason no guard names (a foreign key to a row deleted
    meanwhile, a unique index two pages met at once): nothing was written, and the operator is told so."""

    message = _("Someone else changed this meanwhile: nothing was saved. Reload the page and try again.")


class LockContended(Conflict):
    """Another transaction holds the lock this operation needs; retry shortly."""

    code = "resource_locked"
    message = _("This resource is being changed by another request. Try again shortly.")
    retry_later = True

    def __init__(self, message=None, *, retry_after=None, **params):
        from django.conf import settings

        self.retry_after = retry_after or settings.LOCK_RETRY_AFTER_SECONDS
        super().__init__(message, **params)


class DatabaseUnavailable(DomainError):
    """The database did not answer (a connection lost, a server restarting): nothing was refused; retry."""

    code = "database_unavailable"
    status_code = 503
    message = _("The database is unavailable. Try again shortly.")
    retry_later = True
    retry_after = 5


class DatabaseTimeout(DatabaseUnavailable):
    """A statement ran past statement_timeout and was cancelled, its transaction rolled back; retry."""

    code = "database_timeout"
    message = _("The database took too long to answer. Try again.")
    retry_after = 1


class TenantNotFound(NotFound):
    code = "not_found"
    message = _("Not found.")


class DeletedMeanwhile(NotFound):
    """A row an admin page was saving was deleted after the page read it (``ChangedFieldsOnlyMixin``)."""

    code = "not_found"
    message = _("Someone else deleted this while it was being saved.")


class IdempotencyKeyReused(DomainError):
    code = "idempotency_key_reused"
    status_code = 422
    message = _("This Idempotency-Key was already used with a different request.")


class IdempotencyKeyInProgress(LockContended):
    """The key's try-lock is another request's: a lock conflict like any other, answered with Retry-After."""

    code = "idempotency_key_in_progress"
    message = _("A request with this Idempotency-Key is still being processed.")


class IdempotencyKeyInvalid(InvalidInput):
    code = "idempotency_key_invalid"
    message = _("The Idempotency-Key header must be 1 to 255 printable characters.")


class VersionConflict(Conflict):
    """An edit carried a version the row no longer has: someone changed it since it was read."""

    code = "version_conflict"
    message = _("This record was changed by someone else (now version %(current)s). Reload it and try again.")


class TenantSlugTaken(Conflict):
    """Another tenant has this slug (one created or renamed to it meanwhile: the form's check had passed)."""

    code = "tenant_slug_taken"
    field = "slug"
    message = _("Another tenant already has this slug.")


class MemberAlreadyExists(Conflict):
    """The user is a member of the tenant already (one membership per user and tenant)."""

    code = "member_exists"
    message = _("This user is already a member of this tenant.")


class LastOwner(Conflict):
    """The change would leave a tenant that has an owner without one (the membership_keeps_an_owner trigger)."""

    code = "last_owner"
    field = "role"
    message = _("A tenant keeps at least one owner: make another member an owner first.")


class TransitionRefused(Conflict):
    """The database's state-machine trigger refused a change of state (a bug or a lost race upstream)."""

    code = "invalid_transition"
    message = _("This change is not allowed from the current state (%(old)s → %(new)s).")


class UnknownTimeZone(InvalidInput):
    """A tenant's time zone PostgreSQL does not know (``tenant_time_zone_known``)."""

    code = "unknown_time_zone"
    message = _("Unknown time zone: give an IANA name such as Europe/Paris.")


class GuardedWriteError(RuntimeError):
    """A programming error: a plain save() tried to write a column only guarded operations may write."""
