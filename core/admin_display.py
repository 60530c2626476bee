"""How a status reads in an admin list: a badge whose colour says good, waiting, over or refused."""

from django.utils.html import format_html

# Django admin's own message colours, so the badges follow its light and dark themes.
TONES = {
    "good": ("var(--message-success-bg)", "var(--body-fg)"),
    "waiting": ("var(--message-warning-bg)", "var(--body-fg)"),
    "over": ("var(--darkened-bg)", "var(--body-quiet-color)"),
    "refused": ("var(--message-error-bg)", "var(--body-fg)"),
}

# Every status of every model, by what it means for an operator.
STATUS_TONES = {
    "confirmed": "good",
    "used": "good",
    "approved": "good",
    "executed": "good",
    "refunded": "good",
    "sent": "good",
    "held": "waiting",
    "pending": "waiting",
    "payment_pending": "waiting",
    "refund_pending": "waiting",
    "sending": "waiting",
    "expired": "over",
    "cancelled": "over",
    "released": "over",
    "rejected": "over",
    "failed": "refused",
}


def badge(status, label):
    """``label`` in a badge coloured by ``status`` (see STATUS_TONES)."""
    background, color = TONES[STATUS_TONES.get(status, "over")]
    return format_html(
        '<span class="status-badge" style="background:{};color:{};padding:1px 6px;border-radius:8px;'
        'white-space:nowrap">{}</span>',
        background,
        color,
        label,
    )
