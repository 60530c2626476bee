"""Domain errors of the proposals app."""

from django.utils.translation import gettext_lazy as _

from core.exceptions import Conflict, NotFound
from core.guards import constraint_errors


class ProposalNotFound(NotFound):
    code = "proposal_not_found"
    message = _("This proposal does not exist.")


class ProposalExpired(Conflict):
    code = "proposal_expired"
    message = _("This proposal has expired.")


class ProposalAlreadyProcessed(Conflict):
    code = "proposal_already_processed"
    message = _("This proposal was already processed.")


# The proposals' constraints that mean a domain refusal (core.guards.database_refusals); a "_transition" trigger
# is 409 invalid_transition by its name.
constraint_errors({"proposal_confirmed_before_expiry": ProposalExpired})
