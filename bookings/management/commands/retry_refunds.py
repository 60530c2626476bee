from bookings.models import Checkout
from bookings.services import check_submitted_refunds, retry_due_refunds
from core.management.sweep import SweepCommand


class Command(SweepCommand):
    help = (
        "Retry every refund the payment provider failed to make whose backoff is over, and every refund "
        "left pending by a process that died before the provider answered; then ask the provider about "
        "every 'submitted' refund (accepted, not settled) whose refund.updated / refund.failed event has "
        "not come within REFUND_CHECK_EVERY. Each refund is claimed by one filtered UPDATE first, so a "
        "retry racing another retrier or the payment webhook asks the provider at most once. After "
        "REFUND_MAX_ATTEMPTS, or when the provider failed the refund, it is left 'exhausted' for an "
        "operator (admin: Bookings, filter by refund state, action 'Retry failed refunds now'). A refund "
        "whose row is busy past lock_timeout is left for the next run (named on stderr) and the others are "
        "still retried: exit 3, run again shortly."
    )

    def handle(self, *args, **options):
        result, recorded = retry_due_refunds()
        submitted = recorded[Checkout.RefundState.SUBMITTED]
        failing = recorded.total() - result.done - submitted
        self.stdout.write(
            f"Refunds retried: {recorded.total()}, refunded: {result.done}, submitted (the provider settles them "
            f"later): {submitted}, still failing: {failing}"
        )
        looked_up = check_submitted_refunds()
        self.stdout.write(f"Submitted refunds settled by asking the provider: {looked_up.done}")
        result.skipped += looked_up.skipped
        for pk, refusal in result.skipped:
            self.stderr.write(f"Booking #{pk} left for the next run: {refusal.code}: {refusal.render()}")
        exhausted = Checkout.objects.refunds_for_an_operator().count()
        if exhausted:
            self.stderr.write(f"Refunds given up on, waiting for an operator: {exhausted}")
        self.exit_for(result)
