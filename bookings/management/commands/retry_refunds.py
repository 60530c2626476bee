from bookings.models import Checkout
from bookings.services import retry_due_refunds
from core.management.sweep import SweepCommand


class Command(SweepCommand):
    help = (
        "Retry every refund the payment provider failed to make whose backoff is over, and every refund "
        "left pending by a process that died before the provider answered. Each refund is claimed by one "
        "filtered UPDATE first, so a retry racing another retrier or the payment webhook asks the provider "
        "at most once. After REFUND_MAX_ATTEMPTS a refund is left 'exhausted' for an operator (admin: "
        "Bookings, filter by refund state, action 'Retry failed refunds now'). A refund whose row is busy "
        "past lock_timeout is left for the next run (named on stderr) and the others are still retried: "
        "exit 3, run again shortly."
    )

    def handle(self, *args, **options):
        result, tried = retry_due_refunds()
        self.stdout.write(f"Refunds retried: {tried}, refunded: {result.done}, still failing: {tried - result.done}")
        for pk, refusal in result.skipped:
            self.stderr.write(f"Booking #{pk} left for the next run: {refusal.code}: {refusal.render()}")
        exhausted = Checkout.objects.refunds_for_an_operator().count()
        if exhausted:
            self.stderr.write(f"Refunds given up on, waiting for an operator: {exhausted}")
        self.exit_for(result)
