from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


def _orphaned(booking):
    """A booking made for a proposal that no longer links it (a reopen unlinked it): never confirm it.

    Read after confirm_payment locked the booking row; a reopen takes the proposal row and then
    waits for that booking row (FOR SHARE), so either the reopen committed first (seen here: the
    payment is refunded) or it re-checks after the payment and leaves the paid booking linked.
    """
    if booking.origin_proposal_id is None:
        return False
    from proposals.models import Proposal

    return not Proposal.objects.filter(pk=booking.origin_proposal_id, booking_id=booking.pk).exists()


class ProposalsConfig(AppConfig):
    name = "proposals"
    verbose_name = _("Assistant proposals")

    def ready(self):
        from bookings.managers import register_placement_veto

        register_placement_veto(_orphaned)
