"""Domain errors of the promos app: each names its stable code and a translatable message."""

from django.utils.translation import gettext_lazy as _

from core.exceptions import Conflict, InvalidInput, NotFound


class PromoNotFound(NotFound):
    code = "promo_not_found"
    message = _("This promo code does not exist.")


class PromoInactive(Conflict):
    code = "promo_inactive"
    message = _("This promo code is not active.")


class PromoNotStarted(Conflict):
    code = "promo_not_started"
    message = _("This promo code is not valid yet.")


class PromoExpired(Conflict):
    code = "promo_expired"
    message = _("This promo code has expired.")


class PromoExhausted(Conflict):
    code = "promo_exhausted"
    message = _("This promo code has reached its usage limit.")


class PromoCustomerLimit(Conflict):
    code = "promo_customer_limit"
    message = _("This customer has already used this promo code the maximum number of times.")


class PromoCodeTaken(Conflict):
    code = "promo_code_taken"
    message = _("A promo code with this name already exists (codes are not case-sensitive).")


class PromoLimitBelowUsage(Conflict):
    code = "promo_limit_below_usage"
    message = _("The total usage limit cannot be lower than the number of times the code was already used.")


class PromoCustomerLimitBelowUsage(Conflict):
    code = "promo_customer_limit_below_usage"
    message = _("The per-customer limit cannot be lower than the uses a customer has already made of this code.")


class PromoInUse(Conflict):
    code = "promo_in_use"
    message = _("This promo code has usages and cannot be deleted; deactivate it instead.")


class PromoCounterOutOfStep(Conflict):
    """The code's ``times_used`` would go below zero: it had drifted from its usages (check_invariants)."""

    code = "promo_counter_out_of_step"
    message = _(
        "This promo code's usage counter does not match its usages, so nothing was changed. "
        "An operator must repair the code before usages can be voided."
    )


class PromoInvalid(InvalidInput):
    """A promo definition the database refuses (a CHECK constraint): 400, never 500."""

    code = "promo_invalid"
    message = _("The promo code definition is not valid.")


class InvalidAmount(InvalidInput):
    code = "invalid_amount"
    message = _("The amount must be a positive number with at most three decimal places, up to %(maximum)s.")


class CurrencyMismatch(InvalidInput):
    """The caller named a currency other than the code's or the session's: nothing was written."""

    code = "currency_mismatch"
    message = _("The amount is in %(currency)s, but this is in %(expected)s.")


class PromoCurrencyFrozen(Conflict):
    code = "promo_currency_frozen"
    message = _("This promo code has been used, so its currency cannot change; create a new code instead.")


class SessionLifetimeOutOfRange(InvalidInput):
    code = "session_lifetime_out_of_range"
    message = _("A redemption session lives from %(minimum)s to %(maximum)s seconds.")


class UsageNotFound(NotFound):
    code = "usage_not_found"
    message = _("This promo usage does not exist.")


class UsageAlreadyVoided(Conflict):
    code = "usage_already_voided"
    message = _("This promo usage has already been voided.")


class SessionNotFound(NotFound):
    code = "session_not_found"
    message = _("This redemption session does not exist.")


class SessionNotApproved(Conflict):
    code = "session_not_approved"
    message = _("This redemption session has not been approved by the customer.")


class SessionAlreadyUsed(Conflict):
    code = "session_already_used"
    message = _("This redemption session has already been used.")


class SessionExpired(Conflict):
    code = "session_expired"
    message = _("This redemption session has expired.")


class AmountExceedsLimit(Conflict):
    code = "amount_exceeds_limit"
    message = _("The amount exceeds the limit the customer approved for this session.")


class SessionNotPending(Conflict):
    code = "session_not_pending"
    message = _("This redemption session is no longer waiting for approval (it is %(status)s).")


class SessionNotCancellable(Conflict):
    code = "session_not_cancellable"
    message = _("This redemption session can no longer be cancelled (it is %(status)s).")
