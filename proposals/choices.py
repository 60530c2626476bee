"""A proposal's states, apart from the model so the managers can name them at import (the model imports them)."""

from django.db import models
from django.utils.translation import gettext_lazy as _


class ProposalStatus(models.TextChoices):
    PENDING = "pending", _("pending")
    CONFIRMED = "confirmed", _("confirmed")  # decided, booking under way in the same transaction
    EXECUTED = "executed", _("executed")
    FAILED = "failed", _("failed")
    REJECTED = "rejected", _("rejected")
    EXPIRED = "expired", _("expired")
