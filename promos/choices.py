"""The kinds of promo bonus and the states of a redemption session, apart from the models so the
managers and the admin can name them at import."""

from django.db import models
from django.utils.translation import gettext_lazy as _


class BonusType(models.TextChoices):
    FIXED = "fixed", _("fixed amount")
    PERCENTAGE = "percentage", _("percentage")


class SessionStatus(models.TextChoices):
    PENDING = "pending", _("pending")
    APPROVED = "approved", _("approved")
    REJECTED = "rejected", _("rejected")
    USED = "used", _("used")
    EXPIRED = "expired", _("expired")
    CANCELLED = "cancelled", _("cancelled")


# A session can still be answered, used or cancelled.
OPEN_STATUSES = (SessionStatus.PENDING, SessionStatus.APPROVED)

# The documented machine (docs/state-machines.md), one pair per manager operation.
SESSION_TRANSITIONS = [
    (None, SessionStatus.PENDING),  # the shop opens it (create_session)
    (SessionStatus.PENDING, SessionStatus.APPROVED),  # the customer approves with the secret (approve)
    (SessionStatus.PENDING, SessionStatus.REJECTED),  # the customer rejects with the secret (reject)
    (SessionStatus.PENDING, SessionStatus.EXPIRED),  # past expires_at (expire_due)
    (SessionStatus.PENDING, SessionStatus.CANCELLED),  # the shop cancels (cancel)
    (SessionStatus.APPROVED, SessionStatus.USED),  # the shop consumes it, once (consume)
    (SessionStatus.APPROVED, SessionStatus.EXPIRED),  # past expires_at unused (expire_due)
    (SessionStatus.APPROVED, SessionStatus.CANCELLED),  # the shop cancels (cancel)
]
