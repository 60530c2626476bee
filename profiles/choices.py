"""A profile's sex and what an audit entry records, apart from the models so the managers can name them."""

from django.db import models
from django.utils.translation import gettext_lazy as _


class Sex(models.TextChoices):
    MALE = "male", _("male")
    FEMALE = "female", _("female")


class AuditAction(models.TextChoices):
    CREATE = "create", _("create")
    UPDATE = "update", _("update")
    DELETE = "delete", _("delete")
    RESTORE = "restore", _("restore")
    UNDO = "undo", _("undo")


# The entries an undo can reverse (a create is undone by deleting; an undo by undoing the entry it undid).
UNDOABLE = (AuditAction.UPDATE, AuditAction.DELETE, AuditAction.RESTORE)
