from bookings.models import Checkout
from bookings.services import retry_refund
from core.management.base import GuardedCommand


class Command(GuardedCommand):
    help = (
        "Retry every refund the payment provider failed to make whose backoff is over, and every refund "
        "left pending by a process that died before the provider answered. Each refund is claimed by one "
        "filtered UPDATE first, so a retry racing another retrier or the payment webhook asks the provider "
        "at most once. After REFUND_MAX_ATTEMPTS a refund is left 'exhausted' for an operator (admin: "
        "Bookings, filter by refund state, action 'Retry failed refunds now')."
    )

    def handle(self, *args, **options):
        booking_ids = list(Checkout.objects.refunds_to_retry().order_by("pk").values_list("booking_id", flat=True))
        refunded = sum(1 for booking_id in booking_ids if retry_refund(booking_id))
        self.stdout.write(
            f"Refunds retried: {len(booking_ids)}, refunded: {refunded}, still failing: {len(booking_ids) - refunded}"
        )
        exhausted = Checkout.objects.refunds_for_an_operator().count()
        if exhausted:
            self.stderr.write(f"Refunds given up on, waiting for an operator: {exhausted}")
