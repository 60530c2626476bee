"""Domain errors of the proposals app."""

from django.utils.translation import gettext_lazy as _

from core.exceptions import Conflict, NotFound


class ProposalNotFound(NotFound):
    code = "proposal_not_found"
    message = _("This proposal does not exist.")


class ProposalExpired(Conflict):
    code = "proposal_expired"
    message = _("This proposal has expired.")


class ProposalAlreadyProcessed(Conflict):
    code = "proposal_already_processed"
    message = _("This proposal was already processed.")
